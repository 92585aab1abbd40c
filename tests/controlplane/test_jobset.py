"""JobSet for real: its controller manager, built from sigs.k8s.io/jobset, on a control plane of its own
(no node: pods stay Pending). A JobSet as our controller renders it (hack.jobset.defaulted: no webhook
defaults it) gets its indexed child Job and headless Service, is suspended and resumed through its
child, is restarted by its failure policy and then fails, and completes when its child Job does.

own_cluster: the shared `control_plane` fixture starts the (single) real node; JobSet needs none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from hack import jobset
from hack.cluster import create_namespace, kube_json
from hack.processes import wait_for
from tests.controlplane.planes import admin_client, get, nodeless_plane, path
from tuning_controller.conditions import find

pytestmark = pytest.mark.own_cluster


@pytest.fixture(scope="module")
def jobset_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8s_client.ApiClient]:
    """A control plane without node, JobSet's manager running on it; the admin client."""
    with (
        nodeless_plane(tmp_path_factory, "jobset-plane", ("jobset",)) as plane,
        jobset.running_jobset(plane, max_seconds=1200) as running,
        admin_client(plane) as api,
    ):
        print(f"\njobset {running.version} ready {running.ready_seconds:.1f}s after start ({running.log})")
        yield api


@pytest.fixture
def ns(jobset_api: k8s_client.ApiClient) -> str:
    """A fresh namespace on the JobSet plane (not the shared fixture's, which is on the node's cluster)."""
    return create_namespace(jobset_api)


def indexed_jobset(name: str, spec: dict[str, Any] | None = None, **job_spec: Any) -> dict[str, Any]:
    """One replicatedJob `worker` (1 replica): an Indexed Job of 2 pods, defaulted as the webhook would."""
    container = {"name": "main", "image": "ghcr.io/kaito-tune/runtime:0.1.0", "command": ["true"]}
    template = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    worker = {
        "name": "worker",
        "replicas": 1,
        "template": {"spec": {"completions": 2, "parallelism": 2, "template": template, **job_spec}},
    }
    return jobset.defaulted(
        {
            "apiVersion": jobset.API_VERSION,
            "kind": "JobSet",
            "metadata": {"name": name},
            "spec": {"replicatedJobs": [worker], **(spec or {})},
        }
    )


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return find((obj.get("status") or {}).get("conditions"), kind) or {}


def jobset_condition(api: k8s_client.ApiClient, namespace: str, name: str, kind: str) -> dict[str, Any]:
    return condition(get(api, path(namespace, "jobsets", name)), kind)


def finished(api: k8s_client.ApiClient, namespace: str, name: str, kind: str) -> dict[str, Any]:
    """The JobSet once its `kind` condition (Completed, Failed) is True; {} before."""
    got = get(api, path(namespace, "jobsets", name))
    return got if condition(got, kind).get("status") == "True" else {}


def test_an_indexed_replicated_job_gets_its_child_job_and_headless_service(jobset_api, ns):
    api = jobset_api
    t0 = time.monotonic()
    created = kube_json(api, "POST", path(ns, "jobsets"), indexed_jobset("train"))
    child = wait_for(lambda: get(api, path(ns, "jobs", "train-worker-0")), 30, "the child Job", 0.05)
    child_s = time.monotonic() - t0
    service = wait_for(lambda: get(api, path(ns, "services", "train")), 30, "the Service", 0.05)
    print(f"\nchild Job {child_s:.2f}s, headless Service {time.monotonic() - t0:.2f}s after create")

    spec, labels = child["spec"], child["metadata"]["labels"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["parallelism"], spec["completions"], spec["suspend"]) == (2, 2, False)
    assert spec["template"]["spec"]["subdomain"] == "train"
    assert labels[jobset.JOBSET_NAME_LABEL] == "train"
    assert labels[jobset.REPLICATED_JOB_LABEL] == "worker"
    assert labels[jobset.JOB_INDEX_LABEL] == labels[jobset.JOB_GLOBAL_INDEX_LABEL] == "0"
    assert labels[jobset.RESTART_ATTEMPT_LABEL] == "0"
    # The pods carry the same labels: the Service selects them by JobSet name.
    assert spec["template"]["metadata"]["labels"][jobset.JOBSET_NAME_LABEL] == "train"
    owner = created["metadata"]["uid"]
    for obj in (child, service):
        assert [(o["kind"], o["uid"], o.get("controller")) for o in obj["metadata"]["ownerReferences"]] == [
            ("JobSet", owner, True)
        ]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {jobset.JOBSET_NAME_LABEL: "train"}
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_suspend_suspends_the_child_and_resume_resumes_it(jobset_api, ns):
    """With spec.network.subdomain the Service and the pods' subdomain take that name."""
    api = jobset_api
    spec = {"suspend": True, "network": {"subdomain": "ranks"}}
    kube_json(api, "POST", path(ns, "jobsets"), indexed_jobset("held", spec))
    child = wait_for(lambda: get(api, path(ns, "jobs", "held-worker-0")), 30, "the child Job", 0.05)
    assert child["spec"]["suspend"] is True
    assert child["spec"]["template"]["spec"]["subdomain"] == "ranks"
    assert wait_for(lambda: get(api, path(ns, "services", "ranks")), 30, "the Service", 0.05)
    wait_for(
        lambda: jobset_condition(api, ns, "held", "Suspended").get("status") == "True",
        30,
        "the JobSet's Suspended condition",
        0.05,
    )

    t0 = time.monotonic()
    kube_json(
        api,
        "PATCH",
        path(ns, "jobsets", "held"),
        {"spec": {"suspend": False}},
        content_type="application/merge-patch+json",
    )
    wait_for(
        lambda: get(api, path(ns, "jobs", "held-worker-0"))["spec"]["suspend"] is False,
        30,
        "the child Job resumed",
        0.05,
    )
    print(f"\nchild resumed {time.monotonic() - t0:.2f}s after the JobSet")
    wait_for(
        lambda: jobset_condition(api, ns, "held", "Suspended").get("status") == "False",
        30,
        "the JobSet's Suspended condition False",
        0.05,
    )
    assert jobset_condition(api, ns, "held", "Suspended")["reason"] == "ResumeJobs"


def test_a_failed_child_restarts_the_jobset_until_max_restarts_then_it_fails(jobset_api, ns):
    """No node, so no pod runs: activeDeadlineSeconds 1 makes the Job controller fail each child Job
    (DeadlineExceeded) a second after it starts, the attempt JobSet recreates too."""
    api = jobset_api
    spec = {"failurePolicy": {"maxRestarts": 1}}
    t0 = time.monotonic()
    kube_json(api, "POST", path(ns, "jobsets"), indexed_jobset("flaky", spec, activeDeadlineSeconds=1))
    attempts: dict[str, float] = {}

    def failed() -> dict[str, Any]:
        child = get(api, path(ns, "jobs", "flaky-worker-0"))
        if child:
            attempt = child["metadata"]["labels"][jobset.RESTART_ATTEMPT_LABEL]
            attempts.setdefault(attempt, round(time.monotonic() - t0, 2))
        return finished(api, ns, "flaky", "Failed")

    final = wait_for(failed, 60, "the JobSet Failed", 0.05)
    failure = condition(final, "Failed")
    print(f"\nchild attempts seen at {attempts}; Failed {time.monotonic() - t0:.2f}s after create: {failure}")
    assert list(attempts) == ["0", "1"]
    assert failure["reason"] == "ReachedMaxRestarts"
    assert failure["message"] == (
        "jobset failed due to reaching max number of restarts (first failed job: flaky-worker-0)"
    )
    assert final["status"]["restarts"] == 1
    assert final["status"]["terminalState"] == "Failed"
    last = get(api, path(ns, "jobs", "flaky-worker-0"))
    assert condition(last, "Failed")["reason"] == "DeadlineExceeded"


def test_a_completed_child_completes_the_jobset(jobset_api, ns):
    """No node, so no pod succeeds: the child Job's status is written as the Job controller writes it
    once both indexes succeeded (the Job controller leaves a finished Job alone)."""
    api = jobset_api
    kube_json(api, "POST", path(ns, "jobsets"), indexed_jobset("done"))

    def started() -> dict[str, Any]:
        child = get(api, path(ns, "jobs", "done-worker-0"))
        return child if child.get("status", {}).get("startTime") else {}

    child = wait_for(started, 30, "the child Job started", 0.05)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    reached = {"status": "True", "reason": "CompletionsReached", "lastTransitionTime": now}
    status = {
        "conditions": [{"type": "SuccessCriteriaMet", **reached}, {"type": "Complete", **reached}],
        "startTime": child["status"]["startTime"],
        "completionTime": now,
        "active": 0,
        "succeeded": 2,
        "completedIndexes": "0,1",
    }
    t0 = time.monotonic()
    kube_json(
        api,
        "PATCH",
        path(ns, "jobs", "done-worker-0") + "/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )
    done = wait_for(lambda: finished(api, ns, "done", "Completed"), 30, "the JobSet Completed", 0.05)
    completed = condition(done, "Completed")
    print(f"\nJobSet Completed {time.monotonic() - t0:.2f}s after its child: {completed}")
    assert completed["reason"] == "AllJobsCompleted"
    assert completed["message"] == "jobset completed successfully"
    assert done["status"]["terminalState"] == "Completed"
