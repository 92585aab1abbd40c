"""resource.count > 1 for tuning, without a cluster: the Indexed Job, its rendezvous Service and the push
Job that follows, the own-node choice for N pods, and what the settings must allow."""

from __future__ import annotations

import json

from tests.controller.test_tuning_reconcile import (
    JOB,
    JOB_PODS,
    NODES,
    SETTINGS,
    SHA,
    job,
    passed,
    run,
    valid,
    workspace,
    writes,
)
from tuning_controller import status as st
from tuning_controller.nodes import choose_node
from tuning_controller.render.job import (
    PUSH,
    TRAIN,
    render_push_job,
    render_rendezvous_service,
    render_results_claim,
    render_training_job,
)
from tuning_controller.settings import Settings
from tuning_controller.tuning_reconcile import NODECLAIM, PUSH_JOB, PUSH_PODS, Target, tuning_target

DIGEST = "sha256:" + "c" * 64


def two_nodes(status: dict | None = None, **kwargs) -> dict:
    ws = workspace(status, **kwargs)
    ws["resource"]["count"] = 2
    return ws


def node(name: str, gpus: int) -> dict:
    return {
        "metadata": {"name": name, "labels": {"apps": "phi-3"}},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]}


def test_two_nodes_render_an_indexed_job_that_rendezvous_at_pod_zero_and_never_sees_the_push_secret():
    t = valid(two_nodes())
    rendered = render_training_job(t.ws, SETTINGS, t.rev, data_sha256=SHA, gpus=4)
    spec = rendered["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "ws-workers"
    steps = containers(pod)
    assert PUSH not in steps and [c["name"] for c in pod["containers"]] == [TRAIN]
    assert "push-secret" not in {v["name"] for v in pod["volumes"]}
    command = steps[TRAIN]["command"]
    assert command[: command.index("-m")] == [
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=ws-0.ws-workers.team.svc.cluster.local:29500",
        f"--rdzv-id=ws-{t.rev}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
    ]
    assert spec["backoffLimit"] == 2 * SETTINGS.backoff_limit  # a lost pod costs the group's 2
    assert steps[TRAIN]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # torchrun exits 1 on SIGTERM too: a lost pod must be retried, not fail the Job as unusable input
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    ]

    service = render_rendezvous_service(t.ws)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"].items() <= pod_labels(rendered).items()
    assert render_results_claim(t.ws, SETTINGS)["spec"]["accessModes"] == ["ReadWriteMany"]

    push = render_push_job(t.ws, SETTINGS, t.rev)["spec"]["template"]["spec"]
    assert [c["name"] for c in push["containers"]] == [PUSH]
    assert {v["name"] for v in push["volumes"]} == {"results", "push-secret"}
    assert "nvidia.com/gpu" not in json.dumps(push) and "tolerations" not in push


def pod_labels(job_obj: dict) -> dict:
    return job_obj["spec"]["template"]["metadata"]["labels"]


def test_one_node_keeps_the_single_pod_job_with_its_push_container():
    t = valid(workspace())
    rendered = render_training_job(t.ws, SETTINGS, t.rev, data_sha256=SHA, gpus=2)
    assert "completionMode" not in rendered["spec"]
    pod = rendered["spec"]["template"]["spec"]
    assert "subdomain" not in pod and [c["name"] for c in pod["containers"]] == [PUSH]
    assert containers(pod)[TRAIN]["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]
    assert render_results_claim(t.ws, SETTINGS)["spec"]["accessModes"] == ["ReadWriteOnce"]
    one_process = render_training_job(t.ws, SETTINGS, t.rev, data_sha256=SHA, gpus=1)["spec"]
    # the python trainer's unusable exit, and the push's refusal of a worse adapter (test_gate.py)
    assert [r["action"] for r in one_process["podFailurePolicy"]["rules"]] == ["Ignore", "FailJob", "FailJob"]


def test_own_nodes_give_each_pod_as_many_gpus_as_the_count_allows():
    one_big = [node("big", 8)]
    assert (choose_node(one_big, None, None).gpus, choose_node(one_big, None, None, 2).gpus) == (8, 4)
    two_big = [node("a", 8), node("b", 8)]
    assert choose_node(two_big, None, None, 2).gpus == 8
    uneven = [node("a", 8), node("b", 2)]
    assert choose_node(uneven, None, None, 2).gpus == 4  # two pods of 4 on a; b is too small for 4
    assert choose_node(uneven, None, None, 3).gpus == 2
    short = choose_node([node("a", 1)], None, None, 2)
    assert not short.ok
    assert "resource.count 2 needs 2 pods" in short.message and "hold 1 GPUs" in short.message


def test_the_service_comes_before_the_indexed_job_and_the_pods_get_the_gpus_per_pod():
    rev = valid(two_nodes()).rev
    t = valid(two_nodes(passed(rev)))
    plan, reads = run(t, {JOB: None, NODES: [node("gpu-1", 4)]})
    assert reads == [JOB, NODES]
    kinds = [w[:2] for w in writes(plan)]
    assert kinds.index(("create", "Service")) < kinds.index(("create", "Job"))
    created = plan.writes[-1].obj
    assert created["spec"]["completions"] == 2
    train = containers(created["spec"]["template"]["spec"])[TRAIN]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "2" and "--nproc-per-node=2" in train["command"]


def pushed_pod(exit_code: int, message: str) -> dict:
    terminated = {"exitCode": exit_code, "message": message}
    return {
        "metadata": {"name": "ws-push-x", "creationTimestamp": "t2"},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": PUSH, "state": {"terminated": terminated}}],
        },
    }


def test_a_completed_multi_node_training_is_pushed_by_a_job_of_its_own():
    rev = valid(two_nodes()).rev
    t = valid(two_nodes(passed(rev, st.TRAINING)))
    trained = job("ws", rev, ("Complete",))
    trained["status"]["startTime"] = "2026-01-01T00:00:01Z"

    plan, reads = run(t, {JOB: trained, JOB_PODS: [], PUSH_JOB: None})
    assert reads == [JOB, JOB_PODS, PUSH_JOB]
    assert writes(plan) == [("create", "Job", "ws-push")] and plan.writes[0].seen_as == PUSH_JOB
    assert plan.phase == st.PUSHING
    assert plan.status.section["message"].startswith("training completed; pushing the adapter in Job ws-push")
    assert plan.status.section["startTime"] == "2026-01-01T00:00:01Z"

    done = job("ws-push", rev, ("Complete",), uid="push-uid")
    plan, reads = run(t, {JOB: trained, JOB_PODS: [], PUSH_JOB: done, PUSH_PODS: [pushed_pod(0, DIGEST)]})
    assert reads == [JOB, JOB_PODS, PUSH_JOB, PUSH_PODS] and plan.writes == ()
    assert plan.phase == st.SUCCEEDED
    assert plan.status.section["adapter"] == {"image": "127.0.0.1:5000/adapters/x:v1", "digest": DIGEST}

    failed = job("ws-push", rev, ("Failed",), uid="push-uid")
    world = {JOB: trained, JOB_PODS: [], PUSH_JOB: failed, PUSH_PODS: [pushed_pod(1, "401 Unauthorized")]}
    plan, _ = run(t, world)
    assert plan.phase == st.FAILED
    message = plan.status.section["message"]
    assert "push Job ws-push failed: push exited 1: 401 Unauthorized" in message
    assert f"the adapter stays on claim ws-results, revision-{t.rev}" in message

    stale = job("ws-push", "old-rev", ("Complete",), uid="push-uid")
    plan, _ = run(t, {JOB: trained, JOB_PODS: [], PUSH_JOB: stale, PUSH_PODS: []})
    assert writes(plan) == [("replace", "Job", "ws-push"), ("create", "Job", "ws-push")]


def test_a_failed_multi_node_training_pushes_nothing():
    rev = valid(two_nodes()).rev
    t = valid(two_nodes(passed(rev, st.TRAINING)))
    plan, reads = run(t, {JOB: job("ws", rev, ("Failed",)), JOB_PODS: []})
    assert reads == [JOB, JOB_PODS] and plan.phase == st.FAILED and plan.writes == ()


def test_what_several_nodes_need_of_the_settings_is_refused_by_name():
    scratch = Settings(model_registry=SETTINGS.model_registry, results_volume="emptyDir")
    refused = tuning_target(two_nodes(), None, (None, []), scratch, "now")
    assert not isinstance(refused, Target)
    assert "results on emptyDir" in refused.why and "KAITO_TUNE_RESULTS_VOLUME=pvc" in refused.why

    cached = Settings(model_registry=SETTINGS.model_registry, model_cache="pvc")
    refused = tuning_target(two_nodes(), None, (None, []), cached, "now")
    assert not isinstance(refused, Target)
    assert "model cache claim, which the controller makes ReadWriteOnce" in refused.why
    shared = Settings(
        model_registry=SETTINGS.model_registry, model_cache="pvc", model_cache_access_mode="ReadWriteMany"
    )
    assert isinstance(tuning_target(two_nodes(), None, (None, []), shared, "now"), Target)

    volume_output = two_nodes(output={"volumeSource": {"persistentVolumeClaim": {"claimName": "shared"}}})
    assert isinstance(tuning_target(volume_output, None, (None, []), scratch, "now"), Target)


def ready_claim(name: str) -> dict:
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def test_auto_provisioning_brings_up_one_node_per_pod_and_releases_them_all():
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    sku = "Standard_NC24ads_A100_v4"  # one A100 per node
    rev = valid(two_nodes(instance_type=sku), settings).rev
    t = valid(two_nodes(passed(rev), instance_type=sku), settings)
    plan, reads = run(t, {JOB: None, NODECLAIM: (None, None)})
    assert reads == [JOB, NODECLAIM]
    claims = [w.obj["metadata"]["name"] for w in plan.writes]
    assert [w.obj["kind"] for w in plan.writes] == ["NodeClaim", "NodeClaim"] and len(set(claims)) == 2
    assert claims[1] == f"{claims[0]}-1"

    plan, _ = run(t, {JOB: None, NODECLAIM: (ready_claim(claims[0]), {"metadata": {"name": claims[1]}})})
    assert plan.writes == () and plan.phase == st.WAITING_FOR_NODES
    assert plan.why.startswith(f"1 of 2 NodeClaims ready; waiting for NodeClaim {claims[1]}")

    plan, _ = run(t, {JOB: None, NODECLAIM: tuple(ready_claim(n) for n in claims)})
    created = plan.writes[-1].obj
    assert created["kind"] == "Job" and created["spec"]["completions"] == 2
    train = containers(created["spec"]["template"]["spec"])[TRAIN]
    assert "--nnodes=2" in train["command"] and "--nproc-per-node=1" in train["command"]  # the SKU's 1 GPU
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "1"

    plan, _ = run(t, {JOB: job("ws", rev, ("Failed",)), JOB_PODS: []})
    assert [(w.verb.value, w.obj["metadata"]["name"]) for w in plan.writes] == [
        ("delete", claims[0]),
        ("delete", claims[1]),
    ]
