"""Workspace status from Job and pod state: pure functions, no client.

What the controller writes (``status.tuning``; conditions beside it)::

    tuning:
      jobName: my-ws            phase: Training          message: "train: step 40/120"
      data: {ok: true, rows: 120, sha256: ..., ...}      # the pre-flight's summary
      model: {source: oci, reference: registry/repo@sha256:..., digest: sha256:...}  # pinned weights
      progress: {step, totalSteps, percent, loss, ...}    # written by the trainer itself
      evaluation: {baseLoss, adapterLoss, ..., summary}   # the trainer's too: held-out loss, base -> adapter
      adapter: {image: registry/repo:tag, digest: sha256:...}
      startTime: ...            completionTime: ...

A Job has failed only when its ``Failed`` condition is True (retries exhausted, a FailJob rule, or its
deadline); a failed pod while the Job still retries shows in the message, never as a failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.reports import evaluation_line, read_data_summary
from tuning_controller import conditions as c
from tuning_controller.plan import Event, Plan, Result, StatusUpdate, Taken
from tuning_controller.render.job import FETCH, PREFLIGHT, PUSH, TRAIN
from tuning_controller.render.model import FETCH_MODEL

KIND = "tuning"  # the status section these phases are written to
# status.tuning.phase values, in the order a Workspace goes through them.
CHECKING_DATA = "CheckingData"
WAITING_FOR_NODES = "WaitingForNodes"
QUEUED = "Queued"
PENDING = "Pending"
FETCHING_DATA = "FetchingData"
FETCHING_MODEL = "FetchingModel"
TRAINING = "Training"
PUSHING = "Pushing"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
INVALID = "Invalid"
STEP_PHASES = {
    FETCH: FETCHING_DATA,
    FETCH_MODEL: FETCHING_MODEL,
    PREFLIGHT: CHECKING_DATA,
    TRAIN: TRAINING,
    PUSH: PUSHING,
}
# The order one revision's phase goes through; a terminal phase (Succeeded, Failed) is never left.
PHASE_ORDER = (
    CHECKING_DATA,
    WAITING_FOR_NODES,
    QUEUED,
    PENDING,
    FETCHING_DATA,
    FETCHING_MODEL,
    TRAINING,
    PUSHING,
)
TERMINAL = (SUCCEEDED, FAILED)
# status.state (v1beta1's State column) per phase.
STATES = {
    SUCCEEDED: "Succeeded",
    FAILED: "Failed",
    INVALID: "Failed",
    QUEUED: "Pending",
    PENDING: "Pending",
    CHECKING_DATA: "Pending",
    WAITING_FOR_NODES: "Pending",
}


@dataclass(frozen=True)
class JobOutcome:
    """A Job's state as the Workspace status needs it."""

    phase: str  # Queued | Pending | Running | Succeeded | Failed
    message: str = ""
    running: str = ""  # the container running now (fetch-data, preflight, train, push)
    failed_pods: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    terminations: dict[str, str] = field(default_factory=dict)  # container -> termination message
    failure: str = ""  # "<container> exited N: <message>" of the newest failed pod


def _condition_true(job: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status", {})
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _terminated(cs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")


def _clip(text: str) -> str:
    """One line (container messages span several), within the message bound."""
    return c.clip(" ".join(str(text).split()))


def _pod_failure(pod: Mapping[str, Any]) -> str:
    for cs in _statuses(pod):
        term = _terminated(cs)
        if term and term.get("exitCode", 0) != 0:
            detail = term.get("message") or term.get("reason") or ""
            return _clip(f"{cs['name']} exited {term.get('exitCode')}: {detail}".rstrip(": "))
    reason = pod.get("status", {}).get("reason") or pod.get("status", {}).get("message")
    return _clip(reason) if reason else "the pod failed"


def _newest(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)


def _terminations(newest: list[Mapping[str, Any]]) -> dict[str, str]:
    """container -> termination message over the pods, the newest pod's winning."""
    terminations: dict[str, str] = {}
    for pod in reversed(newest):
        for cs in _statuses(pod):
            term = _terminated(cs)
            if term and term.get("message"):
                terminations[cs["name"]] = str(term["message"]).strip()
    return terminations


def _running(newest: list[Mapping[str, Any]]) -> str:
    """The container running now in the newest pod ("" for none)."""
    running = ""
    for cs in _statuses(newest[0]) if newest else []:
        if "running" in (cs.get("state") or {}):
            running = cs["name"]
    return running


def job_outcome(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> JobOutcome:
    """The state of ``job`` (a Job, or a multi-node training's JobSet) from its conditions, counters and
    its pods' container states."""
    if job is None:
        return JobOutcome(PENDING, "the Job does not exist yet")
    if job.get("kind") == "JobSet":
        job = _jobset_as_job(job)
    kind = job.get("kind", "Job")
    status = job.get("status", {})
    newest = _newest(pods)
    failed = [p for p in newest if p.get("status", {}).get("phase") == "Failed"]
    failure = _pod_failure(failed[0]) if failed else ""
    running = _running(newest)
    common: dict[str, Any] = {
        "running": running,
        "failed_pods": int(status.get("failed") or 0),
        "start_time": status.get("startTime"),
        "completion_time": status.get("completionTime"),
        "terminations": _terminations(newest),
        "failure": failure,
    }
    if _condition_true(job, "Complete"):
        return JobOutcome(SUCCEEDED, f"the {kind} completed", **common)
    failed_cond = _condition_true(job, "Failed")
    if failed_cond:
        why = failed_cond.get("message") or failed_cond.get("reason") or f"the {kind} failed"
        message = f"{failure} ({why})" if failure else why
        return JobOutcome(
            FAILED, _clip(message), **{**common, "completion_time": failed_cond.get("lastTransitionTime")}
        )
    if job.get("spec", {}).get("suspend"):
        return JobOutcome(QUEUED, f"the {kind} is suspended until its queue admits it", **common)
    if not running and newest and newest[0].get("status", {}).get("phase") == "Pending":
        return JobOutcome(PENDING, _pending_message(newest[0]), **common)
    if int(status.get("active") or 0) > 0 or running:
        tries = common["failed_pods"]
        last = f"; last failure: {failure}" if failure else ""
        retry = f" (attempt {tries + 1}{last})" if tries else ""
        return JobOutcome("Running", f"{running or 'pod'} running{retry}", **common)
    return JobOutcome(PENDING, f"waiting for the {kind}'s pods", **common)


def _jobset_as_job(jobset: Mapping[str, Any]) -> dict[str, Any]:
    """A JobSet read as a Job: its Completed condition is the Job's Complete, Failed (its restarts spent,
    or a failure rule) is Failed, and each restart of the group counts as a failed attempt. It started
    when it was created, or when its queue resumed it (Suspended turned False)."""
    status = jobset.get("status") or {}
    conds = status.get("conditions") or []
    ended = [
        {**cond, "type": "Complete" if cond["type"] == "Completed" else "Failed"}
        for cond in conds
        if cond.get("type") in ("Completed", "Failed") and cond.get("status") == "True"
    ]
    suspended = c.find(conds, "Suspended") or {}
    resumed = suspended.get("lastTransitionTime") if suspended.get("status") == "False" else None
    spec = jobset.get("spec") or {}
    active = sum(int(rj.get("active") or 0) for rj in status.get("replicatedJobsStatus") or [])
    complete = next((cond for cond in ended if cond["type"] == "Complete"), {})
    started = resumed or jobset["metadata"].get("creationTimestamp")
    return {
        "kind": "JobSet",
        "metadata": jobset.get("metadata") or {},
        "spec": {"suspend": bool(spec.get("suspend"))},
        "status": {
            "conditions": ended,
            "startTime": None if spec.get("suspend") else started,
            "completionTime": complete.get("lastTransitionTime"),
            "failed": int(status.get("restarts") or 0),
            "active": active,
        },
    }


def _pending_message(pod: Mapping[str, Any]) -> str:
    """Why the newest pod has not started: the scheduler's reason while it is unscheduled (no node fits),
    else what it waits for (init containers, image pulls)."""
    status = pod.get("status", {})
    name = pod.get("metadata", {}).get("name", "the pod")
    scheduled = c.find(status.get("conditions"), "PodScheduled") or {}
    if scheduled.get("status") == "False":
        return _clip(f"pod {name} is not scheduled: {scheduled.get('message') or scheduled.get('reason')}")
    for cs in _statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            return _clip(
                f"pod {name}: {cs['name']} {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
            )
    return f"pod {name} is starting"


def queued_message(queue: str | None, workload: Mapping[str, Any] | None) -> str:
    """Why a suspended Job waits, in its queue's words: Kueue's Workload says it on QuotaReserved (e.g.
    "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu ...")."""
    where = f"queue {queue}" if queue else "its queue"
    if workload is None:
        return f"the Job is suspended until {where} admits it"
    evicted = evicted_by_queue(workload)
    if evicted:
        return _clip(f"evicted by {where} ({evicted}); waiting to be admitted again")
    quota = c.find((workload.get("status") or {}).get("conditions"), "QuotaReserved") or {}
    if quota.get("status") == "False" and quota.get("message"):
        return _clip(f"waiting in {where}: {quota['message']}")
    return f"the Job is suspended until {where} admits it (Workload {workload['metadata']['name']})"


def evicted_by_queue(workload: Mapping[str, Any] | None) -> str:
    """Why Kueue took an admitted Workload's quota back ("Preempted: ..."), or "" when it did not: its
    Job is suspended again and waits in the queue once more."""
    evicted = c.find(((workload or {}).get("status") or {}).get("conditions"), "Evicted") or {}
    if evicted.get("status") != "True":
        return ""
    return ": ".join(str(part) for part in (evicted.get("reason"), evicted.get("message")) if part)


def data_summary(outcome: JobOutcome) -> dict[str, Any] | None:
    """The pre-flight's JSON summary from its termination message (None when it wrote none)."""
    return read_data_summary(outcome.terminations.get(PREFLIGHT, ""))


def data_failure_message(outcome: JobOutcome, summary: Mapping[str, Any] | None) -> str:
    """Why the data check failed, with row numbers, for the condition and the event."""
    if summary and not summary.get("ok"):
        parts = [*(summary.get("errors") or [])]
        rows = summary.get("firstBadRows") or []
        if rows:
            shown = "; ".join(f"row {r.get('row')} ({r.get('file')}): {r.get('reason')}" for r in rows)
            parts.append(f"bad rows: {shown}")
        return _clip("data check failed: " + " | ".join(parts) if parts else "data check failed")
    fetch = outcome.terminations.get(FETCH)
    if fetch and outcome.failure.startswith(FETCH):
        return _clip(f"fetching the input failed: {fetch}")
    if model_fetch_failed(outcome):
        return _clip(f"fetching the model failed: {outcome.terminations[FETCH_MODEL]}")
    return _clip(f"data check failed: {outcome.message}")


def model_fetch_failed(outcome: JobOutcome) -> bool:
    return bool(outcome.terminations.get(FETCH_MODEL)) and outcome.failure.startswith(FETCH_MODEL)


def model_summary(text: str) -> dict[str, Any] | None:
    """(source, pinned reference, digest) from a fetch-model termination message; None if not one."""
    try:
        summary = json.loads(text)
    except ValueError:
        return None
    if not isinstance(summary, dict) or not summary.get("reference"):
        return None
    return {k: summary[k] for k in ("source", "reference", "digest") if k in summary}


def model_fetch(outcome: JobOutcome) -> dict[str, Any] | None:
    """The pre-flight's fetch-model summary: the weights' reference pinned for the training."""
    return model_summary(outcome.terminations.get(FETCH_MODEL, ""))


def adapter_digest(outcome: JobOutcome) -> str | None:
    """The pushed manifest digest the push container wrote as its termination message."""
    text = outcome.terminations.get(PUSH, "").strip()
    return text if text.startswith("sha256:") and len(text) == 71 else None


def training_phase(outcome: JobOutcome) -> str:
    if outcome.phase == "Running":
        return STEP_PHASES.get(outcome.running, TRAINING)
    return outcome.phase


def training_conditions(outcome: JobOutcome, generation: int, now: str) -> list[dict[str, Any]]:
    """JobStarted and WorkspaceSucceeded for the training Job's outcome."""
    if outcome.phase == QUEUED:
        return [
            c.condition(c.JOB_STARTED, False, c.REASON_QUEUED, outcome.message, generation, now),
            c.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, c.REASON_QUEUED, outcome.message, generation, now),
        ]
    started = c.condition(c.JOB_STARTED, True, c.REASON_JOB_STARTED, "tuning Job started", generation, now)
    if outcome.phase == SUCCEEDED:
        return [
            started,
            c.condition(c.WORKSPACE_SUCCEEDED, True, c.REASON_SUCCEEDED, "tuning succeeded", generation, now),
        ]
    if outcome.phase == FAILED:
        return [
            started,
            c.condition(c.WORKSPACE_SUCCEEDED, False, c.REASON_FAILED, outcome.message, generation, now),
        ]
    return [
        started,
        c.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, c.REASON_IN_PROGRESS, outcome.message, generation, now),
    ]


def moves_back(old: str | None, new: str) -> bool:
    """Whether writing ``new`` over ``old`` (same revision) would move the phase backwards: what a
    reconcile computed from a read older than the stored status. Invalid is outside the order."""
    if not old or old == new:
        return False
    if old in TERMINAL:
        return new in PHASE_ORDER or new in TERMINAL
    if old in PHASE_ORDER and new in PHASE_ORDER:
        return PHASE_ORDER.index(new) < PHASE_ORDER.index(old)
    return False


def state_for(phase: str) -> str:
    return STATES.get(phase, "Running")


# ---- status.tuning updates: what one reconcile writes ------------------------------------------


def invalid_update(message: str, reason: str, stamp: c.Stamp) -> StatusUpdate:
    """The spec is refused (InvalidSpec, ImmutableFieldChanged): nothing runs until it changes."""
    conds = (
        stamp.condition(c.RESOURCE_READY, False, reason, message),
        stamp.condition(c.WORKSPACE_SUCCEEDED, False, reason, message),
    )
    section = {"phase": INVALID, "message": c.clip(message)}
    return StatusUpdate(KIND, section, conds, state_for(INVALID), announce=True)


def checking_update(fresh: Mapping[str, Any], message: str, stamp: c.Stamp) -> StatusUpdate:
    """The CPU pre-flight runs (or waits for its pod)."""
    conds = (
        stamp.condition(c.RESOURCE_READY, c.UNKNOWN, c.REASON_DATA_CHECK, message),
        stamp.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, c.REASON_DATA_CHECK, message),
    )
    section = {**fresh, "phase": CHECKING_DATA, "message": message}
    return StatusUpdate(KIND, section, conds, state_for(CHECKING_DATA))


def data_failed_update(
    fresh: Mapping[str, Any],
    message: str,
    reason: str,
    found: tuple[dict[str, Any] | None, dict[str, Any] | None],
    stamp: c.Stamp,
) -> StatusUpdate:
    """The pre-flight refused the data or could not fetch the model: failed before any GPU was paid for.
    ``found`` is what it reported: (data summary, pinned model)."""
    summary, model = found
    conds = (stamp.condition(c.WORKSPACE_SUCCEEDED, False, reason, message),)
    section = {**fresh, "phase": FAILED, "message": message, "data": summary, "model": model}
    return StatusUpdate(KIND, section, conds, state_for(FAILED), announce=True)


def waiting_update(
    fresh: Mapping[str, Any],
    node_conds: tuple[dict[str, Any], ...],
    message: str,
    summary: Mapping[str, Any],
    stamp: c.Stamp,
) -> StatusUpdate:
    """The data passed; no GPU node is there yet (a NodeClaim not ready, no matching own node)."""
    conds = (
        *node_conds,
        stamp.condition(c.RESOURCE_READY, False, c.REASON_NO_MATCHING_NODES, message),
        stamp.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, c.REASON_NO_MATCHING_NODES, message),
    )
    section = {**fresh, "phase": WAITING_FOR_NODES, "message": message, "data": dict(summary)}
    return StatusUpdate(KIND, section, conds, state_for(WAITING_FOR_NODES), announce=True)


def training_update(
    fresh: Mapping[str, Any],
    outcome: JobOutcome,
    output_image: str | None,
    found: tuple[Mapping[str, Any], Mapping[str, Any]],
    node_conds: tuple[dict[str, Any], ...],
    stamp: c.Stamp,
) -> StatusUpdate:
    """The training Job's state: phase by the running step, the adapter's digest once pushed. ``found``
    is the pre-flight's (data summary, pinned model), kept in status."""
    summary, model = found
    phase = training_phase(outcome)
    section: dict[str, Any] = {
        **fresh,
        "phase": phase,
        "message": outcome.message,
        "data": summary,
        "model": model,
        "startTime": outcome.start_time,
        "completionTime": outcome.completion_time,
    }
    digest = adapter_digest(outcome)
    if output_image and digest:
        section["adapter"] = {"image": output_image, "digest": digest}
    if outcome.phase == SUCCEEDED:
        section["message"] = (
            f"adapter written to {f'{output_image}@{digest}' if digest else 'the output volume'}"
        )
    resource = stamp.condition(
        c.RESOURCE_READY, True, c.REASON_RESOURCE_READY, "GPU node and Job resources are ready"
    )
    conds = (*node_conds, resource, *training_conditions(outcome, stamp.generation, stamp.now))
    return StatusUpdate(KIND, section, conds, state_for(phase), announce=True)


def taken_message(taken: Taken, uid: str, retry_after: float) -> str:
    """What a person reads when a name the Workspace needs is held by an object it does not own."""
    owner = f"owned by {taken.owner}" if taken.owner else "it has no owner"
    return (
        f"{taken.kind} {taken.where} exists and is not owned by this Workspace (uid {uid}; {owner}): "
        f"the controller neither adopts nor changes it. Delete that {taken.kind}, or give the Workspace "
        f"another name; the controller looks again every {retry_after:g}s"
    )


def taken_plan(key: str, ws_obj: Mapping[str, Any], taken: Taken, stamp: c.Stamp, retry_after: float) -> Plan:
    """The Plan of a reconcile stopped by a name held by another object (``key``: the status section,
    tuning or inference): the phase and state stay, ResourceReady (and InferenceReady) say NameTaken,
    a Warning names the object, and the reconcile runs again after ``retry_after``."""
    status = ws_obj.get("status") or {}
    phase = (status.get(key) or {}).get("phase")
    message = taken_message(taken, ws_obj["metadata"].get("uid", ""), retry_after)
    reason = c.REASON_NAME_TAKEN
    conds = [stamp.condition(c.RESOURCE_READY, False, reason, message)]
    if key == KIND:
        conds.append(stamp.condition(c.WORKSPACE_SUCCEEDED, c.UNKNOWN, reason, message))
    else:
        serving = (c.INFERENCE_READY, c.WORKSPACE_SUCCEEDED)
        conds += [stamp.condition(t, False, reason, message) for t in serving]
    state = status.get("state") or "Pending"
    update = StatusUpdate(key, {"message": c.clip(message)}, tuple(conds), state, warning=reason)
    return Plan(phase, status=update, result=Result.WAITING, retry_after=retry_after, why=message)


def name_taken(ws_obj: Mapping[str, Any]) -> bool:
    """Whether the stored status says a reconcile waits for a name held by another object."""
    found = c.find((ws_obj.get("status") or {}).get("conditions"), c.RESOURCE_READY) or {}
    return found.get("reason") == c.REASON_NAME_TAKEN and found.get("status") == c.FALSE


def status_patch(obj: Mapping[str, Any], update: StatusUpdate) -> dict[str, Any] | None:
    """The merge patch that writes ``update`` into ``obj``'s status, conditional on its resourceVersion;
    None when it would change nothing.

    A tuning phase of the same revision only moves forward (``moves_back``): a write computed from Job
    and pod reads older than the stored status is dropped (None), so the status never flaps."""
    status = obj.get("status") or {}
    old_section = status.get(update.key) or {}
    phase, old_phase = update.section.get("phase"), old_section.get("phase")
    same_revision = update.section.get("revision", old_section.get("revision")) == old_section.get("revision")
    if (
        update.key == KIND
        and phase
        and same_revision
        and moves_back(old_phase, phase)
        and not update.requeued
    ):
        return None
    merged = c.set_conditions(status.get("conditions"), update.conditions)
    changed = {k: v for k, v in update.section.items() if old_section.get(k) != v}
    if (
        not changed
        and c.same_conditions(status.get("conditions"), merged)
        and status.get("state") == update.state
    ):
        return None
    return {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "status": {"conditions": merged, update.key: changed, "state": update.state},
    }


def announcement(obj: Mapping[str, Any], update: StatusUpdate) -> Event | None:
    """The Event that ``update`` announces over ``obj``'s status: one per phase change (reason: the
    phase), a Warning for Failed and Invalid; an update with a ``warning`` posts that Warning once per
    new message. Succeeded says how the adapter did on held-out rows, as the trainer wrote it in
    ``status.tuning.evaluation``."""
    phase = update.section.get("phase")
    old_section = (obj.get("status") or {}).get(update.key) or {}
    old_phase = old_section.get("phase")
    message = update.section.get("message", "")
    if update.warning and message != old_section.get("message"):
        return Event("Warning", update.warning, message)
    if not update.announce or not phase or phase == old_phase:
        return None
    kind = "Warning" if phase in (FAILED, INVALID) else "Normal"
    evaluation = old_section.get("evaluation")
    if phase == SUCCEEDED and evaluation:
        message = c.clip(f"{message}; evaluation: {evaluation_line(evaluation)}")
    return Event(kind, phase, message)
