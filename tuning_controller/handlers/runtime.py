"""What the tuning and inference handlers share: the process's Controller (client, settings, Events), a
lock per Workspace, the label filter of the controller's children, and the plumbing that carries a
``Plan`` out (create or adopt, apply, replace, delete, the status write).

The settings are read once, by ``tuning_controller.operator``, and handed to ``use``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from tuning_controller import status as st
from tuning_controller.kube import Kube, KubeError, retry_on_conflict
from tuning_controller.plan import StatusUpdate, Verb, Write
from tuning_controller.render.meta import WORKSPACE_LABEL
from tuning_controller.resync import Resync
from tuning_controller.settings import Settings

log = logging.getLogger("kaito-tune")

# The controller's Jobs, pods, NodeClaims and servers (kopf's label filter; the watches are also
# filtered server-side, operator.configure).
Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf hands a handler
MANAGED: Mapping[str, Any] = {"app.kubernetes.io/managed-by": "kaito-tune", WORKSPACE_LABEL: kopf.PRESENT}


@dataclass
class Controller:
    """What a reconcile needs besides the Workspace: the client, the settings, an event poster."""

    kube: Kube
    settings: Settings
    post_event: Callable[[Mapping[str, Any], str, str, str], None]


_settings: Settings | None = None
_controller: Controller | None = None
_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def use(settings: Settings) -> None:
    """The process's settings (read once from the environment, by the operator's main)."""
    global _settings
    _settings = settings


def settings() -> Settings:
    if _settings is None:
        raise RuntimeError("the controller's settings are not set: tuning_controller.operator sets them")
    return _settings


def controller() -> Controller:
    """The process's Controller, built on first use (handler threads race for it: one wins)."""
    global _controller
    with _guard:
        if _controller is None:
            kube = Kube.from_environment(os.environ.get("KUBECONFIG") or None)
            _controller = Controller(kube, settings(), _kopf_event)
        return _controller


def _kopf_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    # kopf reads only the object's identity; it cuts the message to the Event API's bound.
    kopf.event(cast(kopf.Body, obj), type=type_, reason=reason, message=message)


def lock(key: str) -> threading.Lock:
    """One Workspace reconciles in one thread at a time; different Workspaces in parallel."""
    with _guard:
        return _locks.setdefault(key, threading.Lock())


def key_of(ws_obj: Mapping[str, Any]) -> str:
    return f"{ws_obj['metadata']['namespace']}/{ws_obj['metadata']['name']}"


# ---- what was handled ---------------------------------------------------------------------------

RETRY_SECONDS = 10  # a reconcile that failed (an API error) runs again after this long, as kopf retries
_SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def essence(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a change of means work (kopf's essence): the object without its status and without the
    metadata the server keeps (resourceVersion, generation, managedFields...), labels and annotations
    kept. Shaped as a Workspace, so it serves as the ``old`` of an update."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _SERVER_ANNOTATIONS}
    kept = {"name": meta.get("name"), "namespace": meta.get("namespace")}
    kept |= {"labels": dict(meta.get("labels") or {}), "annotations": annotations}
    return {**{k: v for k, v in body.items() if k not in ("metadata", "status")}, "metadata": kept}


class Handled:
    """The essence each Workspace was last reconciled for, with its uid: kopf's diff-base, kept in
    memory instead of an annotation that costs a write per change (and a finalizer's worth of kopf
    state). A restart reconciles every Workspace from the listing; a change made while the controller
    was down is then not compared with the old spec, which the API server's CEL rules did already (the
    immutable fields)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, dict[str, Any]]] = {}

    def last(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The essence of this very Workspace (not a deleted namesake) last reconciled."""
        found = self._last.get(key_of(body))
        return found[1] if found and found[0] == body["metadata"].get("uid") else None

    def changed(self, body: Mapping[str, Any]) -> bool:
        return essence(body) != self.last(body)

    def record(self, body: Mapping[str, Any], handled: dict[str, Any]) -> None:
        self._last[key_of(body)] = (body["metadata"].get("uid", ""), handled)

    def forget(self, body: Mapping[str, Any]) -> bool:
        """Forget a deleted Workspace; False when the name belongs to a newer namesake already."""
        key = key_of(body)
        if self._last.get(key, ("", {}))[0] not in ("", body["metadata"].get("uid")):
            return False
        self._last.pop(key, None)
        return True


def warm_up() -> None:
    """Build the client and load the catalogs before the first Workspace: a burst of new Workspaces
    would otherwise wait behind the first one's imports and YAML parsing (the GIL is held)."""
    from presets.catalog import models, skus

    controller()
    models()
    skus()


# ---- carrying a plan out -----------------------------------------------------------------------


def create_or_get(ctl: Controller, obj: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the object, whether it existed already): created, or when the name exists (a restart, a race)
    the existing object, adopted as it is."""
    try:
        return ctl.kube.create(obj), False
    except KubeError as err:
        if not err.already_exists:
            raise
    meta = obj["metadata"]
    found = ctl.kube.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
    if found is None:  # deleted in between: try once more
        return ctl.kube.create(obj), False
    return found, True


def _create_or_apply(ctl: Controller, obj: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return ctl.kube.create(obj)
    except KubeError as err:
        if not err.already_exists:
            raise
    return ctl.kube.apply(obj)


def _delete(ctl: Controller, obj: Mapping[str, Any], *, exact: bool) -> bool:
    """Delete; ``exact``: this very object (its uid), and wait until it is gone (finalizers done)."""
    meta = obj["metadata"]
    where = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
    uid = meta["uid"] if exact else None
    deleted = ctl.kube.delete(*where, propagation="Background", uid=uid)
    if exact:
        ctl.kube.wait_gone(*where, uid=meta["uid"], timeout=60)
    return deleted


def _write(ctl: Controller, write: Write) -> tuple[dict[str, Any] | None, bool, bool]:
    """(what the API server returned, whether a CREATE adopted a namesake, whether the write's Event is
    due)."""
    if write.verb is Verb.CREATE:
        found, adopted = create_or_get(ctl, write.obj)
        return found, adopted, True
    if write.verb is Verb.CREATE_OR_APPLY:
        return _create_or_apply(ctl, write.obj), False, True
    if write.verb is Verb.APPLY:
        return ctl.kube.apply(write.obj), False, True
    deleted = _delete(ctl, write.obj, exact=write.verb is Verb.REPLACE)
    return None, False, deleted or write.verb is Verb.REPLACE


def _identity(write: Write) -> tuple[str, str, str | None, str]:
    meta = write.obj["metadata"]
    return write.verb, write.obj["kind"], meta.get("namespace"), meta["name"]


def carry_out(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    writes: tuple[Write, ...],
    seen: MutableMapping[str, Any],
    done: set[tuple[str, str, str | None, str]],
) -> bool:
    """Make ``writes`` in order, recording each result under its ``seen_as``; True when all are made.

    False when a CREATE of an observed object found a namesake (after a restart): the rest is not made,
    ``seen`` now holds the namesake, and the caller decides again. ``done`` holds the writes without an
    observation already made, which a second decision repeats and this skips."""
    for write in writes:
        if not write.seen_as and _identity(write) in done:
            continue
        result, adopted, announce = _write(ctl, write)
        if write.seen_as:
            seen[write.seen_as] = result
        else:
            done.add(_identity(write))
        if write.event and announce:
            ctl.post_event(ws_obj, write.event.type, write.event.reason, write.event.message)
        if adopted and write.seen_as:
            return False
    return True


def write_status(ctl: Controller, ws_obj: Mapping[str, Any], update: StatusUpdate) -> dict[str, Any]:
    """Write ``update`` (``status.status_patch``) conditional on the resourceVersion, re-read and
    re-applied on conflict; post its announcement with the write that changed the phase. Returns the
    Workspace."""
    meta = ws_obj["metadata"]
    api_version = ctl.settings.workspace_api_version
    current: Mapping[str, Any] | None = ws_obj

    def attempt() -> dict[str, Any]:
        nonlocal current
        obj = current or ctl.kube.get(api_version, "Workspace", meta["namespace"], meta["name"])
        current = None  # a retry re-reads
        if obj is None:
            return {}
        patch = st.status_patch(obj, update)
        if patch is None:
            return dict(obj)
        written = ctl.kube.merge_patch(
            api_version, "Workspace", meta["namespace"], meta["name"], patch, subresource="status"
        )
        event = st.announcement(obj, update)
        if event:
            ctl.post_event(obj, event.type, event.reason, event.message)
        return written

    return retry_on_conflict(attempt)


def resync_with_operator(
    name: str, wanted: Callable[[Mapping[str, Any]], bool], reconcile: Callable[[dict[str, Any]], None]
) -> Resync:
    """A Resync that reconciles a due Workspace as it is now (when it still exists and is ``wanted``),
    starting with the operator and stopping at its cleanup. A failed read is tried again after
    RETRY_SECONDS: an API blip must not end the resyncs."""

    def due(key: str) -> None:
        ctl = controller()
        namespace, ws_name = key.split("/", 1)
        try:
            ws = ctl.kube.get(ctl.settings.workspace_api_version, "Workspace", namespace, ws_name)
        except KubeError as err:
            log.warning("resync of %s failed, retrying in %ss: %s", key, RETRY_SECONDS, err)
            resync.arm(key, RETRY_SECONDS)
            return
        if ws is not None and wanted(ws):
            reconcile(ws)

    resync = Resync(due)
    kopf.on.startup(id=f"start-{name}-resync")(lambda **_: resync.start())
    kopf.on.cleanup(id=f"stop-{name}-resync")(lambda **_: resync.stop())
    return resync
