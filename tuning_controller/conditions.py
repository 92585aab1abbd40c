"""metav1.Condition helpers for Workspace status: pure functions on plain dicts.

A condition as it appears on the object (``status.conditions[]``)::

    {type: WorkspaceSucceeded, status: "False", reason: WorkspaceFailed, observedGeneration: 3,
     lastTransitionTime: "2026-11-29T11:40:00Z", message: "push: unauthorized: ..."}

Types and reasons are KAITO's strings where KAITO has one (``pkg/.../condition_types.go`` and the
workspace controller), so dashboards and `kubectl wait --for=condition=...` written for KAITO work here.
``set_condition`` keeps ``lastTransitionTime`` when the status does not change, as apimachinery's
``meta.SetStatusCondition`` does, so re-reconciling never looks like a transition.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Condition types (KAITO's names).
RESOURCE_READY = "ResourceReady"
NODECLAIM_READY = "NodeClaimReady"
JOB_STARTED = "JobStarted"
INFERENCE_READY = "InferenceReady"
WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
WORKSPACE_DELETING = "WorkspaceDeleting"

# Reasons. KAITO's own strings first; the others are this project's, CamelCase like KAITO's.
REASON_RESOURCE_READY = "workspaceResourceStatusSuccess"  # KAITO
REASON_RESOURCE_FAILED = "workspaceResourceStatusFailed"  # KAITO
REASON_NODECLAIMS_READY = "NodeClaimsReady"  # KAITO
REASON_NODECLAIM_NOT_READY = "NodeClaimNotReady"  # KAITO
REASON_JOB_STARTED = "WorkspaceTuningJobStatusStarted"  # KAITO
REASON_JOB_FAILED = "WorkspaceTuningJobStatusFailed"  # KAITO
REASON_SUCCEEDED = "WorkspaceSucceeded"  # KAITO
REASON_FAILED = "WorkspaceFailed"  # KAITO
REASON_INVALID_SPEC = "InvalidSpec"
REASON_IMMUTABLE_FIELD = "ImmutableFieldChanged"
REASON_DATA_CHECK = "DataCheckRunning"
REASON_DATA_INVALID = "DataInvalid"
REASON_MODEL_UNAVAILABLE = "ModelUnavailable"  # fetch-model failed in the pre-flight: no GPU requested
REASON_NO_MATCHING_NODES = "NoMatchingNodes"
REASON_QUEUED = "JobSuspended"
REASON_IN_PROGRESS = "TuningInProgress"
REASON_NAME_TAKEN = "NameTaken"  # an object the Workspace needs exists and is not the Workspace's

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"
MESSAGE_MAX = 32768  # the CRD's bound on condition messages; status messages keep to it too


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clip(text: str, limit: int = MESSAGE_MAX) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when cut: every message the controller
    writes (conditions, status.tuning/inference.message) goes through here, so one bound holds."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_word(status: bool | str) -> str:
    if isinstance(status, bool):
        return TRUE if status else FALSE
    if status not in (TRUE, FALSE, UNKNOWN):
        raise ValueError(f"condition status must be True, False or Unknown, got {status!r}")
    return status


def condition(
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int,
    now: str | None = None,
) -> dict[str, Any]:
    """A metav1.Condition dict; ``generation`` is the metadata.generation the decision was made on."""
    return {
        "type": type_,
        "status": _status_word(status),
        "reason": reason,
        "message": clip(message),
        "observedGeneration": int(generation or 0),
        "lastTransitionTime": now or now_rfc3339(),
    }


@dataclass(frozen=True)
class Stamp:
    """The generation a decision was made on, and when: what every condition of one write carries."""

    generation: int
    now: str

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, status, reason, message, self.generation, self.now)


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((dict(c) for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return bool(found and found.get("status") == TRUE)


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None, new: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """A new list with ``new`` in place of its type (order kept, appended when absent).

    The old lastTransitionTime stays when the status is unchanged; reason, message and
    observedGeneration are always taken from ``new``.
    """
    out: list[dict[str, Any]] = []
    replaced = False
    for old in conditions or []:
        if old.get("type") != new["type"]:
            out.append(dict(old))
            continue
        merged = dict(new)
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            merged["lastTransitionTime"] = old["lastTransitionTime"]
        out.append(merged)
        replaced = True
    if not replaced:
        out.append(dict(new))
    return out


def set_conditions(
    conditions: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``set_condition`` for several conditions in order."""
    out = [dict(c) for c in conditions or []]
    for item in new:
        out = set_condition(out, item)
    return out


def remove_condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions or [] if c.get("type") != type_]


def same_conditions(a: Iterable[Mapping[str, Any]] | None, b: Iterable[Mapping[str, Any]] | None) -> bool:
    """Equal ignoring lastTransitionTime: lets a caller skip a status write that changes nothing."""

    def key(items: Iterable[Mapping[str, Any]] | None) -> list[tuple[tuple[str, str], ...]]:
        return sorted(
            (
                tuple(sorted((k, str(v)) for k, v in c.items() if k != "lastTransitionTime"))
                for c in items or []
            ),
        )

    return key(a) == key(b)
