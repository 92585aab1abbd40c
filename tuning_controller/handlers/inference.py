"""kopf handlers of inference Workspaces: read, call the pure decisions
(tuning_controller.inference_reconcile), carry the writes out, write the status from the applied workload
and its pods.

A Workspace is reconciled when it appears (the listing at start included), when its spec, labels or
annotations change, and on events of the controller's Deployments, StatefulSets and pods, so
InferenceReady follows the pods without polling. One waiting for a node is looked at again every
node_retry_seconds (tuning_controller.resync), as is one whose Service, workload or NodeClaim name is held
by an object it does not own (NameTaken in its status; that object is left alone).

The delete handler (auto-provisioning) releases the NodeClaims under the Workspace's lock and marks its
uid deleted, so a reconcile that read the Workspace before the deletion writes nothing afterwards.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import kopf

from contract.problems import errors
from contract.workspace import GROUP, Workspace, parse_workspace
from tuning_controller import conditions as c
from tuning_controller import metrics
from tuning_controller import status as st
from tuning_controller.handlers.runtime import (
    MANAGED,
    RETRY_SECONDS,
    Controller,
    Handled,
    Logger,
    NameTaken,
    carry_out,
    controller,
    deleting,
    essence,
    key_of,
    owner_key,
    read_own,
    reconcile_current,
    reconciling,
    resync_with_operator,
    surplus_claim_deletes,
    write_status,
)
from tuning_controller.inference_reconcile import (
    KIND,
    NODECLAIM,
    NODES,
    WORKLOAD,
    node_readiness,
    refused,
    serving_update,
    serving_writes,
)
from tuning_controller.nodes import release_nodeclaims
from tuning_controller.plan import Plan, Read, Result
from tuning_controller.render.inference import selector_labels
from tuning_controller.render.nodeclaim import NODECLAIM_API_VERSION, nodeclaim_names
from tuning_controller.settings import Settings
from tuning_controller.validation import validate_workspace

log = logging.getLogger("kaito-tune.inference")


def reconcile(ctl: Controller, ws_obj: Mapping[str, Any], *, prune: bool = False) -> Plan | None:
    """Apply the Workspace's objects and write its status; returns the plan carried out (None when the
    Workspace's delete handler already ran: nothing is written).

    ``prune`` (on spec events) also deletes what another resource.count rendered."""
    key = key_of(ws_obj)
    with reconciling(ws_obj) as alive:
        if not alive:
            return None
        with metrics.reconciling(KIND) as outcome:
            stamp = c.Stamp(int(ws_obj["metadata"].get("generation") or 0), c.now_rfc3339())
            try:
                plan = _reconcile(ctl, ws_obj, prune, stamp)
            except NameTaken as taken:
                retry = float(ctl.settings.node_retry_seconds)
                plan = st.taken_plan(KIND, ws_obj, taken.taken, stamp, retry)
            if plan.status:
                write_status(ctl, ws_obj, plan.status)
                metrics.set_state(KIND, key, plan.status.state)
            outcome["result"] = plan.result
            return plan


def _reconcile(ctl: Controller, ws_obj: Mapping[str, Any], prune: bool, stamp: c.Stamp) -> Plan:
    settings = ctl.settings
    found = validate_workspace(
        ws_obj, allowed_url_networks=settings.allowed_url_networks, model_registry=settings.model_registry
    )
    invalid = refused(errors(found), stamp)
    if invalid:
        return invalid
    ws, _ = parse_workspace(ws_obj)
    # a smaller resource.count leaves NodeClaims its names no longer reach: release them first
    surplus = surplus_claim_deletes(ctl, ws_obj, ws) if prune else ()
    carry_out(ctl, ws_obj, surplus, {}, set())
    seen: dict[str, Any] = {}
    while isinstance(nodes := node_readiness(ws, settings, seen, stamp), Read):
        seen[nodes.what] = _observe(ctl, ws_obj, ws, nodes.what)
    if isinstance(nodes, Plan):
        carry_out(ctl, ws_obj, nodes.writes, seen, set())
        return replace(nodes, writes=(*surplus, *nodes.writes))
    node_writes, gpus, resource = nodes
    serving = (*node_writes, *serving_writes(ws, settings, gpus, prune=prune))
    carry_out(ctl, ws_obj, serving, seen, set())
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(ws).items())
    pods = ctl.kube.list("v1", "Pod", ws.namespace, selector)
    update = serving_update(ws, seen.get(WORKLOAD), pods, resource, stamp)
    return Plan(update.section["phase"], (*surplus, *serving), update)


def _observe(ctl: Controller, ws_obj: Mapping[str, Any], ws: Workspace, what: str) -> Any:
    """What ``node_readiness`` asked to see; a NodeClaim the Workspace does not own reads as absent."""
    if what == NODECLAIM:
        return tuple(
            read_own(ctl, ws_obj, NODECLAIM_API_VERSION, "NodeClaim", None, name)
            for name in nodeclaim_names(ws)
        )
    if what == NODES:
        return ctl.kube.list("v1", "Node")
    raise ValueError(f"no read for {what!r}")


# ---- when to reconcile -------------------------------------------------------------------------

_handled = Handled()


def _reconcile_workspace(body: Mapping[str, Any], logger: Logger = log, *, prune: bool) -> None:
    """Reconcile; one waiting for a node is looked at again after node_retry_seconds, a failure after
    RETRY_SECONDS (kopf retried its handlers so). ``logger``: kopf's for the object, which makes an
    error an Event on it."""
    key = key_of(body)
    if body.get("metadata", {}).get("deletionTimestamp"):
        _resync.cancel(key)  # going away: owner references and the delete handler clean up
        return
    current = essence(body)
    try:
        plan = reconcile(controller(), body, prune=prune)
    except Exception as err:
        logger.error("reconcile failed, retrying in %ss: %s", RETRY_SECONDS, err, exc_info=True)
        _resync.arm(key, RETRY_SECONDS)
        return
    if plan is None:  # deleted meanwhile
        return
    _handled.record(body, current)
    if plan.result is Result.WAITING:
        _resync.arm(key, plan.retry_after or RETRY_SECONDS, postpone=False)
    else:
        _resync.cancel(key)
    if plan.result is Result.INVALID:
        logger.error("the spec is refused: %s", plan.why)


def is_inference(body: Mapping[str, Any], **_: Any) -> bool:
    return bool(body.get("inference"))


# A Workspace waiting for a node, or whose reconcile failed, is reconciled as it is now (pruning, as the
# retried spec handler did).
_resync = resync_with_operator("inference", is_inference, functools.partial(_reconcile_workspace, prune=True))


# ---- kopf handlers -----------------------------------------------------------------------------


@kopf.on.startup()
def inference_watch_filters(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Only the controller's own Deployments and StatefulSets reach it (server-side label filter)."""
    managed = f"app.kubernetes.io/managed-by=kaito-tune,{GROUP}/workspace"
    for plural in ("deployments", "statefulsets"):
        settings.watching.label_selectors[("apps", "v1", plural)] = managed


@kopf.on.event(GROUP, "workspaces", when=is_inference)
def inference_workspace_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    """The listing at start and a new or changed essence (spec, labels, annotations) reconcile, pruning
    what another resource.count rendered; no kopf state is stored on the Workspace."""
    if type == "DELETED":
        if controller().settings.auto_provisioning:
            # Deleted before kopf added its finalizer, the delete handler never ran: the NodeClaim a
            # reconcile made is released here (a no-op when the handler did it).
            inference_workspace_delete(body)
        if _handled.forget(body):
            _resync.cancel(key_of(body))
            metrics.set_state(KIND, key_of(body), None)
    elif type is None or _handled.changed(body):
        _reconcile_workspace(body, logger, prune=True)


def _follow(body: Mapping[str, Any], logger: Logger) -> None:
    """A server Deployment, StatefulSet or pod changed: refresh its Workspace's status."""
    key = owner_key(body)
    if key is not None:
        reconcile_current(
            _resync, key, is_inference, functools.partial(_reconcile_workspace, prune=False), logger
        )


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
def inference_workload_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    if type is not None and type != "DELETED":
        _follow(body, logger)


@kopf.on.event("", "v1", "pods", labels={**MANAGED, "app.kubernetes.io/component": "inference"})
def inference_pod_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    """Pods carry failures (a bad pull) that the Deployment's counters do not show."""
    if type is not None and type != "DELETED":
        _follow(body, logger)


def inference_workspace_delete(body: kopf.Body, **_: Any) -> None:
    """Owner references remove the Service and the workload; the cluster-scoped NodeClaim goes here,
    after any reconcile in flight, and no reconcile queued behind it writes anything (``deleting``)."""
    ws = parse_workspace(body)[0]
    ctl = controller()
    claims = release_nodeclaims(nodeclaim_names(ws), None)
    with deleting(body):
        claims += surplus_claim_deletes(ctl, body, ws)
        carry_out(ctl, body, claims, {}, set())
    _resync.cancel(key_of(body))


def register(settings: Settings) -> None:
    """The handlers whose registration depends on the settings: with auto-provisioning, a delete
    handler releases the NodeClaims (kopf guards it with a finalizer); without, there is none, so no
    finalizer and no kopf state on the Workspace."""
    if settings.auto_provisioning:
        kopf.on.delete(GROUP, "workspaces", when=is_inference)(inference_workspace_delete)
