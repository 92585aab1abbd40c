"""kopf handlers of tuning Workspaces: read, call the pure reconcile (tuning_controller.tuning_reconcile),
carry its plan out, record.

A Workspace is reconciled when it appears (the listing at start included), when its spec, labels or
annotations change, and on every event of the Jobs, pods and NodeClaims the controller labelled
(``kaito.sh/workspace``), so status follows Job state without polling. What no event announces (a lost
Job event, an own node labelled later) the resync (tuning_controller.resync) looks at again. kopf
keeps no state on the Workspace (no annotations, no finalizer without auto-provisioning): a new
Workspace costs its three writes (data Job, ConfigMap, status) and nothing more.

Names are deterministic and creates adopt what the Workspace already owns, so a controller killed
mid-reconcile and restarted makes no duplicates; a name held by an object the Workspace does not own is
left alone and reported in its status (NameTaken), and the reconcile looks again every
node_retry_seconds. Status writes are conditional on the Workspace's resourceVersion,
retried on conflict, and skipped when nothing changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from contract.problems import Problem
from contract.workspace import GROUP, parse_workspace
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
    has_owner,
    key_of,
    owner_key,
    read_own,
    reconcile_current,
    reconciling,
    resync_with_operator,
    settings,
    surplus_claim_deletes,
    write_status,
)
from tuning_controller.kube import KubeError
from tuning_controller.plan import Plan, Read, Result, Taken
from tuning_controller.render.job import (
    WORKLOAD_API_VERSION,
    data_job_name,
    push_job_name,
    training_job_name,
    uses_jobset,
)
from tuning_controller.render.jobset import JOBSET_API_VERSION, JOBSET_UID_LABEL
from tuning_controller.render.nodeclaim import NODECLAIM_API_VERSION, nodeclaim_names
from tuning_controller.run_tags import adapter_tag_due, set_adapter_tag, tracking_patch
from tuning_controller.settings import Settings
from tuning_controller.tuning_reconcile import (
    DATA_JOB,
    DATA_PODS,
    JOB,
    JOB_PODS,
    NODECLAIM,
    NODES,
    PUSH_JOB,
    PUSH_PODS,
    WORKLOAD,
    Target,
    decide,
    release_writes,
    resync_after,
    tuning_target,
    user_config_of,
)

log = logging.getLogger("kaito-tune.tuning")
KIND = st.KIND
ROUNDS = 12  # reads and adoptions of one reconcile; each round reads one object or adopts one namesake


# ---- the shell around the pure reconcile -------------------------------------------------------


def reconcile(
    ctl: Controller, ws_obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> Plan | None:
    """Bring the Workspace's objects and status in line with its spec; returns the plan carried out
    (None when the Workspace's delete handler already ran)."""
    key = key_of(ws_obj)
    with reconciling(ws_obj) as alive:
        if not alive:
            return None
        with metrics.reconciling(KIND) as outcome:
            log.debug("reconcile %s", key)
            plan = _reconcile(ctl, ws_obj, old)
            outcome["result"] = plan.result
            metrics.set_state(KIND, key, st.state_for(plan.phase or ""))
            return plan


def _reconcile(ctl: Controller, ws_obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> Plan:
    target = tuning_target(ws_obj, old, _user_config(ctl, ws_obj), ctl.settings, c.now_rfc3339())
    if isinstance(target, Plan):
        if target.status:
            write_status(ctl, ws_obj, target.status)
        return target
    if old is not None:  # a smaller resource.count leaves NodeClaims its names no longer reach
        carry_out(ctl, ws_obj, surplus_claim_deletes(ctl, ws_obj, target.ws), {}, set())
    try:
        step = _carry(ctl, target)
    except NameTaken as taken:
        # Blocked until the name is free: the Workspace's GPU node must not bill meanwhile (a new one is
        # requested once the training can start).
        carry_out(ctl, ws_obj, tuple(release_writes(target.ws, ctl.settings)), {}, set())
        retry = float(ctl.settings.node_retry_seconds)
        step = st.taken_plan(KIND, ws_obj, taken.taken, target.stamp, retry)
    if step.status:
        write_status(ctl, ws_obj, step.status)
    return step


def _carry(ctl: Controller, target: Target) -> Plan:
    """Decide, reading what the decision asks for, and carry the plan out (its status not written)."""
    seen: dict[str, Any] = {}
    done: set[tuple[str, str, str | None, str]] = set()
    for _ in range(ROUNDS):
        step = decide(target, seen)
        if isinstance(step, Read):
            seen[step.what] = _observe(ctl, target, seen, step.what)
        elif carry_out(ctl, target.ws_obj, step.writes, seen, done):
            return step
    raise RuntimeError(f"no decision for {key_of(target.ws_obj)} after {ROUNDS} reads and adoptions")


def _user_config(ctl: Controller, ws_obj: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[Problem]]:
    name = (ws_obj.get("tuning") or {}).get("config")
    if not name:
        return None, []
    namespace = ws_obj["metadata"]["namespace"]
    return user_config_of(name, namespace, ctl.kube.get("v1", "ConfigMap", namespace, name))


def _pods(ctl: Controller, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Job's pods: labelled with its uid and controlled by it. A pod that only carries the label was
    made by someone else, and its termination message must not set the outcome (an adapter digest).
    A JobSet's: those of its child Jobs, which carry its uid as a label (JobSet's controller sets it)."""
    uid = job["metadata"]["uid"]
    if job.get("kind") == "JobSet":
        selector = f"{JOBSET_UID_LABEL}={uid}"
        found = ctl.kube.list("v1", "Pod", job["metadata"]["namespace"], label_selector=selector)
        return [pod for pod in found if _controller_kind(pod) == "Job"]
    selector = f"batch.kubernetes.io/controller-uid={uid}"
    found = ctl.kube.list("v1", "Pod", job["metadata"]["namespace"], label_selector=selector)
    return [pod for pod in found if has_owner(pod, uid, controller=True)]


def _controller_kind(obj: Mapping[str, Any]) -> str:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((ref.get("kind", "") for ref in refs if ref.get("controller")), "")


def _training(ctl: Controller, t: Target) -> dict[str, Any] | Taken | None:
    """The training Job, or the JobSet that runs a multi-node training where JobSet runs."""
    api_version, kind = ("batch/v1", "Job")
    if uses_jobset(t.ws, ctl.settings):
        api_version, kind = JOBSET_API_VERSION, "JobSet"
    return read_own(ctl, t.ws_obj, api_version, kind, t.ws.namespace, training_job_name(t.ws), True)


def _observe(ctl: Controller, t: Target, seen: Mapping[str, Any], what: str) -> Any:
    """Read what the reconcile asked to see (``reconcile``'s observation keys); an object of the name that
    the Workspace does not own is seen as ``Taken``."""
    namespace, ws_obj = t.ws.namespace, t.ws_obj
    reads: dict[str, Callable[[], Any]] = {
        DATA_JOB: lambda: read_own(ctl, ws_obj, "batch/v1", "Job", namespace, data_job_name(t.ws), True),
        DATA_PODS: lambda: _pods(ctl, seen[DATA_JOB]),
        JOB: lambda: _training(ctl, t),
        JOB_PODS: lambda: _pods(ctl, seen[JOB]),
        PUSH_JOB: lambda: read_own(ctl, ws_obj, "batch/v1", "Job", namespace, push_job_name(t.ws), True),
        PUSH_PODS: lambda: _pods(ctl, seen[PUSH_JOB]),
        NODECLAIM: lambda: tuple(
            read_own(ctl, ws_obj, NODECLAIM_API_VERSION, "NodeClaim", None, name, True)
            for name in nodeclaim_names(t.ws)
        ),
        NODES: lambda: ctl.kube.list("v1", "Node"),
        WORKLOAD: lambda: _workload(ctl, seen[JOB]),
    }
    return reads[what]()


def _workload(ctl: Controller, job: Mapping[str, Any]) -> dict[str, Any] | None:
    """Kueue's Workload for the Job (labelled with the Job's uid); None without one, or without Kueue."""
    selector = f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}"
    try:
        found = ctl.kube.list(WORKLOAD_API_VERSION, "Workload", job["metadata"]["namespace"], selector)
    except KubeError as err:
        if err.not_found:  # Kueue's CRD is not installed
            return None
        raise
    return found[0] if found else None


# ---- when no event comes -----------------------------------------------------------------------


_handled = Handled()


def _reconcile_workspace(body: Mapping[str, Any], logger: Logger = log) -> None:
    """Reconcile (with the last handled essence as ``old`` when it changed since) and schedule what no
    event will bring; a failure is retried after RETRY_SECONDS, as kopf retried a failed handler.
    ``logger``: kopf's for the object, which makes a warning or an error an Event on it."""
    key = key_of(body)
    if body.get("metadata", {}).get("deletionTimestamp"):
        _resync.cancel(key)  # going away: owner references and the delete handler clean up
        return
    current, before = essence(body), _handled.last(body)
    ctl = controller()
    try:
        plan = reconcile(ctl, body, before if before != current else None)
    except Exception as err:
        logger.error("reconcile failed, retrying in %ss: %s", RETRY_SECONDS, err, exc_info=True)
        _resync.arm(key, RETRY_SECONDS)
        return
    if plan is None:
        return
    _handled.record(body, current)
    if plan.result is Result.WAITING and plan.retry_after:
        _resync.arm(key, plan.retry_after, postpone=False)
    else:
        _schedule(key, plan.phase, ctl.settings)
    if plan.result is Result.INVALID:
        logger.error("the spec is refused: %s", plan.why)


def is_tuning(body: Mapping[str, Any], **_: Any) -> bool:
    return bool(body.get("tuning"))


_resync = resync_with_operator("tuning", is_tuning, _reconcile_workspace)


def _stored_phase(body: Mapping[str, Any]) -> str | None:
    return ((body.get("status") or {}).get("tuning") or {}).get("phase")


def _schedule(key: str, phase: str | None, settings: Settings, *, blocked: bool = False) -> None:
    after = resync_after(phase, settings, blocked=blocked)
    if after is None:
        _resync.cancel(key)
    else:
        _resync.arm(key, after[0], postpone=after[1])


# ---- kopf handlers -----------------------------------------------------------------------------


@kopf.on.event(GROUP, "workspaces", when=is_tuning)
def workspace_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    """Every event of a tuning Workspace: the listing at start and a new or changed essence reconcile;
    any other change (its status) restarts its resync wait, as kopf's idle timers did. No kopf state
    is stored on the Workspace: its own status says what happened. A tracked revision whose adapter
    was pushed gets its digest into the MLflow run."""
    key = key_of(body)
    if type == "DELETED":
        if settings().auto_provisioning:
            # Deleted before kopf added its finalizer, the delete handler never ran: the NodeClaim a
            # reconcile made is released here (a no-op when the handler did it).
            workspace_delete(body)
        if _handled.forget(body):
            _resync.cancel(key)
            metrics.set_state(KIND, key, None)
    else:
        if type is None or _handled.changed(body):
            _reconcile_workspace(body, logger)
        else:
            _schedule(key, _stored_phase(body), settings(), blocked=st.name_taken(body))
        _tag_adapter(body, logger)


def _tag_adapter(body: Mapping[str, Any], logger: Logger) -> None:
    """A tracked revision's adapter was pushed (the status write that said so is this event): put its
    image@digest into the MLflow run (``tuning_controller.run_tags``), once, and record the outcome."""
    tag = adapter_tag_due((body.get("status") or {}).get("tuning") or {})
    if tag is None:
        return
    error = None
    try:
        set_adapter_tag(tag)
    except RuntimeError as err:
        error = str(err)
        logger.warning("MLflow run %s: the adapter's digest was not logged: %s", tag.run_id, error)
    meta = body["metadata"]
    try:
        controller().kube.merge_patch(
            settings().workspace_api_version,
            "Workspace",
            meta["namespace"],
            meta["name"],
            tracking_patch(body, tag, error),
            subresource="status",
        )
    except KubeError as err:
        if not err.conflict:  # a conflict: a newer Workspace event decides again
            raise


def _live_tuning(ws: Mapping[str, Any]) -> bool:
    return bool(ws.get("tuning")) and not ws["metadata"].get("deletionTimestamp")


def _follow(body: Mapping[str, Any], logger: Logger) -> None:
    """A Job, pod or NodeClaim of a Workspace changed: reconcile that Workspace."""
    key = owner_key(body)
    if key is not None:
        reconcile_current(_resync, key, _live_tuning, _reconcile_workspace, logger)


def _pod_has_news(body: Mapping[str, Any], **_: Any) -> bool:
    """A pod waiting for a node changes nothing a Workspace shows; skip it cheaply. A Pending pod whose
    init containers run is news: fetch-data, fetch-model and (one node) train are init containers, and
    each start or end moves the phase."""
    status = body.get("status") or {}
    if status.get("phase") in ("Running", "Succeeded", "Failed"):
        return True
    return any(
        {"running", "terminated"} & (cs.get("state") or {}).keys()
        for cs in status.get("initContainerStatuses") or []
    )


def _job_has_news(body: Mapping[str, Any], **_: Any) -> bool:
    """Only a finished or (un)suspended Job changes what status shows; running pods report through
    pod events. Counters the Job controller bumps while pods start are skipped."""
    conds = (body.get("status") or {}).get("conditions") or []
    return bool(conds) or bool((body.get("spec") or {}).get("suspend"))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED, when=_job_has_news)
def tuning_job_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    if type is not None:  # None: the initial listing; resume handlers cover it
        _follow(body, logger)


def tuning_jobset_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    """A multi-node training's JobSet ended, restarted its group or was (un)suspended; registered where
    the controller runs them (``register``)."""
    if type is not None:
        _follow(body, logger)


@kopf.on.event("", "v1", "pods", labels=MANAGED, when=_pod_has_news)
def tuning_pod_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    if type is not None:
        _follow(body, logger)


@kopf.on.event("karpenter.sh", "v1", "nodeclaims", labels=MANAGED)
def tuning_nodeclaim_event(body: kopf.Body, type: str | None, logger: Logger, **_: Any) -> None:
    if type is not None and type != "DELETED":
        _follow(body, logger)


def workspace_delete(body: kopf.Body, **_: Any) -> None:
    """Owner references remove Jobs, ConfigMap, RBAC and the claim; the cluster-scoped NodeClaim is
    deleted here."""
    ws = parse_workspace(body)[0]
    ctl = controller()
    with deleting(body):  # after any reconcile in flight, and before any queued one (which then stops)
        releases = (*release_writes(ws, ctl.settings), *surplus_claim_deletes(ctl, body, ws))
        carry_out(ctl, body, releases, {}, set())
    _resync.cancel(key_of(body))


def register(settings: Settings) -> None:
    """The handlers whose registration depends on the settings: with auto-provisioning, a delete
    handler releases the NodeClaim (kopf guards it with a finalizer). Without, nothing is left to
    release: no finalizer and no kopf state on the Workspace, so one never waits for the controller."""
    if settings.auto_provisioning:
        kopf.on.delete(GROUP, "workspaces", when=is_tuning)(workspace_delete)
    if settings.multi_node_workload == "jobset":
        group, version = JOBSET_API_VERSION.split("/")
        kopf.on.event(group, version, "jobsets", labels=MANAGED, when=_job_has_news)(tuning_jobset_event)
