"""EvaluationConfig.min_improvement without a cluster: the push step's refusal (exit EXIT_NOT_BETTER) fails
the training Job at once (one node) or the push Job (several), the Workspace ends Failed with both losses
and where the adapter stays, the Failed Event says it, and nothing is trained again."""

from __future__ import annotations

from contract.pod import EXIT_NOT_BETTER
from contract.reports import evaluation_status, improvement_gate
from tests.controller.test_multi_node import pushed_pod, two_nodes
from tests.controller.test_tuning_reconcile import (
    JOB,
    JOB_PODS,
    SETTINGS,
    SHA,
    job,
    passed,
    run,
    valid,
    workspace,
)
from tuning_controller import status as st
from tuning_controller.cli_status import status_lines
from tuning_controller.render.job import PUSH, render_push_job, render_training_job
from tuning_controller.settings import Settings
from tuning_controller.tuning_reconcile import PUSH_JOB, PUSH_PODS

NOT_BETTER_RULE = {
    "action": "FailJob",
    "onExitCodes": {"containerName": PUSH, "operator": "In", "values": [EXIT_NOT_BETTER]},
}
# what `kaito-tune push` writes into its termination log when it refuses (artifacts.push.refuse_failed_gate)
GATE = improvement_gate(evaluation_status(2.0, 1.9, 24), 0.1)
REFUSED = f"not pushed: {GATE['message']}; the adapter stays in /mnt/results"


def failed_pod(name: str) -> dict:
    """A pod whose train step succeeded and whose push refused the adapter."""
    pod = pushed_pod(EXIT_NOT_BETTER, REFUSED)
    pod["metadata"]["name"] = name
    pod["status"]["initContainerStatuses"] = [{"name": "train", "state": {"terminated": {"exitCode": 0}}}]
    return pod


def test_the_verdict_is_relative_to_the_base_and_needs_both_losses():
    assert GATE == {
        "minImprovement": 0.1,
        "improvement": 0.05,
        "passed": False,
        "message": "held-out loss: base 2 -> adapter 1.9, 5.0% lower; "
        "EvaluationConfig.min_improvement asks for at least 10.0% lower",
    }
    assert improvement_gate(evaluation_status(2.0, 1.0, 24), 0.5)["passed"]  # exactly the margin
    worse = improvement_gate(evaluation_status(2.0, 2.2, 24), 0.0)
    assert not worse["passed"] and worse["improvement"] == -0.1 and "10.0% higher" in worse["message"]
    assert improvement_gate(evaluation_status(2.0, 2.0, 24), 0.0)["passed"]  # 0: no higher
    unmeasured = improvement_gate(evaluation_status(None, None, 0), 0.05)
    assert not unmeasured["passed"] and unmeasured["improvement"] is None
    assert "not measured" in unmeasured["message"]


def test_the_refusal_fails_the_job_at_once_wherever_the_push_runs():
    t = valid(workspace())
    for gpus in (1, 2):  # python, then torchrun (whose exit 1 is retried: no FailJob on train there)
        rules = render_training_job(t.ws, SETTINGS, t.rev, data_sha256=SHA, gpus=gpus)["spec"][
            "podFailurePolicy"
        ]
        assert rules["rules"][-1] == NOT_BETTER_RULE
    several = valid(two_nodes())
    training = render_training_job(several.ws, SETTINGS, several.rev, data_sha256=SHA, gpus=1)
    assert NOT_BETTER_RULE not in training["spec"]["podFailurePolicy"]["rules"]  # no push in those pods
    push = render_push_job(several.ws, SETTINGS, several.rev)
    assert push["spec"]["podFailurePolicy"]["rules"] == [NOT_BETTER_RULE]


def test_one_node_a_refused_push_fails_the_workspace_with_both_losses_and_the_claim():
    rev = valid(workspace()).rev
    t = valid(workspace(passed(rev, st.PUSHING)))
    plan, _ = run(t, {JOB: job("ws", rev, ("Failed",)), JOB_PODS: [failed_pod("ws-x")]})
    assert plan.phase == st.FAILED and plan.status.state == "Failed"
    message = plan.status.section["message"]
    assert message.startswith(
        f"push exited {EXIT_NOT_BETTER}: not pushed: held-out loss: base 2 -> adapter 1.9"
    )
    assert f"the adapter stays on claim ws-results, revision-{rev}" in message
    assert "adapter" not in plan.status.section  # no digest: nothing was pushed
    # no new training Job, nothing trained again: the Workspace is done until its spec changes
    assert not [w for w in plan.writes if w.obj["kind"] == "Job"]
    event = st.announcement(t.ws_obj, plan.status)
    assert event is not None and event.type == "Warning" and event.reason == st.FAILED
    assert "base 2 -> adapter 1.9" in event.message


def test_one_node_on_scratch_results_says_the_adapter_is_gone():
    scratch = Settings(model_registry=SETTINGS.model_registry, results_volume="emptyDir")
    rev = valid(workspace(), scratch).rev
    t = valid(workspace(passed(rev, st.PUSHING)), scratch)
    plan, _ = run(t, {JOB: job("ws", rev, ("Failed",)), JOB_PODS: [failed_pod("ws-x")]})
    assert (
        "scratch volume and is gone with it (KAITO_TUNE_RESULTS_VOLUME=pvc" in plan.status.section["message"]
    )


def test_several_nodes_a_refused_push_job_fails_the_workspace_with_both_losses():
    rev = valid(two_nodes()).rev
    t = valid(two_nodes(passed(rev, st.PUSHING)))
    trained, refused = job("ws", rev, ("Complete",)), job("ws-push", rev, ("Failed",), uid="push-uid")
    world = {JOB: trained, JOB_PODS: [], PUSH_JOB: refused, PUSH_PODS: [failed_pod("ws-push-x")]}
    plan, _ = run(t, world)
    assert plan.phase == st.FAILED and not [w for w in plan.writes if w.obj["kind"] == "Job"]
    message = plan.status.section["message"]
    assert f"push Job ws-push failed: push exited {EXIT_NOT_BETTER}: not pushed: held-out loss" in message
    assert f"the adapter stays on claim ws-results, revision-{rev}" in message


def test_kaito_tune_status_shows_the_checks_and_the_refusal():
    """`kaito-tune status` of a gated Workspace: both losses, the checks' score, and the refusal."""
    evaluation = evaluation_status(2.0, 1.9, 24, {"passed": 5, "total": 24, "basePassed": 1})
    tuning = {"phase": st.FAILED, "evaluation": evaluation, "message": f"push exited 3: {REFUSED}"}
    lines = status_lines({"metadata": {"name": "ws", "namespace": "team"}, "status": {"tuning": tuning}})
    assert (
        "Evaluation: held-out loss on 24 rows: base 2 (perplexity 7.389) -> adapter 1.9 (perplexity 6.686); "
        "checks: adapter 5/24, base 1/24"
    ) in lines
    assert lines[-1].startswith("Message: push exited 3: not pushed: held-out loss: base 2 -> adapter 1.9")
