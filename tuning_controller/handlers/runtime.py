"""What the tuning and inference handlers share: the process's Controller (client, settings, Events), a
lock per Workspace with the uids whose delete handler ran, the label filter of the controller's children,
and the plumbing that carries a ``Plan`` out (create or adopt, apply, replace, delete, the status write).

Every write touches only what the Workspace owns: an object with an owner reference to its uid (what
every namespaced object rendered for it carries), or a NodeClaim with its uid annotation
(``render.nodeclaim.claimed_by``). A namesake it does not own reads as absent, is never adopted, applied
over or deleted; a create or apply that meets one raises ``NameTaken``, which the handlers turn into a
status that names it (``status.taken_plan``).

The settings are read once, by ``tuning_controller.operator``, and handed to ``use``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import kopf

from contract.workspace import Workspace
from tuning_controller import status as st
from tuning_controller.kube import Kube, KubeError, retry_on_conflict
from tuning_controller.nodes import release_nodeclaims
from tuning_controller.plan import StatusUpdate, Taken, Verb, Write
from tuning_controller.render.meta import WORKSPACE_LABEL
from tuning_controller.render.nodeclaim import (
    NAMESPACE_LABEL,
    NODECLAIM_API_VERSION,
    OWNER_ANNOTATION,
    claimed_by,
    nodeclaim_selector,
    surplus_nodeclaims,
)
from tuning_controller.resync import Resync
from tuning_controller.settings import Settings

log = logging.getLogger("kaito-tune")

# The controller's Jobs, pods, NodeClaims and servers (kopf's label filter; the watches are also
# filtered server-side, operator.configure).
Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf hands a handler
MANAGED: Mapping[str, Any] = {"app.kubernetes.io/managed-by": "kaito-tune", WORKSPACE_LABEL: kopf.PRESENT}
# How many deleted Workspaces' uids are remembered: a reconcile that read a Workspace just before its
# deletion comes within seconds, so the oldest of this many can be forgotten.
DELETED_KEPT = 4096


@dataclass
class Controller:
    """What a reconcile needs besides the Workspace: the client, the settings, an event poster."""

    kube: Kube
    settings: Settings
    post_event: Callable[[Mapping[str, Any], str, str, str], None]


class _Lock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # threads holding or waiting for it


_settings: Settings | None = None
_controller: Controller | None = None
_locks: dict[str, _Lock] = {}
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


@contextmanager
def lock(key: str) -> Iterator[None]:
    """One Workspace reconciles in one thread at a time; different Workspaces in parallel. A key's lock
    is dropped once no thread holds or waits for it, so the locks kept are the Workspaces busy now."""
    with _guard:
        entry = _locks.setdefault(key, _Lock())
        entry.users += 1
    try:
        with entry.lock:
            yield
    finally:
        with _guard:
            entry.users -= 1
            if entry.users == 0:
                del _locks[key]


def key_of(ws_obj: Mapping[str, Any]) -> str:
    return f"{ws_obj['metadata']['namespace']}/{ws_obj['metadata']['name']}"


class Tombstones:
    """The uids of the Workspaces whose delete handler ran, the newest ``size`` of them."""

    def __init__(self, size: int = DELETED_KEPT) -> None:
        self._size = size
        self._uids: OrderedDict[str, None] = OrderedDict()
        self._guard = threading.Lock()

    def add(self, uid: str) -> None:
        with self._guard:
            self._uids[uid] = None
            self._uids.move_to_end(uid)
            while len(self._uids) > self._size:
                self._uids.popitem(last=False)

    def __contains__(self, uid: object) -> bool:
        with self._guard:
            return uid in self._uids

    def __len__(self) -> int:
        return len(self._uids)


_deleted = Tombstones()


@contextmanager
def reconciling(ws_obj: Mapping[str, Any]) -> Iterator[bool]:
    """Hold the Workspace's lock for a reconcile; yields False when its delete handler ran already (a
    reconcile that read the Workspace just before the deletion, and waited for the lock): that one must
    write nothing, or it would bring back a NodeClaim the delete handler released."""
    with lock(key_of(ws_obj)):
        yield ws_obj["metadata"].get("uid") not in _deleted


@contextmanager
def deleting(ws_obj: Mapping[str, Any]) -> Iterator[None]:
    """Hold the Workspace's lock for its delete handler: after any reconcile in flight, and before any
    queued one, which then stops (``reconciling`` yields False)."""
    with lock(key_of(ws_obj)):
        _deleted.add(ws_obj["metadata"]["uid"])
        yield


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


class NameTaken(Exception):
    """A write met a namesake the Workspace does not own; nothing was written to it."""

    def __init__(self, taken: Taken):
        super().__init__(f"{taken.kind} {taken.where} exists and is not owned by the Workspace")
        self.taken = taken


def has_owner(found: Mapping[str, Any], uid: str, *, controller: bool = False) -> bool:
    """Whether ``found`` has an owner reference to ``uid`` (``controller``: the controlling one)."""
    refs = (found.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(
        ref.get("uid") == uid and (ref.get("controller") or not controller) for ref in refs
    )


def owned(found: Mapping[str, Any], ws_obj: Mapping[str, Any]) -> bool:
    """Whether ``found`` (as read) is the Workspace's: an owner reference to its uid; for a NodeClaim,
    its uid annotation (``claimed_by``)."""
    meta = ws_obj["metadata"]
    uid = meta.get("uid") or ""
    if found.get("kind") == "NodeClaim":
        return claimed_by(found, meta.get("namespace") or "", meta["name"], uid)
    return has_owner(found, uid)


def owner_of(found: Mapping[str, Any]) -> str:
    """Who owns ``found`` instead, in words ("" for nobody)."""
    meta = found.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref:
        return f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    uid = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
    return f"the Workspace with uid {uid}" if uid else ""


def _guarded(obj: Mapping[str, Any]) -> bool:
    """Whether a rendered object must be the Workspace's to be adopted or applied over: what is rendered
    for it alone (an owner reference; a NodeClaim). A shared one (the namespace's model cache claim) is
    not."""
    return obj["kind"] == "NodeClaim" or bool(obj["metadata"].get("ownerReferences"))


def _get(ctl: Controller, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    meta = obj["metadata"]
    return ctl.kube.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


def _claim(found: Mapping[str, Any], obj: Mapping[str, Any], ws_obj: Mapping[str, Any]) -> None:
    """Raise NameTaken when ``found``, the namesake of the rendered ``obj``, is not the Workspace's."""
    if _guarded(obj) and not owned(found, ws_obj):
        meta = obj["metadata"]
        raise NameTaken(Taken(obj["kind"], meta.get("namespace"), meta["name"], owner_of(found)))


def read_own(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str,
    report: bool = False,
) -> dict[str, Any] | Taken | None:
    """The object when the Workspace owns it; None when there is none. One it does not own is None too
    (a write to that name then raises NameTaken), or with ``report`` the ``Taken`` that names it."""
    found = ctl.kube.get(api_version, kind, namespace, name)
    if found is None or owned(found, ws_obj):
        return found
    return Taken(kind, namespace, name, owner_of(found)) if report else None


def create_or_get(
    ctl: Controller, obj: Mapping[str, Any], ws_obj: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """(the object, whether it existed already): created, or when the name exists (a restart, a race)
    the existing object, adopted as it is when the Workspace owns it; NameTaken when it does not."""
    created = _create_new(ctl, obj)
    if created is not None:
        return created, False
    found = _get(ctl, obj)
    if found is None:  # deleted in between: try once more
        return ctl.kube.create(obj), False
    _claim(found, obj, ws_obj)
    return found, True


def _create_new(ctl: Controller, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object created; None when its name exists (what then is each verb's to decide)."""
    try:
        return ctl.kube.create(obj)
    except KubeError as err:
        if not err.already_exists:
            raise
    return None


def _create_or_apply(ctl: Controller, obj: Mapping[str, Any], ws_obj: Mapping[str, Any]) -> dict[str, Any]:
    return _create_new(ctl, obj) or _apply(ctl, obj, ws_obj)


def _apply(ctl: Controller, obj: Mapping[str, Any], ws_obj: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply (forced: the controller owns what it renders) over an own object only."""
    if _guarded(obj):
        found = _get(ctl, obj)
        if found is not None:
            _claim(found, obj, ws_obj)
    return ctl.kube.apply(obj)


def _delete(ctl: Controller, obj: Mapping[str, Any], ws_obj: Mapping[str, Any], *, exact: bool) -> bool:
    """Delete what the Workspace owns; ``exact``: this very object as read (its uid), and wait until it
    is gone (finalizers done). By name, a namesake it does not own is left alone (False)."""
    meta = obj["metadata"]
    where = (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
    if exact:
        uid = meta["uid"]
    else:
        found = ctl.kube.get(*where)
        if found is None:
            return False
        if not owned(found, ws_obj):
            log.warning("left %s %s alone: it is not the Workspace %s's", where[1], where[3], key_of(ws_obj))
            return False
        uid = found["metadata"]["uid"]
    try:
        deleted = ctl.kube.delete(*where, propagation="Background", uid=uid)
    except KubeError as err:
        if not err.conflict:  # 409: the uid precondition failed, a namesake took the name meanwhile
            raise
        return False
    if exact:
        ctl.kube.wait_gone(*where, uid=uid, timeout=60)
    return deleted


def _write(
    ctl: Controller, ws_obj: Mapping[str, Any], write: Write
) -> tuple[dict[str, Any] | None, bool, bool]:
    """(what the API server returned, whether a CREATE adopted a namesake, whether the write's Event is
    due)."""
    if write.verb is Verb.CREATE:
        found, adopted = create_or_get(ctl, write.obj, ws_obj)
        return found, adopted, True
    if write.verb is Verb.CREATE_OR_APPLY:
        return _create_or_apply(ctl, write.obj, ws_obj), False, True
    if write.verb is Verb.CREATE_UNREAD:  # a namesake stays unread (the Verb says why that is safe)
        return None, False, _create_new(ctl, write.obj) is not None
    if write.verb is Verb.APPLY:
        return _apply(ctl, write.obj, ws_obj), False, True
    deleted = _delete(ctl, write.obj, ws_obj, exact=write.verb is Verb.REPLACE)
    return None, False, deleted or write.verb is Verb.REPLACE


def _identity(write: Write) -> tuple[str, str, str | None, str]:
    meta = write.obj["metadata"]
    return write.verb, write.obj["kind"], meta.get("namespace"), meta["name"]


def surplus_claim_deletes(ctl: Controller, ws_obj: Mapping[str, Any], ws: Workspace) -> tuple[Write, ...]:
    """Deletes of the Workspace's NodeClaims beyond its resource.count (``surplus_nodeclaims``): read by
    label, since a count made smaller no longer names them. None without auto-provisioning (the
    controller made no claims) or without Karpenter's CRD."""
    if not ctl.settings.auto_provisioning:
        return ()
    try:
        found = ctl.kube.list(NODECLAIM_API_VERSION, "NodeClaim", None, nodeclaim_selector(ws))
    except KubeError as err:
        if err.not_found:
            return ()
        raise
    count = ws.resource.count if ws.resource else 1
    surplus = surplus_nodeclaims(ws, ws_obj["metadata"].get("uid", ""), found)
    return release_nodeclaims(surplus, f"resource.count is {count} now")


def carry_out(
    ctl: Controller,
    ws_obj: Mapping[str, Any],
    writes: tuple[Write, ...],
    seen: MutableMapping[str, Any],
    done: set[tuple[str, str, str | None, str]],
) -> bool:
    """Make ``writes`` in order, recording each result under its ``seen_as``; True when all are made.

    False when a CREATE of an observed object found an own namesake (after a restart): the rest is not
    made, ``seen`` now holds the namesake, and the caller decides again. ``done`` holds the writes
    without an observation already made, which a second decision repeats and this skips. NameTaken when
    a create or apply meets a namesake the Workspace does not own: the rest is not made."""
    for write in writes:
        if not write.seen_as and _identity(write) in done:
            continue
        result, adopted, announce = _write(ctl, ws_obj, write)
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


def owner_key(body: Mapping[str, Any]) -> str | None:
    """namespace/name of the Workspace whose child ``body`` is: its workspace label, in its own namespace
    (a cluster-scoped NodeClaim: its namespace label); None for none."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    name, namespace = labels.get(WORKSPACE_LABEL), meta.get("namespace") or labels.get(NAMESPACE_LABEL)
    return f"{namespace}/{name}" if name and namespace else None


def reconcile_current(
    resync: Resync,
    key: str,
    wanted: Callable[[Mapping[str, Any]], bool],
    reconcile: Callable[[dict[str, Any]], None],
    logger: Logger = log,
) -> None:
    """Reconcile the Workspace ``key`` as it is now, when it exists and is ``wanted``. When it cannot be
    read (an API error, or urllib3's when the connection drops), its resync comes after RETRY_SECONDS
    instead: kopf does not retry event handlers, and a resync must not end with one failed read."""
    ctl = controller()
    namespace, name = key.split("/", 1)
    try:
        ws = ctl.kube.get(ctl.settings.workspace_api_version, "Workspace", namespace, name)
    except Exception as err:
        logger.warning("reading Workspace %s failed, again in %ss: %s", key, RETRY_SECONDS, err)
        resync.arm(key, RETRY_SECONDS, postpone=False)
        return
    if ws is not None and wanted(ws):
        reconcile(ws)


def resync_with_operator(
    name: str, wanted: Callable[[Mapping[str, Any]], bool], reconcile: Callable[[dict[str, Any]], None]
) -> Resync:
    """A Resync that reconciles a due Workspace as it is now (``reconcile_current``), starting with the
    operator and stopping at its cleanup."""
    resync = Resync(lambda key: reconcile_current(resync, key, wanted, reconcile))
    kopf.on.startup(id=f"start-{name}-resync")(lambda **_: resync.start())
    kopf.on.cleanup(id=f"stop-{name}-resync")(lambda **_: resync.stop())
    return resync
