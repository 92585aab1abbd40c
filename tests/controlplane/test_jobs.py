"""Jobs end to end: kube-controller-manager creates the pods, the pod executor runs them, the Job
controller and the garbage collector do the rest, as in a cluster."""

from __future__ import annotations

import time
from pathlib import Path

from tests.controlplane.workloads import container, job_condition, job_manifest, pod_done
from tests.fixtures.cluster import KubeError, kube_json, wait_for


def job_pods(api, namespace: str, job: str) -> list[dict]:
    return kube_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=job-name%3D{job}")[
        "items"
    ]


def test_job_completes_and_is_garbage_collected_with_its_owner(kube_client, namespace, pod_executor):
    owner = kube_json(
        kube_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "owner"}, "data": {"k": "v"}},
    )
    job = job_manifest("echo", "echo ok")
    job["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    kube_json(kube_client, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    cond = job_condition(kube_client, namespace, "echo")

    assert cond["type"] == "Complete", cond
    assert cond["job"]["status"]["succeeded"] == 1
    (pod,) = job_pods(kube_client, namespace, "echo")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"  # made by the Job controller
    assert pod["spec"]["nodeName"] == pod_executor.node_name
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert pod_executor.log(namespace, pod["metadata"]["name"], "main") == "ok\n"

    kube_json(kube_client, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/owner")

    def job_gone() -> bool:
        try:
            kube_json(kube_client, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/echo")
        except KubeError as err:
            return err.status == 404
        return False

    wait_for(job_gone, 30, "the garbage collector to delete the Job whose owner is gone")
    wait_for(lambda: not job_pods(kube_client, namespace, "echo"), 30, "the Job's pod to be deleted")


def test_failed_container_reports_exit_code_and_termination_message(kube_client, namespace, pod_executor):
    pod = {
        "metadata": {"name": "fails"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                container("writes", "echo 'bad input: row 7' > /dev/termination-log; exit 3"),
                container(
                    "logs",
                    "echo starting; echo 'fatal: no data' >&2; exit 4",
                    terminationMessagePolicy="FallbackToLogsOnError",
                ),
            ],
        },
    }
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    done = pod_done(kube_client, namespace, "fails")

    assert done["status"]["phase"] == "Failed"
    states = {s["name"]: s["state"]["terminated"] for s in done["status"]["containerStatuses"]}
    assert states["writes"]["exitCode"] == 3
    assert states["writes"]["reason"] == "Error"
    assert states["writes"]["message"] == "bad input: row 7\n"
    assert states["logs"]["exitCode"] == 4
    assert states["logs"]["message"] == "starting\nfatal: no data"


def test_job_retries_within_backoff_limit(kube_client, namespace, pod_executor):
    """The first pod fails, the Job controller makes a second one which succeeds; a claim's folder
    survives between the two pods (that is how the script knows it is the retry)."""
    script = "n=$(cat /state/tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/tries; test $n -ge 2"
    job = job_manifest(
        "retry",
        script,
        backoff_limit=1,
        volumes=[{"name": "state", "persistentVolumeClaim": {"claimName": "c"}}],
    )
    job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "state", "mountPath": "/state"}
    ]
    kube_json(kube_client, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    cond = job_condition(kube_client, namespace, "retry", timeout=90)

    assert cond["type"] == "Complete", cond
    assert cond["job"]["status"]["failed"] == 1
    assert cond["job"]["status"]["succeeded"] == 1
    phases = sorted(p["status"]["phase"] for p in job_pods(kube_client, namespace, "retry"))
    assert phases == ["Failed", "Succeeded"]


def test_job_fails_when_backoff_limit_is_exhausted(kube_client, namespace, pod_executor):
    kube_json(
        kube_client, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job_manifest("never", "exit 1")
    )

    cond = job_condition(kube_client, namespace, "never")

    assert cond["type"] == "Failed"
    assert cond["reason"] == "BackoffLimitExceeded"
    assert cond["job"]["status"]["failed"] == 1


def test_on_failure_restarts_the_container_in_place(kube_client, namespace, pod_executor):
    """restartPolicy OnFailure: the same pod restarts its container (restartCount), then succeeds."""
    script = "test -f /scratch/once && exit 0; touch /scratch/once; exit 2"
    pod = {
        "metadata": {"name": "flaky"},
        "spec": {
            "restartPolicy": "OnFailure",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                container("main", script, volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
            ],
        },
    }
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    done = pod_done(kube_client, namespace, "flaky")

    assert done["status"]["phase"] == "Succeeded"
    (status,) = done["status"]["containerStatuses"]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 2


def test_pod_that_fits_no_node_stays_pending_with_the_reason(kube_client, namespace, pod_executor):
    pod = {
        "metadata": {"name": "too-big"},
        "spec": {
            "containers": [container("main", "true", resources={"limits": {"nvidia.com/gpu": "8"}})],
        },
    }
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def unschedulable() -> dict | None:
        got = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/pods/too-big")
        conds = [c for c in got["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
        return conds[0] if conds and conds[0]["status"] == "False" else None

    cond = wait_for(unschedulable, 20, "PodScheduled=False on a pod asking for 8 GPUs")

    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    got = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/pods/too-big")
    assert got["status"]["phase"] == "Pending"
    assert not got["spec"].get("nodeName")


def test_deleting_a_running_pod_terms_then_kills_then_removes_it(kube_client, namespace, pod_executor):
    """As a kubelet: SIGTERM, SIGKILL once the grace period is over, then the pod object is removed."""
    pod = {
        "metadata": {"name": "long"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                container("polite", "trap 'echo got TERM; exit 0' TERM; echo up; sleep 300 & wait"),
                container("stubborn", "trap '' TERM; echo up; sleep 300"),
            ],
        },
    }
    path = f"/api/v1/namespaces/{namespace}/pods/long"
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def running() -> dict | None:
        got = kube_json(kube_client, "GET", path)
        statuses = got["status"].get("containerStatuses") or []
        return got if len(statuses) == 2 and all("running" in s["state"] for s in statuses) else None

    got = wait_for(running, 20, "both containers to run")
    pids = [int(s["containerID"].removeprefix("executor://")) for s in got["status"]["containerStatuses"]]
    wait_for(lambda: pod_executor.log(namespace, "long", "polite") == "up\n", 10, "the trap to be set")
    started = time.monotonic()
    kube_json(kube_client, "DELETE", path, {"gracePeriodSeconds": 2})

    def gone() -> bool:
        try:
            kube_json(kube_client, "GET", path)
        except KubeError as err:
            return err.status == 404
        return False

    wait_for(gone, 20, "the pod to be removed after its grace period")
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 10, elapsed  # the stubborn container held out until SIGKILL
    assert pod_executor.log(namespace, "long", "polite") == "up\ngot TERM\n"
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
