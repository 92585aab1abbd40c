"""Inference Workspaces: validate -> GPU node -> Service + Deployment/StatefulSet (applied) -> status.

One idempotent ``reconcile``: every object is rendered (tuning_controller.render.inference) and applied,
so a changed spec changes the pod template (adapters roll the pods through the template's adapters-hash
annotation) and an unchanged one changes nothing. kopf calls it on Workspace create/update/resume and
on events of the controller's Deployments, StatefulSets and pods, so InferenceReady follows the pods
without polling. The tuning handlers' controller (client, settings, events) is shared.

    Workspace --> NodeClaim (auto-provisioning) or an own node --> <ws> Service (80 -> 5000)
              --> <ws> Deployment (count 1) | StatefulSet + <ws>-headless (count > 1)
              --> status.inference {phase, message, readyReplicas, ...}, InferenceReady, WorkspaceSucceeded
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kopf

from contract.problems import errors
from contract.workspace import GROUP, Workspace, parse_workspace
from tuning_controller import conditions as c
from tuning_controller import metrics
from tuning_controller.handlers.tuning import (
    STARTUP_SETTINGS,
    Controller,
    Waiting,
    controller,
    create_or_get,
    write_status,
)
from tuning_controller.inference_status import inference_status, pod_model
from tuning_controller.kube import KubeError
from tuning_controller.nodes import choose_node, nodeclaim_state
from tuning_controller.render import sku_gpus
from tuning_controller.render.inference import (
    render_inference_objects,
    selector_labels,
    stale_objects,
)
from tuning_controller.render.meta import WORKSPACE_LABEL
from tuning_controller.render.model import render_model_cache_claim
from tuning_controller.render.nodeclaim import (
    NODECLAIM_API_VERSION,
    nodeclaim_name,
    provisions_node,
    render_nodeclaim,
)
from tuning_controller.validation import validate_workspace

KIND = "inference"
MANAGED = {"app.kubernetes.io/managed-by": "kaito-tune", WORKSPACE_LABEL: kopf.PRESENT}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _nodes(
    ctl: Controller, ws_obj: Mapping[str, Any], ws: Workspace, generation: int, now: str
) -> tuple[int, dict[str, Any]]:
    """(GPUs per server pod, ResourceReady); ``Waiting`` (status written) while no node is there."""
    settings = ctl.settings
    if provisions_node(ws, settings):
        claim = ctl.kube.get(NODECLAIM_API_VERSION, "NodeClaim", None, nodeclaim_name(ws))
        if claim is None:
            claim = ctl.kube.apply(render_nodeclaim(ws, settings))
        ready, message = nodeclaim_state(claim)
        gpus = sku_gpus(ws)
    else:
        selector = ws.resource.label_selector if ws.resource else None
        choice = choose_node(ctl.kube.list("v1", "Node"), selector, None)
        ready, message, gpus = choice.ok, choice.message, choice.gpus
    reason = c.REASON_RESOURCE_READY if ready else c.REASON_NO_MATCHING_NODES
    resource = c.condition(c.RESOURCE_READY, ready, reason, message, generation, now)
    if not ready:
        waiting = [
            resource,
            c.condition(c.INFERENCE_READY, False, reason, message, generation, now),
            c.condition(c.WORKSPACE_SUCCEEDED, False, reason, message, generation, now),
        ]
        write_status(
            ctl, ws_obj, waiting, {"phase": "WaitingForNodes", "message": message}, "Pending", key=KIND
        )
        raise Waiting(message, settings.node_retry_seconds)
    return gpus, resource


def reconcile(ctl: Controller, ws_obj: Mapping[str, Any], *, prune: bool = False) -> str:
    """Apply the Workspace's objects and write its status; returns status.inference.phase.

    ``prune`` (on spec events) also deletes what another resource.count rendered: the Deployment
    when the Workspace became multi-node, the StatefulSet and headless Service when it went back.

    Raises kopf.PermanentError for an invalid spec and ``Waiting`` while no GPU node is available.
    """
    meta = ws_obj["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"
    generation = int(meta.get("generation") or 0)
    with _lock(key), metrics.reconciling(KIND):
        now = c.now_rfc3339()
        problems = errors(
            validate_workspace(
                ws_obj,
                allowed_url_networks=ctl.settings.allowed_url_networks,
                model_registry=ctl.settings.model_registry,
            )
        )
        if problems:
            message = "; ".join(str(p) for p in problems)
            conds = [
                c.condition(t, False, c.REASON_INVALID_SPEC, message, generation, now)
                for t in (c.RESOURCE_READY, c.INFERENCE_READY, c.WORKSPACE_SUCCEEDED)
            ]
            invalid = {"phase": "Invalid", "message": message[: c.MESSAGE_MAX]}
            write_status(ctl, ws_obj, conds, invalid, "Failed", key=KIND)
            metrics.set_state(KIND, key, "Failed")
            raise kopf.PermanentError(message)
        ws, _ = parse_workspace(ws_obj)
        gpus, resource = _nodes(ctl, ws_obj, ws, generation, now)
        if ctl.settings.model_cache == "pvc":
            create_or_get(ctl, render_model_cache_claim(ws.namespace, ctl.settings))
        workload: dict[str, Any] | None = None
        for obj in render_inference_objects(ws, ctl.settings, gpus=gpus):
            applied = ctl.kube.apply(obj)
            if obj["kind"] in ("Deployment", "StatefulSet"):
                workload = applied
        for api_version, kind, name in stale_objects(ws) if prune else []:
            if ctl.kube.delete(api_version, kind, ws.namespace, name):
                ctl.post_event(ws_obj, "Normal", "Replaced", f"deleted {kind} {name}: resource.count changed")
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(ws).items())
        pods = ctl.kube.list("v1", "Pod", ws.namespace, selector)
        conds, summary, state = inference_status(workload, pods, generation, now)
        model = pod_model(pods)
        if model:
            summary["model"] = model
        summary["adapters"] = {a.source.name: a.strength for a in ws.inference.adapters}
        write_status(ctl, ws_obj, [resource, *conds], summary, state, key=KIND)
        metrics.set_state(KIND, key, state)
        return summary["phase"]


# ---- kopf handlers -----------------------------------------------------------------------------


def is_inference(body: Mapping[str, Any], **_: Any) -> bool:
    return bool(body.get("inference"))


def _run(body: Mapping[str, Any]) -> None:
    try:
        reconcile(controller(), body, prune=True)
    except Waiting as wait:
        raise kopf.TemporaryError(str(wait), delay=wait.delay) from None


@kopf.on.startup()
def inference_watch_filters(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Only the controller's own Deployments and StatefulSets reach it (server-side label filter)."""
    managed = f"app.kubernetes.io/managed-by=kaito-tune,{GROUP}/workspace"
    for plural in ("deployments", "statefulsets"):
        settings.watching.label_selectors[("apps", "v1", plural)] = managed


@kopf.on.create(GROUP, "workspaces", when=is_inference)
@kopf.on.update(GROUP, "workspaces", when=is_inference)
@kopf.on.resume(GROUP, "workspaces", when=is_inference)
def inference_workspace_changed(body: kopf.Body, **_: Any) -> None:
    _run(body)


def _follow(body: Mapping[str, Any], logger: Any) -> None:
    """A server Deployment, StatefulSet or pod changed: refresh its Workspace's status."""
    labels = body.get("metadata", {}).get("labels") or {}
    name, namespace = labels.get(WORKSPACE_LABEL), body.get("metadata", {}).get("namespace")
    if not name or not namespace:
        return
    ctl = controller()
    try:
        ws = ctl.kube.get(ctl.settings.workspace_api_version, "Workspace", namespace, name)
        if ws is not None and ws.get("inference") and not ws["metadata"].get("deletionTimestamp"):
            reconcile(ctl, ws)
    except (Waiting, kopf.PermanentError):
        pass
    except KubeError as err:
        logger.warning("reconcile after %s event failed: %s", body.get("kind"), err)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
def inference_workload_event(body: kopf.Body, type: str, logger: Any, **_: Any) -> None:
    if type is not None and type != "DELETED":
        _follow(body, logger)


@kopf.on.event("", "v1", "pods", labels={**MANAGED, "app.kubernetes.io/component": "inference"})
def inference_pod_event(body: kopf.Body, type: str, logger: Any, **_: Any) -> None:
    """Pods carry failures (a bad pull) that the Deployment's counters do not show."""
    if type is not None and type != "DELETED":
        _follow(body, logger)


@kopf.on.delete(GROUP, "workspaces", when=is_inference, optional=not STARTUP_SETTINGS.auto_provisioning)
def inference_workspace_delete(body: kopf.Body, **_: Any) -> None:
    """Owner references remove the Service and the workload; the cluster-scoped NodeClaim goes here."""
    ws, _ = parse_workspace(body)
    ctl = controller()
    if ctl.settings.auto_provisioning:
        try:
            ctl.kube.delete(NODECLAIM_API_VERSION, "NodeClaim", None, nodeclaim_name(ws))
        except KubeError as err:
            if not err.not_found:
                raise
    metrics.set_state(KIND, f"{ws.namespace}/{ws.name}", None)
