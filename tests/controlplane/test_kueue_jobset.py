"""Kueue admits a multi-node tuning's JobSet as one workload (Kueue's jobset.x-k8s.io/jobset integration),
with JobSet's and Kueue's real controller managers on a control plane of their own (no node: pods stay
Pending, admission is what is tested). The JobSets are what our controller renders for a 2-node tuning
Workspace in a LocalQueue (suspended, the queue label on the JobSet, 1 GPU per pod); with
`nvidia.com/gpu: 2` of quota one runs at a time, the other waits with Kueue's reason as the controller
reports it, until the first is deleted.

own_cluster: the shared `control_plane` fixture starts the (single) real node; neither manager needs one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client as k8s_client

from contract.workspace import parse_workspace
from hack import jobset, kueue
from hack.cluster import create_namespace, kube_json
from hack.processes import wait_for
from tests.controller.test_multi_node import two_nodes
from tests.controller.test_tuning_reconcile import SETTINGS
from tests.controlplane.planes import admin_client, get, nodeless_plane, path
from tuning_controller import status as st
from tuning_controller.kube import Kube
from tuning_controller.render import render_workspace_objects
from tuning_controller.render.job import WORKLOAD_API_VERSION
from tuning_controller.render.jobset import child_job_name

pytestmark = pytest.mark.own_cluster

GPU = "nvidia.com/gpu"
# Two pods of 1 GPU, 2 cpu and 8Gi (the train container) per JobSet: GPUs are the only scarce resource.
QUOTA: dict[str, str | int] = {"cpu": "16", "memory": "64Gi", GPU: 2}
JOBSETS = replace(SETTINGS, multi_node_workload="jobset")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8s_client.ApiClient]:
    """A control plane without node running JobSet's manager, then Kueue's with the jobset integration
    (Kueue sets an integration up at start only if its CRD is there); the admin client."""
    with (
        nodeless_plane(tmp_path_factory, "kueue-jobset-plane", ("jobset", "kueue")) as plane,
        jobset.running_jobset(plane, max_seconds=1200) as js,
        kueue.running_kueue(plane, max_seconds=1200, integrations=(kueue.BATCH_JOB, kueue.JOBSET)) as kq,
        admin_client(plane) as client,
    ):
        print(f"\njobset {js.version} ready in {js.ready_seconds:.1f}s, kueue in {kq.ready_seconds:.1f}s")
        yield client


def rendered(name: str, namespace: str, queue: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ServiceAccount (without it the Job controller cannot create the pods) and the JobSet the
    controller renders for a 2-node tuning Workspace `name` in LocalQueue `queue`, without their owner
    reference (no Workspace exists on this plane)."""
    ws_obj = two_nodes(labels={kueue.QUEUE_LABEL: queue})
    ws_obj["metadata"].update(name=name, namespace=namespace)
    ws, problems = parse_workspace(ws_obj)
    assert not problems, problems
    objects = render_workspace_objects(ws, JOBSETS)
    [account] = [o for o in objects if o["kind"] == "ServiceAccount"]
    [found] = [o for o in objects if o["kind"] == "JobSet"]
    for obj in (account, found):
        del obj["metadata"]["ownerReferences"]
    return account, found


def create(api: k8s_client.ApiClient, name: str, queue: str, namespace: str) -> dict[str, Any]:
    """What rendered() gives, created; returns the JobSet as created."""
    account, found = rendered(name, namespace, queue)
    Kube(api).create(account)
    return Kube(api).create(found)


def workload(api: k8s_client.ApiClient, created: dict[str, Any]) -> dict[str, Any] | None:
    """The JobSet's Workload found as the controller finds it (handlers/tuning.py `_workload`): by the
    job-uid label, at the Workload API version it reads."""
    meta = created["metadata"]
    selector = f"{kueue.GROUP}/job-uid={meta['uid']}"
    found = Kube(api).list(WORKLOAD_API_VERSION, "Workload", meta["namespace"], selector)
    assert len(found) <= 1, found
    return found[0] if found else None


def admitted(api: k8s_client.ApiClient, created: dict[str, Any]) -> dict[str, Any]:
    """The JobSet's Workload once it is Admitted and Kueue has unsuspended the JobSet; {} before."""
    meta = created["metadata"]
    now = get(api, path(meta["namespace"], "jobsets", meta["name"]))
    found = workload(api, created)
    if now["spec"].get("suspend") or kueue.condition(found, "Admitted").get("status") != "True":
        return {}
    return found or {}


def waiting_for_quota(api: k8s_client.ApiClient, created: dict[str, Any]) -> dict[str, Any]:
    """The JobSet's Workload once Kueue has tried it and reserved no quota (the reason written); {}
    before."""
    found = workload(api, created) or {}
    reserved = kueue.condition(found, "QuotaReserved")
    return found if reserved.get("status") == "False" and reserved.get("message") else {}


def child_running(api: k8s_client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """JobSet's child Job of JobSet `name` once it exists unsuspended; {} before."""
    child = get(api, path(namespace, "jobs", child_job_name(name)))
    return child if child and child["spec"].get("suspend") is False else {}


def test_kueue_admits_each_rendered_jobset_as_one_workload_within_the_gpu_quota(api):
    namespace = create_namespace(api)
    queue = kueue.create_queues(api, namespace, QUOTA)
    _, as_rendered = rendered("first", namespace, queue)
    node = as_rendered["spec"]["replicatedJobs"][0]
    pods = node["template"]["spec"]["parallelism"]
    train = {c["name"]: c for c in node["template"]["spec"]["template"]["spec"]["containers"]}["train"]
    assert as_rendered["spec"]["suspend"] is True and pods == 2
    assert train["resources"]["requests"][GPU] == "1"  # so one JobSet needs the whole quota of 2

    # (a) and (b): one Workload per JobSet, of one pod set of 2 pods; the first is admitted
    t0 = time.monotonic()
    first = create(api, "first", queue, namespace)
    first_workload = wait_for(lambda: admitted(api, first), 60, "the first JobSet admitted", 0.05)
    first_latency = time.monotonic() - t0
    wait_for(lambda: child_running(api, namespace, "first"), 30, "JobSet's child Job of the first", 0.05)
    child_latency = time.monotonic() - t0
    [pod_set] = first_workload["spec"]["podSets"]
    assert (pod_set["name"], pod_set["count"]) == (node["name"], pods)
    requests = {c["name"]: c["resources"]["requests"] for c in pod_set["template"]["spec"]["containers"]}
    assert requests["train"][GPU] == "1"
    [assignment] = first_workload["status"]["admission"]["podSetAssignments"]
    name = first_workload["metadata"]["name"]
    print(f"\nadmitted Workload {name}: pod set {pod_set['name']} x{pod_set['count']}, {assignment}")
    assert assignment["count"] == pods
    assert assignment["resourceUsage"][GPU] == str(pods)
    assert first_workload["status"]["admission"]["clusterQueue"] == queue
    assert first_workload["metadata"]["ownerReferences"][0]["uid"] == first["metadata"]["uid"]
    assert st.job_outcome(get(api, path(namespace, "jobsets", "first")), []).phase != st.QUEUED

    second = create(api, "second", queue, namespace)
    wait_for(lambda: waiting_for_quota(api, second), 60, "the second JobSet to wait", 0.05)
    time.sleep(2)  # and it stays so: Kueue does not admit it a moment later
    waiting = workload(api, second)
    assert waiting is not None
    second_now = get(api, path(namespace, "jobsets", "second"))
    message = st.queued_message(queue, waiting)
    print(f"second waits: {message!r}")
    assert second_now["spec"]["suspend"] is True
    assert st.job_outcome(second_now, []).phase == st.QUEUED
    assert [(p["name"], p["count"]) for p in waiting["spec"]["podSets"]] == [(node["name"], pods)]
    assert kueue.condition(waiting, "Admitted").get("status") != "True"
    assert message.startswith(f"waiting in queue {queue}: ")
    assert f"insufficient unused quota for {GPU} in flavor {queue}, {pods} more needed" in message
    assert get(api, path(namespace, "jobs", child_job_name("second")))["spec"]["suspend"] is True

    # (c) deleting the first frees its quota: the second is admitted. The first's Workload and child Job
    # go by the garbage collector, which knows JobSets only from its first discovery resync after their
    # CRD was installed (up to 30 s, hack/jobset.py); Kueue does not wait for it: it finishes a Workload
    # whose owner is gone (FinishOrphanedWorkloads, on by default since v0.17), which frees the quota.
    t1 = time.monotonic()
    kube_json(api, "DELETE", path(namespace, "jobsets", "first"), {"propagationPolicy": "Background"})
    orphan: list[dict[str, Any] | None] = []  # the first's Workload when the second was admitted

    def second_admitted() -> bool:
        if not admitted(api, second):
            return False
        orphan.append(workload(api, first))
        return True

    checks = {
        "second admitted": second_admitted,
        "first's Workload gone": lambda: workload(api, first) is None,
        "first's child Job gone": lambda: not get(api, path(namespace, "jobs", child_job_name("first"))),
    }
    seen: dict[str, float] = {}

    def settled() -> bool:
        for what, check in checks.items():
            if what not in seen and check():
                seen[what] = round(time.monotonic() - t1, 2)
        return len(seen) == len(checks)

    wait_for(settled, 90, f"{', '.join(checks)} after the first's delete", 0.05)
    wait_for(lambda: child_running(api, namespace, "second"), 30, "JobSet's child Job of the second", 0.05)
    print(f"admission: first {first_latency:.2f}s after create (child Job running {child_latency:.2f}s)")
    print(f"after the first's delete (s): {seen}")
    if orphan[0] is not None:  # the garbage collector had not deleted it yet
        finished = kueue.condition(orphan[0], "Finished")
        print(f"the first's Workload then: Finished {finished}")
        assert (finished.get("status"), finished.get("reason")) == ("True", "OwnerNotFound"), finished
    assert admitted(api, second)["status"]["admission"]["clusterQueue"] == queue
