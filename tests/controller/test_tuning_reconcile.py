"""The tuning reconcile without a cluster: a Workspace and the children it was seen with, as dicts, in;
the reads it asks for, the writes and the status out."""

from __future__ import annotations

import json

from contract.reports import evaluation_status
from tests.controller.conftest import tuning_workspace
from tuning_controller import conditions as c
from tuning_controller import status as st
from tuning_controller.plan import Plan, Read, Result, StatusUpdate, Verb
from tuning_controller.render.job import PREFLIGHT, REVISION_ANNOTATION
from tuning_controller.render.model import FETCH_MODEL
from tuning_controller.settings import Settings
from tuning_controller.tuning_reconcile import (
    DATA_JOB,
    DATA_PODS,
    JOB,
    JOB_PODS,
    NODECLAIM,
    NODES,
    WORKLOAD,
    Target,
    decide,
    resync_after,
    tuning_target,
    user_config_of,
)

NOW = "2026-01-01T00:00:00Z"
SETTINGS = Settings(model_registry="registry.example/kaito-models")
SHA = "a" * 64
MODEL = {"source": "oci", "reference": "registry.example/kaito-models/tiny-llama@sha256:" + "b" * 64}


def workspace(status: dict | None = None, **kwargs) -> dict:
    ws = tuning_workspace("ws", "team", urls=["https://data.example.com/train.parquet"], **kwargs)
    ws["metadata"].update(uid="uid-1", generation=1, resourceVersion="7")
    if status is not None:
        ws["status"] = status
    return ws


def target(ws: dict, settings: Settings = SETTINGS, old: dict | None = None) -> Target | Plan:
    return tuning_target(ws, old, (None, []), settings, NOW)


def valid(ws: dict, settings: Settings = SETTINGS) -> Target:
    found = target(ws, settings)
    assert isinstance(found, Target), found
    return found


def run(t: Target, world: dict) -> tuple[Plan, list[str]]:
    """decide() until it stops reading, answering each Read from ``world``; returns the plan and the reads."""
    seen: dict = {}
    reads = []
    while isinstance(step := decide(t, seen), Read):
        reads.append(step.what)
        seen[step.what] = world[step.what]
    return step, reads


def writes(plan: Plan) -> list[tuple[str, str, str]]:
    return [(w.verb.value, w.obj["kind"], w.obj["metadata"]["name"]) for w in plan.writes]


def job(name: str, rev: str, conditions: tuple[str, ...] = (), uid: str = "job-uid") -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "team",
            "uid": uid,
            "annotations": {REVISION_ANNOTATION: rev},
        },
        "spec": {},
        "status": {"conditions": [{"type": t, "status": "True"} for t in conditions]},
    }


def preflight_pod(summary: dict, model: dict) -> dict:
    def done(name: str, message: dict) -> dict:
        return {"name": name, "state": {"terminated": {"exitCode": 0, "message": json.dumps(message)}}}

    return {
        "metadata": {"name": "ws-data-x", "creationTimestamp": "t1"},
        "status": {
            "phase": "Succeeded",
            "initContainerStatuses": [done(FETCH_MODEL, model)],
            "containerStatuses": [done(PREFLIGHT, summary)],
        },
    }


def gpu_node(name: str = "gpu-1") -> dict:
    return {
        "metadata": {"name": name, "labels": {"apps": "phi-3"}},
        "status": {
            "allocatable": {"nvidia.com/gpu": "1"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def passed(rev: str, phase: str = st.CHECKING_DATA) -> dict:
    """A stored status whose data check of ``rev`` passed."""
    data = {"ok": True, "sha256": SHA, "rows": 8}
    return {"tuning": {"revision": rev, "phase": phase, "data": data, "model": MODEL}}


def test_first_sight_reads_nothing_and_creates_the_config_then_the_data_job():
    plan, reads = run(valid(workspace()), {})
    assert reads == []
    # The ConfigMap first: the data Job's pod mounts it, and must never start with a namesake the
    # Workspace does not own (the shell stops the plan there). The input URLs' Secret before the Job too.
    secret = f"ws-input-{valid(workspace()).rev[:8]}"
    assert writes(plan) == [
        ("create-or-apply", "ConfigMap", "ws-training-config"),
        ("create-unread", "Secret", secret),
        ("create", "Job", "ws-data"),
    ]
    assert plan.writes[2].seen_as == DATA_JOB
    assert plan.phase == st.CHECKING_DATA and plan.result is Result.OK
    assert plan.status is not None and plan.status.state == "Pending" and not plan.status.announce
    assert c.find(plan.status.conditions, c.WORKSPACE_SUCCEEDED)["reason"] == c.REASON_DATA_CHECK


def test_a_running_check_is_read_and_nothing_is_written():
    rev = valid(workspace()).rev
    t = valid(workspace({"tuning": {"revision": rev, "phase": st.CHECKING_DATA}}))
    plan, reads = run(t, {DATA_JOB: job("ws-data", rev)})
    assert reads == [DATA_JOB]  # not settled: its pods are not read
    assert plan.writes == () and plan.phase == st.CHECKING_DATA


def test_a_passed_check_on_own_nodes_waits_for_a_node_then_creates_the_training_job():
    rev = valid(workspace()).rev
    t = valid(workspace({"tuning": {"revision": rev, "phase": st.CHECKING_DATA}}))
    pods = [preflight_pod({"ok": True, "sha256": SHA, "rows": 8}, MODEL)]
    world = {DATA_JOB: job("ws-data", rev, ("Complete",)), DATA_PODS: pods, JOB: None, NODES: []}
    plan, reads = run(t, world)
    assert reads == [DATA_JOB, DATA_PODS, JOB, NODES]
    assert plan.result is Result.WAITING and plan.retry_after == SETTINGS.node_retry_seconds
    assert plan.status.section["data"]["sha256"] == SHA and plan.status.announce
    assert "no node matches resource.labelSelector" in plan.why

    plan, _ = run(t, {**world, NODES: [gpu_node()]})
    assert [w[:2] for w in writes(plan)] == [
        ("create-unread", "Secret"),  # made with the data Job already; the training pod mounts it too
        ("apply", "ServiceAccount"),
        ("apply", "Role"),
        ("apply", "RoleBinding"),
        ("create", "PersistentVolumeClaim"),
        ("create", "Job"),
    ]
    assert plan.writes[-1].seen_as == JOB and plan.phase == st.PENDING
    assert plan.status.section["model"] == MODEL


def test_a_changed_spec_stops_the_old_training_and_checks_the_data_again():
    t = valid(workspace(passed("old-rev", st.TRAINING)))
    plan, reads = run(t, {JOB: job("ws", "old-rev")})
    assert reads == [JOB]
    assert writes(plan) == [
        ("replace", "Job", "ws"),
        ("apply", "ConfigMap", "ws-training-config"),
        ("create-unread", "Secret", f"ws-input-{t.rev[:8]}"),
        ("create", "Job", "ws-data"),
    ]
    assert plan.writes[0].event.reason == "JobReplaced"
    section = plan.status.section
    assert section["revision"] == t.rev and section["data"] is None and section["adapter"] is None
    assert section["evaluation"] is None  # the old revision's base-vs-adapter figures go with it
    assert section["tracking"] is None  # and its MLflow run


def test_a_failed_check_fails_the_workspace_and_releases_the_node():
    rev = valid(workspace()).rev
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    t = valid(workspace({"tuning": {"revision": rev, "phase": st.CHECKING_DATA}}), settings)
    bad = {"ok": False, "errors": ["2 rows have no assistant turn"], "firstBadRows": []}
    world = {DATA_JOB: job("ws-data", rev, ("Failed",)), DATA_PODS: [preflight_pod(bad, MODEL)]}
    plan, _ = run(t, world)
    assert plan.phase == st.FAILED and plan.status.announce
    assert writes(plan)[-1][:2] == ("delete", "NodeClaim")
    assert "no assistant turn" in plan.status.section["message"]


def test_auto_provisioning_creates_the_nodeclaim_once_and_waits_for_it():
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    ws = workspace(instance_type="Standard_NC24ads_A100_v4")
    rev = valid(ws, settings).rev
    t = valid(workspace(passed(rev), instance_type="Standard_NC24ads_A100_v4"), settings)
    plan, reads = run(t, {JOB: None, NODECLAIM: (None,)})
    assert reads == [JOB, NODECLAIM]
    assert [(w.verb, w.obj["kind"], w.event.reason) for w in plan.writes] == [
        (Verb.CREATE, "NodeClaim", "NodeClaimCreated")
    ]
    assert plan.result is Result.WAITING
    assert c.find(plan.status.conditions, c.NODECLAIM_READY)["reason"] == c.REASON_NODECLAIM_NOT_READY


NO_QUOTA = "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu"


def test_a_queued_job_gets_its_nodeclaim_only_once_its_queue_admitted_it():
    """Kueue's label with auto-provisioning: the Job first, suspended, and no GPU node while it waits
    for quota (the queue's reason in status); once Kueue unsuspended it, the NodeClaim."""
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    sku, queue = "Standard_NC24ads_A100_v4", {"kueue.x-k8s.io/queue-name": "gpus"}
    rev = valid(workspace(instance_type=sku, labels=queue), settings).rev
    t = valid(workspace(passed(rev), instance_type=sku, labels=queue), settings)
    plan, reads = run(t, {JOB: None})
    assert reads == [JOB] and writes(plan)[-1] == ("create", "Job", "ws")
    assert "NodeClaim" not in [kind for _, kind, _ in writes(plan)]
    created = plan.writes[-1].obj
    assert (
        created["spec"]["suspend"] is True
        and created["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    )
    assert (
        plan.phase == st.QUEUED and "suspended until queue gpus admits it" in plan.status.section["message"]
    )

    waiting = {
        "metadata": {"name": "job-ws-1a2b3"},
        "status": {
            "conditions": [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": NO_QUOTA,
                }
            ]
        },
    }
    suspended = {**job("ws", rev), "spec": {"suspend": True}}
    plan, reads = run(t, {JOB: suspended, JOB_PODS: [], WORKLOAD: waiting})
    assert reads == [JOB, JOB_PODS, WORKLOAD] and plan.writes == ()
    assert plan.phase == st.QUEUED
    assert plan.status.section["message"] == (f"waiting in queue gpus: {NO_QUOTA}")

    admitted = {**job("ws", rev), "spec": {"suspend": False}}
    plan, reads = run(t, {JOB: admitted, JOB_PODS: [], NODECLAIM: (None,)})
    assert reads == [JOB, JOB_PODS, NODECLAIM]
    assert [(w.verb, w.obj["kind"]) for w in plan.writes] == [(Verb.CREATE, "NodeClaim")]
    assert plan.phase == st.PENDING and plan.status.section["message"].startswith("admitted by queue gpus; ")
    assert c.find(plan.status.conditions, c.NODECLAIM_READY)["reason"] == c.REASON_NODECLAIM_NOT_READY


def test_a_finished_revision_whose_job_is_gone_keeps_its_outcome():
    rev = valid(workspace()).rev
    t = valid(workspace(passed(rev, st.SUCCEEDED)))
    plan, reads = run(t, {JOB: None})
    assert reads == [JOB]
    assert plan.phase == st.SUCCEEDED and plan.status is None and plan.writes == ()


def test_a_running_training_job_reads_its_pods():
    rev = valid(workspace()).rev
    t = valid(workspace(passed(rev, st.PENDING)))
    running = {
        "metadata": {"name": "ws-x", "creationTimestamp": "t1"},
        "status": {
            "phase": "Running",
            "initContainerStatuses": [{"name": "train", "state": {"running": {}}}],
        },
    }
    plan, reads = run(t, {JOB: job("ws", rev), JOB_PODS: [running]})
    assert reads == [JOB, JOB_PODS] and plan.writes == ()
    assert plan.phase == st.TRAINING and plan.status.state == "Running"


def test_an_adopted_data_job_is_decided_on_again():
    """A restart after the Job was created but before the status was written: the create finds the Job
    (the shell records it), and the second decision reads its state instead of creating again."""
    t = valid(workspace())
    seen = {DATA_JOB: job("ws-data", t.rev, ("Complete",))}
    step = decide(t, seen)
    assert step == Read(DATA_PODS)


def test_invalid_and_immutable_specs_are_refused_with_their_reason():
    plan = target(workspace(method="sgd"))
    assert isinstance(plan, Plan) and plan.result is Result.INVALID and "tuning.method" in plan.why
    assert c.find(plan.status.conditions, c.WORKSPACE_SUCCEEDED)["reason"] == c.REASON_INVALID_SPEC

    plan = target(workspace(method="qlora"), old=workspace())
    assert isinstance(plan, Plan) and plan.phase == st.INVALID
    assert c.find(plan.status.conditions, c.WORKSPACE_SUCCEEDED)["reason"] == c.REASON_IMMUTABLE_FIELD


def test_a_missing_config_map_is_invalid_unless_the_workspace_finished_with_it():
    config = user_config_of("cfg", "team", None)
    assert config[0] is None and "not found in namespace team" in str(config[1][0])
    assert tuning_target(workspace(config="cfg"), None, config, SETTINGS, NOW).result is Result.INVALID
    finished = {
        "tuning": {"phase": st.SUCCEEDED},
        "conditions": [{"type": c.WORKSPACE_SUCCEEDED, "status": "True", "observedGeneration": 1}],
    }
    kept = tuning_target(workspace(finished, config="cfg"), None, config, SETTINGS, NOW)
    assert kept == Plan(st.SUCCEEDED)


def test_resync_timing_follows_the_phase():
    assert resync_after(st.WAITING_FOR_NODES, SETTINGS) == (SETTINGS.node_retry_seconds, False)
    assert resync_after(st.TRAINING, SETTINGS) == (SETTINGS.resync_seconds, True)
    assert resync_after(st.SUCCEEDED, SETTINGS) is None
    assert resync_after(st.INVALID, SETTINGS) is None


def test_status_patch_is_skipped_when_unchanged_or_moving_back_and_announced_once():
    ws = workspace({"tuning": {"revision": "r1", "phase": st.PUSHING}})
    back = StatusUpdate(st.KIND, {"revision": "r1", "phase": st.TRAINING}, (), "Running", announce=True)
    assert st.status_patch(ws, back) is None
    forward = StatusUpdate(st.KIND, {"revision": "r1", "phase": st.SUCCEEDED}, (), "Succeeded", announce=True)
    patch = st.status_patch(ws, forward)
    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["status"]["tuning"] == {"phase": st.SUCCEEDED} and patch["status"]["state"] == "Succeeded"
    assert st.announcement(ws, forward).reason == st.SUCCEEDED
    written = workspace({"tuning": {"revision": "r1", "phase": st.SUCCEEDED}, "state": "Succeeded"})
    assert st.status_patch(written, forward) is None and st.announcement(written, forward) is None


def test_the_trainers_evaluation_survives_the_controllers_writes_and_the_succeeded_event_names_it():
    """status.tuning.evaluation is the trainer's: the controller's merge patch never carries the key, and
    its Succeeded Event says how the adapter did against the base."""
    evaluation = evaluation_status(2.3125, 0.84, 24)
    ws = workspace({"tuning": {"revision": "r1", "phase": st.PUSHING, "evaluation": evaluation}})
    pushed = {st.PUSH: "sha256:" + "d" * 64}
    outcome = st.JobOutcome(st.SUCCEEDED, "the Job completed", terminations=pushed)
    update = st.training_update(
        {"revision": "r1"}, outcome, "reg/adapters/a:v1", ({}, {}), (), c.Stamp(1, NOW)
    )
    written = st.status_patch(ws, update)["status"]["tuning"]
    assert written["phase"] == st.SUCCEEDED and "evaluation" not in written
    event = st.announcement(ws, update)
    assert event.reason == st.SUCCEEDED and event.message == (
        f"adapter written to reg/adapters/a:v1@sha256:{'d' * 64}; evaluation: held-out loss on 24 rows: "
        "base 2.312 (perplexity 10.1) -> adapter 0.84 (perplexity 2.316)"
    )
    unevaluated = workspace({"tuning": {"revision": "r1", "phase": st.PUSHING}})
    assert st.announcement(unevaluated, update).message.startswith("adapter written to reg/adapters/a:v1@")
    assert "evaluation" not in st.announcement(unevaluated, update).message


def test_a_job_its_queue_evicts_goes_back_to_queued_and_releases_its_node():
    """Kueue preempts an admitted, training Job: suspended again, its Workload Evicted. The phase moves
    back to Queued (a status patch allows it only then) and the NodeClaim is deleted until readmission."""
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    sku, queue = "Standard_NC24ads_A100_v4", {"kueue.x-k8s.io/queue-name": "gpus"}
    rev = valid(workspace(instance_type=sku, labels=queue), settings).rev
    stored = workspace(passed(rev, st.TRAINING), instance_type=sku, labels=queue)
    t = valid(stored, settings)
    evicted = {
        "metadata": {"name": "job-ws-1a2b3"},
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": NO_QUOTA},
                {
                    "type": "Evicted",
                    "status": "True",
                    "reason": "Preempted",
                    "message": "Preempted to accommodate a higher priority Workload",
                },
            ]
        },
    }
    suspended = {**job("ws", rev), "spec": {"suspend": True}}
    plan, reads = run(t, {JOB: suspended, JOB_PODS: [], WORKLOAD: evicted})
    assert reads == [JOB, JOB_PODS, WORKLOAD]
    assert [(w.verb, w.obj["kind"]) for w in plan.writes] == [(Verb.DELETE, "NodeClaim")]
    assert plan.phase == st.QUEUED and plan.status.requeued
    assert plan.status.section["message"] == (
        "evicted by queue gpus (Preempted: Preempted to accommodate a higher priority Workload); "
        "waiting to be admitted again"
    )
    patch = st.status_patch(stored, plan.status)
    assert patch is not None and patch["status"]["tuning"]["phase"] == st.QUEUED

    waiting = {**evicted, "status": {"conditions": evicted["status"]["conditions"][:1]}}
    plan, _ = run(t, {JOB: suspended, JOB_PODS: [], WORKLOAD: waiting})  # a stale read, not an eviction
    assert plan.writes == () and not plan.status.requeued
    assert st.status_patch(stored, plan.status) is None  # Training does not move back
