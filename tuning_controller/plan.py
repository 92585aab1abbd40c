"""What a reconcile decided, as data: the writes to make, in order, and the status to write.

The pure cores (tuning_controller.tuning_reconcile and inference_reconcile) return these; the shell
(tuning_controller.handlers.runtime) carries them out with the client. So every decision is tested with
plain dicts, and no decision is taken halfway through a write.

    Plan(phase="CheckingData",
         writes=(Write(Verb.CREATE, data_job, seen_as="data_job"), Write(Verb.CREATE_OR_APPLY, config_map)),
         status=StatusUpdate("tuning", {"phase": "CheckingData", ...}, (condition, ...), "Pending"))

A pure core that needs to see an object first returns ``Read(what)``; the shell reads it into ``seen``
and asks again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Verb(StrEnum):
    """What the shell does with a Write. Every verb touches only what the Workspace owns (an owner
    reference to its uid; a NodeClaim: its owner annotation): a namesake it does not own is never
    adopted, applied over or deleted, and a create or apply that meets one stops the plan (``Taken``)."""

    CREATE = "create"
    """Create; an own namesake (a restart, a race) is adopted as it is, and the decision is taken again."""
    CREATE_OR_APPLY = "create-or-apply"
    """Create (cheaper for the API server on first sight); an own namesake is server-side applied."""
    CREATE_UNREAD = "create-unread"
    """Create; a namesake is left as it is, unread: a Secret, which the controller may create but not
    read. Whoever mounts it checks its content against a digest the controller rendered beside it."""
    APPLY = "apply"
    """Server-side apply, over an own object only."""
    REPLACE = "replace"
    """Delete this very object (its uid) and wait until it is gone, so that it can be created again."""
    DELETE = "delete"
    """Delete by name when present and owned; a namesake the Workspace does not own is left alone."""


class Result(StrEnum):
    """How a reconcile ended, for the metrics and for kopf."""

    OK = "ok"
    WAITING = "waiting"  # no GPU node yet: look again after ``retry_after``
    INVALID = "invalid"  # the spec is refused: retrying cannot help


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Write:
    verb: Verb
    obj: Mapping[str, Any]
    event: Event | None = None
    """Posted once the write is done (a DELETE's only when something was deleted)."""
    seen_as: str = ""
    """The observation this object is: the shell records what the API server returned under it (None
    after a REPLACE), so a decision taken again sees what was written."""


@dataclass(frozen=True)
class StatusUpdate:
    """Merged into status.<key>, with the conditions and status.state, in one conditional patch."""

    key: str  # tuning | inference
    section: Mapping[str, Any]
    conditions: tuple[Mapping[str, Any], ...]
    state: str
    announce: bool = False
    """Post an Event (reason: the phase) with the write that changes the phase."""
    warning: str = ""
    """Post a Warning Event with this reason with the write that changes the section's message (what
    blocks a reconcile that keeps its phase: NameTaken)."""
    requeued: bool = False
    """The queue took its admission back (Kueue evicted the Job): the phase may move back to Queued."""


@dataclass(frozen=True)
class Plan:
    phase: str | None
    """status.<key>.phase after the plan (None: nothing to say, e.g. the Workspace is being deleted)."""
    writes: tuple[Write, ...] = ()
    status: StatusUpdate | None = None
    result: Result = Result.OK
    retry_after: float | None = None
    why: str = ""
    """For kopf's log: why the spec is refused (INVALID), what the reconcile waits for (WAITING)."""


@dataclass(frozen=True)
class Taken:
    """A name the Workspace needs is held by an object it does not own (the shell's report): nothing is
    written to that object, and the Workspace waits until a person frees the name."""

    kind: str
    namespace: str | None  # None: cluster-scoped (a NodeClaim)
    name: str
    owner: str = ""
    """Who owns it instead, for the message ("Workspace team/other (uid ...)"); "" for nobody."""

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Read:
    """A pure core needs ``what`` (one of its observation keys) before it can decide."""

    what: str


def named(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    """An object by name only: what a DELETE needs."""
    meta = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}
