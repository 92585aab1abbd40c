"""The inference reconcile's decisions without a cluster: refused specs, node readiness, what is written
(pruning included) and the status from the applied workload."""

from __future__ import annotations

from contract.problems import Problem
from contract.workspace import parse_workspace
from tests.inference.test_workspace_serving import inference_workspace
from tuning_controller import conditions as c
from tuning_controller.inference_reconcile import (
    NODECLAIM,
    NODES,
    WORKLOAD,
    node_readiness,
    refused,
    serving_update,
    serving_writes,
)
from tuning_controller.plan import Plan, Read, Result, Verb
from tuning_controller.settings import Settings

STAMP = c.Stamp(3, "2026-11-29T12:00:00Z")
SETTINGS = Settings(model_registry="registry.example/kaito-models")
WS, _ = parse_workspace(inference_workspace("ws", "team", "registry.example/adapters/a:v1", "0.5"))


def gpu_node(labels: dict) -> dict:
    return {
        "metadata": {"name": "gpu-1", "labels": labels},
        "status": {
            "allocatable": {"nvidia.com/gpu": "2"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_a_refused_spec_is_invalid_on_every_condition():
    assert refused([], STAMP) is None
    plan = refused([Problem("inference.preset", "is required")], STAMP)
    assert plan is not None and plan.result is Result.INVALID and "inference.preset" in plan.why
    assert plan.status.section["phase"] == "Invalid" and plan.status.state == "Failed"
    assert {x["type"] for x in plan.status.conditions} == {
        c.RESOURCE_READY,
        c.INFERENCE_READY,
        c.WORKSPACE_SUCCEEDED,
    }


def test_own_nodes_are_read_then_waited_for_or_used():
    assert node_readiness(WS, SETTINGS, {}, STAMP) == Read(NODES)
    waiting = node_readiness(WS, SETTINGS, {NODES: []}, STAMP)
    assert isinstance(waiting, Plan) and waiting.result is Result.WAITING
    assert waiting.retry_after == SETTINGS.node_retry_seconds and waiting.status.state == "Pending"
    writes, gpus, resource = node_readiness(WS, SETTINGS, {NODES: [gpu_node({"apps": "phi-3"})]}, STAMP)
    assert writes == () and gpus == 2 and resource["status"] == "True"


def test_a_missing_nodeclaim_is_applied_and_waited_for():
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    obj = inference_workspace("ws", "team", "registry.example/adapters/a:v1", "0.5")
    obj["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    ws, _ = parse_workspace(obj)
    assert node_readiness(ws, settings, {}, STAMP) == Read(NODECLAIM)
    plan = node_readiness(ws, settings, {NODECLAIM: (None,)}, STAMP)
    assert isinstance(plan, Plan) and plan.result is Result.WAITING
    assert [(w.verb, w.obj["kind"]) for w in plan.writes] == [(Verb.APPLY, "NodeClaim")]


def test_a_multi_node_server_gets_one_nodeclaim_per_pod_and_waits_for_all():
    settings = Settings(model_registry=SETTINGS.model_registry, auto_provisioning=True)
    obj = inference_workspace("ws", "team", "registry.example/adapters/a:v1", "0.5")
    obj["resource"] |= {"instanceType": "Standard_NC24ads_A100_v4", "count": 2}
    ws, _ = parse_workspace(obj)
    plan = node_readiness(ws, settings, {NODECLAIM: (None, None)}, STAMP)
    assert isinstance(plan, Plan) and plan.result is Result.WAITING
    names = [w.obj["metadata"]["name"] for w in plan.writes]
    assert len(names) == 2 and names[1] == f"{names[0]}-1"  # the StatefulSet's second pod gets a node too

    def claim(name: str, ready: bool) -> dict:
        return {
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": str(ready)}]},
        }

    plan = node_readiness(ws, settings, {NODECLAIM: (claim(names[0], True), claim(names[1], False))}, STAMP)
    assert isinstance(plan, Plan) and plan.writes == ()
    assert plan.why.startswith(f"1 of 2 NodeClaims ready; waiting for NodeClaim {names[1]}")
    writes, gpus, resource = node_readiness(
        ws, settings, {NODECLAIM: tuple(claim(n, True) for n in names)}, STAMP
    )
    assert writes == () and gpus == 1 and resource["message"] == "all 2 NodeClaims are ready"


def test_every_object_is_applied_the_workload_recorded_and_stale_ones_pruned_with_an_event():
    writes = serving_writes(WS, SETTINGS, 1, prune=True)
    applied = [w for w in writes if w.verb is Verb.APPLY]
    assert [w.obj["kind"] for w in applied if w.seen_as == WORKLOAD] == ["Deployment"]
    pruned = [w for w in writes if w.verb is Verb.DELETE]
    assert {w.obj["kind"] for w in pruned} == {"StatefulSet", "Service"}
    assert all(w.event.reason == "Replaced" for w in pruned)
    assert not [w for w in serving_writes(WS, SETTINGS, 1, prune=False) if w.verb is Verb.DELETE]


def test_the_status_carries_the_adapters_and_the_resource_condition():
    workload = {
        "kind": "Deployment",
        "metadata": {"name": "ws", "generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    resource = STAMP.condition(c.RESOURCE_READY, True, c.REASON_RESOURCE_READY, "node ready")
    update = serving_update(WS, workload, [], resource, STAMP)
    assert update.section["phase"] == "Ready" and update.section["adapters"] == {"code-word": "0.5"}
    assert update.state == "Ready" and update.conditions[0] == resource
