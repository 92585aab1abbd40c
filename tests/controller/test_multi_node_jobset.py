"""resource.count > 1 as a JobSet (the controller's multi_node_workload resolved to jobset), without a
cluster: the JobSet around the Indexed Job, the reconcile's writes, its status read as a Job's, the
host-name bound, and how the operator resolves ``auto``. tests/controller/test_multi_node_training.py
runs it on the real node with JobSet's own controller."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.controller.test_multi_node import containers, node, two_nodes
from tests.controller.test_tuning_reconcile import (
    JOB,
    JOB_PODS,
    NODES,
    SETTINGS,
    SHA,
    passed,
    run,
    valid,
    writes,
)
from tuning_controller import status as st
from tuning_controller.kube import KubeError
from tuning_controller.operator import resolve_multi_node_workload
from tuning_controller.render import render_workspace_objects
from tuning_controller.render.job import QUEUE_LABEL, REVISION_ANNOTATION, TRAIN, render_training_job
from tuning_controller.render.jobset import JOBSET_API_VERSION
from tuning_controller.settings import SettingsError
from tuning_controller.tuning_reconcile import PUSH_JOB, Target, tuning_target

JOBSETS = replace(SETTINGS, multi_node_workload="jobset")


def jobset(rev: str, conditions: tuple[str, ...] = (), **status: Any) -> dict:
    """A JobSet as JobSet's controller reports it."""
    conds = [{"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:09:00Z"} for t in conditions]
    return {
        "apiVersion": JOBSET_API_VERSION,
        "kind": "JobSet",
        "metadata": {
            "name": "ws",
            "namespace": "team",
            "uid": "js-uid",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {REVISION_ANNOTATION: rev},
        },
        "spec": {"suspend": False},
        "status": {"conditions": conds, **status},
    }


def pod(name: str, phase: str, *, running: str = "", failed: str = "") -> dict:
    statuses = []
    if running:
        statuses.append({"name": running, "state": {"running": {}}})
    if failed:
        statuses.append({"name": failed, "state": {"terminated": {"exitCode": 1, "message": "peer lost"}}})
    return {
        "metadata": {"name": name, "creationTimestamp": "t1"},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def test_the_jobset_holds_the_indexed_job_and_restarts_the_whole_group():
    t = valid(two_nodes(), JOBSETS)
    rendered = render_training_job(t.ws, JOBSETS, t.rev, data_sha256=SHA, gpus=2)
    assert (rendered["apiVersion"], rendered["kind"], rendered["metadata"]["name"]) == (
        JOBSET_API_VERSION,
        "JobSet",
        "ws",
    )
    assert rendered["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert rendered["metadata"]["annotations"][REVISION_ANNOTATION] == t.rev
    spec = rendered["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": JOBSETS.backoff_limit, "restartStrategy": "Recreate"}
    assert spec["network"] == {
        "enableDNSHostnames": True,
        "subdomain": "ws-workers",
        "publishNotReadyAddresses": True,
    }
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["node"]}
    assert spec["startupPolicy"] == {"startupPolicyOrder": "AnyOrder"} and spec["suspend"] is False
    [replicated] = spec["replicatedJobs"]
    assert (replicated["name"], replicated["replicas"]) == ("node", 1)
    child = replicated["template"]["spec"]
    assert (child["completionMode"], child["completions"], child["parallelism"]) == ("Indexed", 2, 2)
    assert child["backoffLimit"] == 0  # a failed pod fails the child; JobSet restarts the group
    assert "suspend" not in child and "ttlSecondsAfterFinished" not in child
    assert replicated["template"]["metadata"]["labels"]["kaito.sh/workspace"] == "ws"  # events reach us
    command = containers(child["template"]["spec"])[TRAIN]["command"]
    # The child Job is ws-node-0: its pod 0's host name hosts the rendezvous
    assert "--rdzv-endpoint=ws-node-0-0.ws-workers.team.svc.cluster.local:29500" in command
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command


def test_one_node_stays_a_job_and_the_plain_setting_keeps_the_indexed_job():
    one = valid(two_nodes(), JOBSETS)
    single = replace(one, ws=replace(one.ws, resource=replace(one.ws.resource, count=1)))
    assert render_training_job(single.ws, JOBSETS, single.rev, data_sha256=SHA, gpus=1)["kind"] == "Job"
    t = valid(two_nodes())
    for setting in ("job", "auto"):  # auto unresolved (kaito-tune render) renders the Job
        assert (
            render_training_job(
                t.ws, replace(SETTINGS, multi_node_workload=setting), t.rev, data_sha256=SHA, gpus=2
            )["kind"]
            == "Job"
        )


def test_a_queued_jobset_is_suspended_and_labelled_for_kueue_and_its_child_is_not():
    t = valid(two_nodes(labels={QUEUE_LABEL: "gpus"}), JOBSETS)
    rendered = render_training_job(t.ws, JOBSETS, t.rev, data_sha256=SHA, gpus=1)
    assert rendered["spec"]["suspend"] is True and rendered["metadata"]["labels"][QUEUE_LABEL] == "gpus"
    child = rendered["spec"]["replicatedJobs"][0]["template"]
    assert QUEUE_LABEL not in child["metadata"]["labels"] and "suspend" not in child["spec"]


def test_the_reconcile_creates_the_jobset_and_no_service_of_its_own():
    rev = valid(two_nodes(), JOBSETS).rev
    t = valid(two_nodes(passed(rev)), JOBSETS)
    plan, reads = run(t, {JOB: None, NODES: [node("gpu-1", 4)]})
    assert reads == [JOB, NODES]
    made = writes(plan)
    assert made[-1] == ("create", "JobSet", "ws") and plan.writes[-1].seen_as == JOB
    assert "Service" not in {kind for _, kind, _ in made}  # JobSet's controller makes ws-workers
    objects = render_workspace_objects(t.ws, JOBSETS)
    assert [o["kind"] for o in objects if o["kind"] in ("Service", "JobSet", "Job")] == [
        "Job",
        "JobSet",
        "Job",
    ]


def test_jobset_status_reads_as_a_job():
    rev = valid(two_nodes(), JOBSETS).rev
    t = valid(two_nodes(passed(rev, st.TRAINING)), JOBSETS)

    restarted = jobset(rev, restarts=1, replicatedJobsStatus=[{"name": "node", "active": 1}])
    pods = [pod("ws-node-0-0-a", "Running", running=TRAIN)]
    plan, reads = run(t, {JOB: restarted, JOB_PODS: pods})
    assert reads == [JOB, JOB_PODS] and plan.phase == st.TRAINING
    assert plan.status.section["message"] == "train running (attempt 2)"  # the group restarted once
    assert plan.status.section["startTime"] == "2026-01-01T00:00:00Z"

    failed = jobset(rev, ("Failed",), restarts=2)
    failed["status"]["conditions"][0] |= {
        "reason": "ReachedMaxRestarts",
        "message": "jobset restarts exceeds max restarts",
    }
    plan, _ = run(t, {JOB: failed, JOB_PODS: [pod("ws-node-0-1-b", "Failed", failed=TRAIN)]})
    assert plan.phase == st.FAILED
    assert (
        plan.status.section["message"] == "train exited 1: peer lost (jobset restarts exceeds max restarts)"
    )
    assert plan.status.section["completionTime"] == "2026-01-01T00:09:00Z"

    done = jobset(rev, ("Completed",))
    plan, reads = run(t, {JOB: done, JOB_PODS: [], PUSH_JOB: None})
    assert writes(plan) == [("create", "Job", "ws-push")] and plan.phase == st.PUSHING
    assert plan.status.section["startTime"] == "2026-01-01T00:00:00Z"

    queued = jobset(rev)
    queued["spec"]["suspend"] = True
    assert st.job_outcome(queued, []).phase == st.QUEUED
    resumed = jobset(rev)
    resumed["status"]["conditions"] = [
        {"type": "Suspended", "status": "False", "lastTransitionTime": "t-resumed"}
    ]
    assert st.job_outcome(resumed, []).start_time == "t-resumed"


def named(name: str) -> dict:
    ws = two_nodes()
    ws["metadata"]["name"] = name
    return ws


def test_a_name_too_long_for_the_pods_host_names_is_refused_by_name():
    name = "w" * 55  # <name>-node-0-1 is 9 characters longer than the name
    refused = tuning_target(named(name), None, (None, []), JOBSETS, "now")
    assert not isinstance(refused, Target)
    assert "metadata.name" in refused.why and "more than a DNS label's 63" in refused.why
    assert "use a name of at most 54 characters" in refused.why
    assert isinstance(tuning_target(named("w" * 54), None, (None, []), JOBSETS, "now"), Target)
    assert isinstance(tuning_target(named(name), None, (None, []), SETTINGS, "now"), Target)  # <name>-1


class Discovery:
    """The API server's discovery answer for jobset.x-k8s.io/v1alpha2 (or its 404)."""

    def __init__(self, resources: list[str] | None):
        self.resources = resources

    def request(self, method: str, path: str) -> dict:
        assert (method, path) == ("GET", f"/apis/{JOBSET_API_VERSION}")
        if self.resources is None:
            raise KubeError(404, {"message": "not found"}, path)
        return {"resources": [{"name": r} for r in self.resources]}


def test_auto_becomes_jobset_only_where_jobsets_are_served_and_jobset_is_refused_without_them():
    auto = replace(SETTINGS, multi_node_workload="auto")
    assert (
        resolve_multi_node_workload(auto, Discovery(["jobsets", "jobsets/status"])).multi_node_workload
        == "jobset"
    )
    assert resolve_multi_node_workload(auto, Discovery(None)).multi_node_workload == "job"
    assert resolve_multi_node_workload(JOBSETS, Discovery(["jobsets"])).multi_node_workload == "jobset"
    with pytest.raises(SettingsError, match="MULTI_NODE_WORKLOAD=jobset: the API server serves no JobSets"):
        resolve_multi_node_workload(JOBSETS, Discovery(None))
