"""Inference Workspace status from the workload and its pods (pure)."""

from __future__ import annotations

from tuning_controller.inference_status import inference_status, pod_problems

NOW = "2026-11-29T12:00:00Z"


def deployment(generation: int = 2, observed: int = 2, ready: int = 0, updated: int = 1) -> dict:
    return {
        "kind": "Deployment",
        "metadata": {"name": "ws", "generation": generation},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated},
    }


def pod(init_state: dict, restarts: int = 0, last: dict | None = None) -> dict:
    status = {"name": "pull-a", "state": init_state, "restartCount": restarts}
    if last:
        status["lastState"] = {"terminated": last}
    return {"metadata": {"name": "ws-abc"}, "status": {"initContainerStatuses": [status]}}


def by_type(conds: list[dict]) -> dict[str, dict]:
    return {c["type"]: c for c in conds}


def test_ready_when_every_replica_of_the_current_template_is_ready():
    conds, summary, state = inference_status(deployment(ready=1), [], 2, NOW)

    assert by_type(conds)["InferenceReady"]["status"] == "True"
    assert by_type(conds)["WorkspaceSucceeded"]["reason"] == "WorkspaceSucceeded"
    assert (summary["phase"], state, summary["workload"]) == ("Ready", "Ready", "Deployment/ws")


def test_an_old_template_still_ready_is_not_ready_yet():
    conds, summary, _ = inference_status(deployment(generation=3, observed=2, ready=1), [], 3, NOW)

    assert by_type(conds)["InferenceReady"]["status"] == "False"
    assert summary["phase"] == "Starting"
    assert by_type(conds)["InferenceReady"]["observedGeneration"] == 3


def test_a_failing_pull_shows_its_message_on_the_workspace():
    failing = pod(
        {"waiting": {"reason": "CrashLoopBackOff"}},
        restarts=3,
        last={"exitCode": 1, "message": "error: unauthorized: check imagePullSecrets"},
    )

    conds, summary, state = inference_status(deployment(), [failing], 2, NOW)

    assert summary["phase"] == "Failing" and state == "NotReady"
    assert by_type(conds)["InferenceReady"]["message"] == (
        "pod ws-abc: pull-a: CrashLoopBackOff: error: unauthorized: check imagePullSecrets (restarts: 3)"
    )


def test_running_and_completed_containers_are_no_problem():
    assert pod_problems([pod({"terminated": {"exitCode": 0, "reason": "Completed"}})]) == []
    assert pod_problems([pod({"running": {}})]) == []
    assert pod_problems([pod({"terminated": {"exitCode": 2, "reason": "Error"}})]) == [
        "pod ws-abc: pull-a: exit 2: Error"
    ]
