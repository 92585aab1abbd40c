"""The inference reconcile's decisions, pure: whether the spec is refused, whether a GPU node is there,
what to write, and the status once the server's workload and pods are known.

    plan = refused(problems, stamp)                    # a Plan, or None for a valid spec
    nodes = node_readiness(ws, settings, seen, stamp)   # Read, a waiting Plan, or (writes, GPUs, condition)
    writes = serving_writes(ws, settings, gpus, prune=True)
    update = serving_update(ws, workload, pods, resource, stamp)   # after the writes: the applied workload

Every object is rendered (tuning_controller.render.inference) and applied, so a changed spec changes the
pod template (adapters roll the pods through the template's adapters-hash annotation) and an unchanged
one changes nothing.

    Workspace --> NodeClaim (auto-provisioning) or an own node --> <ws> Service (80 -> 5000)
              --> <ws> Deployment (count 1) | StatefulSet + <ws>-headless (count > 1)
              --> status.inference {phase, message, readyReplicas, ...}, InferenceReady, WorkspaceSucceeded
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from contract.problems import Problem
from contract.workspace import Workspace
from tuning_controller import conditions as c
from tuning_controller.inference_status import inference_status, pod_model
from tuning_controller.nodes import choose_node, nodeclaims_state
from tuning_controller.plan import Event, Plan, Read, Result, StatusUpdate, Verb, Write, named
from tuning_controller.render import sku_gpus
from tuning_controller.render.inference import render_inference_objects, stale_objects
from tuning_controller.render.model import render_model_cache_claim
from tuning_controller.render.nodeclaim import provisions_node, render_nodeclaim
from tuning_controller.settings import Settings

KIND = "inference"  # the status section
INVALID, WAITING_FOR_NODES = "Invalid", "WaitingForNodes"
NODECLAIM = "nodeclaim"  # the Workspace's NodeClaims, one per node of resource.count (auto-provisioning)
NODES = "nodes"  # every Node (own nodes)
WORKLOAD = "workload"  # the server's Deployment or StatefulSet as applied


def refused(problems: list[Problem], stamp: c.Stamp) -> Plan | None:
    """The Plan that reports an invalid spec on every condition; None when nothing is wrong."""
    if not problems:
        return None
    message = "; ".join(str(p) for p in problems)
    conds = tuple(
        stamp.condition(t, False, c.REASON_INVALID_SPEC, message)
        for t in (c.RESOURCE_READY, c.INFERENCE_READY, c.WORKSPACE_SUCCEEDED)
    )
    update = StatusUpdate(KIND, {"phase": INVALID, "message": c.clip(message)}, conds, "Failed")
    return Plan(INVALID, status=update, result=Result.INVALID, why=message)


def node_readiness(
    ws: Workspace, settings: Settings, seen: Mapping[str, Any], stamp: c.Stamp
) -> Read | Plan | tuple[tuple[Write, ...], int, dict[str, Any]]:
    """(writes, GPUs per server pod, ResourceReady) once a node is there; the Plan that waits for one
    (kopf retries after ``retry_after``); Read when the NodeClaim or the nodes are not seen yet."""
    writes: tuple[Write, ...] = ()
    if provisions_node(ws, settings):
        if NODECLAIM not in seen:
            return Read(NODECLAIM)
        claims = list(seen[NODECLAIM])
        for index, claim in enumerate(claims):
            if claim is None:
                claims[index] = render_nodeclaim(ws, settings, index)
                writes += (Write(Verb.APPLY, claims[index]),)
        ready, message = nodeclaims_state(claims)
        gpus = sku_gpus(ws)
    else:
        if NODES not in seen:
            return Read(NODES)
        selector = ws.resource.label_selector if ws.resource else None
        choice = choose_node(seen[NODES], selector, None)
        ready, message, gpus = choice.ok, choice.message, choice.gpus
    reason = c.REASON_RESOURCE_READY if ready else c.REASON_NO_MATCHING_NODES
    resource = stamp.condition(c.RESOURCE_READY, ready, reason, message)
    if ready:
        return writes, gpus, resource
    conds = (
        resource,
        stamp.condition(c.INFERENCE_READY, False, reason, message),
        stamp.condition(c.WORKSPACE_SUCCEEDED, False, reason, message),
    )
    update = StatusUpdate(KIND, {"phase": WAITING_FOR_NODES, "message": message}, conds, "Pending")
    retry = float(settings.node_retry_seconds)
    return Plan(WAITING_FOR_NODES, writes, update, Result.WAITING, retry, message)


def serving_writes(ws: Workspace, settings: Settings, gpus: int, *, prune: bool) -> tuple[Write, ...]:
    """The model cache claim, every rendered object (the workload recorded as WORKLOAD), and with
    ``prune`` (on spec events) deletes of what another resource.count rendered: the Deployment when the
    Workspace became multi-node, the StatefulSet and headless Service when it went back."""
    writes: list[Write] = []
    if settings.model_cache == "pvc":
        writes.append(Write(Verb.CREATE, render_model_cache_claim(ws.namespace, settings)))
    for obj in render_inference_objects(ws, settings, gpus=gpus):
        seen_as = WORKLOAD if obj["kind"] in ("Deployment", "StatefulSet") else ""
        writes.append(Write(Verb.APPLY, obj, seen_as=seen_as))
    for api_version, kind, name in stale_objects(ws) if prune else []:
        stale = named(api_version, kind, name, ws.namespace)
        event = Event("Normal", "Replaced", f"deleted {kind} {name}: resource.count changed")
        writes.append(Write(Verb.DELETE, stale, event))
    return tuple(writes)


def serving_update(
    ws: Workspace,
    workload: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    resource: dict[str, Any],
    stamp: c.Stamp,
) -> StatusUpdate:
    """status.inference from the applied workload and its pods, with the weights a pod fetched and the
    adapters' strengths."""
    conds, summary, state = inference_status(workload, pods, stamp.generation, stamp.now)
    model = pod_model(pods)
    if model:
        summary["model"] = model
    summary["adapters"] = {a.name: a.strength for a in ws.require_inference().adapters}
    return StatusUpdate(KIND, summary, (resource, *conds), state)
