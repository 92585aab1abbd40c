"""Pure status and node decisions: Job/pod states to Workspace status, nodes to a choice."""

from __future__ import annotations

import json

from contract.workspace import LabelSelector, LabelSelectorRequirement
from tuning_controller import status as st
from tuning_controller.nodes import choose_node, gpu_memory_gib, nodeclaim_state

DIGEST = "sha256:" + "b" * 64


def job(conditions=(), active=0, failed=0, suspend=False) -> dict:
    return {
        "metadata": {"name": "ws"},
        "spec": {"suspend": suspend},
        "status": {
            "active": active,
            "failed": failed,
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": t, "status": "True", "message": m, "lastTransitionTime": "t9"} for t, m in conditions
            ],
        },
    }


def pod(created: str, phase: str, init=(), main=()) -> dict:
    def statuses(items):
        return [{"name": n, "state": state} for n, state in items]

    return {
        "metadata": {"creationTimestamp": created},
        "status": {
            "phase": phase,
            "initContainerStatuses": statuses(init),
            "containerStatuses": statuses(main),
        },
    }


def done(code: int, message: str = "") -> dict:
    return {"terminated": {"exitCode": code, "message": message}}


RUNNING = {"running": {}}


def test_a_failed_pod_while_the_job_retries_is_not_a_failure():
    first = pod(
        "t1",
        "Failed",
        init=[("fetch-data", done(0)), ("train", done(0))],
        main=[("push", done(1, "unauthorized"))],
    )
    second = pod(
        "t2", "Running", init=[("fetch-data", done(0)), ("train", RUNNING)], main=[("push", {"waiting": {}})]
    )
    outcome = st.job_outcome(job(active=1, failed=1), [first, second])
    assert outcome.phase == "Running" and outcome.running == "train"
    assert "attempt 2" in outcome.message and "push exited 1: unauthorized" in outcome.message
    conds = {c["type"]: c for c in st.training_conditions(outcome, 3, "now")}
    assert conds["WorkspaceSucceeded"]["status"] == "Unknown"
    assert conds["JobStarted"]["status"] == "True" and conds["JobStarted"]["observedGeneration"] == 3
    assert st.training_phase(outcome) == "Training"


def test_failed_for_good_carries_the_containers_reason():
    failed = pod(
        "t2",
        "Failed",
        init=[("fetch-data", done(0)), ("train", done(0))],
        main=[("push", done(1, "unauthorized: bad password"))],
    )
    outcome = st.job_outcome(
        job([("Failed", "Job has reached the specified backoff limit")], failed=2), [failed]
    )
    assert outcome.phase == "Failed"
    assert outcome.message.startswith("push exited 1: unauthorized: bad password")
    assert "backoff limit" in outcome.message
    conds = {c["type"]: c for c in st.training_conditions(outcome, 1, "now")}
    assert (
        conds["WorkspaceSucceeded"]["status"] == "False"
        and conds["WorkspaceSucceeded"]["reason"] == "WorkspaceFailed"
    )


def test_success_reads_the_digest_from_the_push_termination_message():
    ok = pod(
        "t1",
        "Succeeded",
        init=[("fetch-data", done(0)), ("train", done(0))],
        main=[("push", done(0, DIGEST + "\n"))],
    )
    outcome = st.job_outcome(job([("Complete", "")]), [ok])
    assert outcome.phase == "Succeeded" and st.adapter_digest(outcome) == DIGEST
    assert st.state_for(st.training_phase(outcome)) == "Succeeded"


def test_suspended_job_is_queued_and_missing_job_pending():
    assert st.job_outcome(job(suspend=True), []).phase == "Queued"
    conds = {c["type"]: c for c in st.training_conditions(st.job_outcome(job(suspend=True), []), 1, "now")}
    assert conds["JobStarted"]["status"] == "False" and conds["JobStarted"]["reason"] == "JobSuspended"
    assert st.job_outcome(None, []).phase == "Pending"


def test_data_failure_message_lists_row_numbers():
    summary = {
        "ok": False,
        "errors": ["2 of 30 rows are unusable"],
        "firstBadRows": [
            {"row": 4, "file": "a.parquet", "reason": "no assistant turn"},
            {"row": 9, "file": "a.parquet", "reason": "empty"},
        ],
    }
    bad = pod(
        "t1", "Failed", init=[("fetch-data", done(0))], main=[("preflight", done(1, json.dumps(summary)))]
    )
    outcome = st.job_outcome(job([("Failed", "")], failed=1), [bad])
    assert st.data_summary(outcome) == summary
    message = st.data_failure_message(outcome, summary)
    assert "row 4 (a.parquet): no assistant turn" in message and "row 9" in message


def test_fetch_failure_is_reported_as_such():
    bad = pod("t1", "Failed", init=[("fetch-data", done(1, "HTTP 404 for https://x/y.parquet"))])
    outcome = st.job_outcome(job([("Failed", "")], failed=1), [bad])
    assert (
        st.data_failure_message(outcome, None)
        == "fetching the input failed: HTTP 404 for https://x/y.parquet"
    )


def node(name, labels, gpus="1", ready=True) -> dict:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": str(ready)}],
        },
    }


def test_choose_node_by_selector_memory_and_gpu_count():
    selector = LabelSelector(
        match_labels={"apps": "tune"},
        match_expressions=[LabelSelectorRequirement(key="pool", operator="NotIn", values=["spot"])],
    )
    nodes = [
        node("small", {"apps": "tune", "nvidia.com/gpu.memory": "16384"}, "4"),
        node("big", {"apps": "tune", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, "2"),
        node(
            "bigger", {"apps": "tune", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "spot"}, "8"
        ),
        node("other", {"apps": "web"}, "8"),
    ]
    assert gpu_memory_gib(nodes[0]) == 16 and gpu_memory_gib(nodes[1]) == 80
    choice = choose_node(nodes, selector, need_gib=30)
    assert choice.ok and choice.node == "big" and choice.gpus == 2
    none = choose_node(nodes, selector, need_gib=100)
    assert not none.ok and "100.0 GiB per GPU" in none.message and "small (4 GPU, 16 GiB)" in none.message
    nothing = choose_node(nodes, LabelSelector(match_labels={"apps": "missing"}), need_gib=1)
    assert not nothing.ok and "no node matches" in nothing.message and "other" in nothing.message


def test_nodeclaim_state():
    claim = {
        "metadata": {"name": "ws-1"},
        "status": {"conditions": [{"type": "Launched", "status": "False", "message": "no capacity"}]},
    }
    ready, message = nodeclaim_state(claim)
    assert not ready and "Launched: no capacity" in message
    claim["status"] = {"nodeName": "n1", "conditions": [{"type": "Ready", "status": "True"}]}
    assert nodeclaim_state(claim) == (True, "NodeClaim ws-1 is ready (node n1)")


def test_an_active_job_whose_pod_cannot_be_scheduled_is_pending_with_the_schedulers_reason():
    """Job.status.active counts Pending pods: a pod no node takes is not training."""
    unscheduled = {
        "metadata": {"name": "ws-abcde", "creationTimestamp": "t1"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": (
                        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                    ),
                }
            ],
        },
    }
    job = {"metadata": {"name": "ws"}, "spec": {}, "status": {"active": 1}}
    outcome = st.job_outcome(job, [unscheduled])
    assert outcome.phase == st.PENDING
    assert outcome.message == (
        "pod ws-abcde is not scheduled: 0/1 nodes are available: 1 node(s) didn't match Pod's node "
        "affinity/selector."
    )
    pulling = {
        "metadata": {"name": "ws-abcde", "creationTimestamp": "t1"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [
                {
                    "name": "fetch-data",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
                }
            ],
        },
    }
    assert st.job_outcome(job, [pulling]).message == "pod ws-abcde: fetch-data ErrImagePull: not found"
    started = {**pulling, "status": {**pulling["status"], "initContainerStatuses": []}}
    assert st.job_outcome(job, [started]).message == "pod ws-abcde is starting"
