"""What the trainer reports to the controller: the pre-flight's data summary, the training progress,
the held-out evaluation and where the run is tracked.

The pre-flight container writes the data summary as its termination message (the kubelet keeps 4096
bytes of it) and the controller copies it into ``status.tuning.data``; the train container patches
``status.tuning.progress``, ``status.tuning.evaluation`` and ``status.tuning.tracking`` itself. Writer
and reader live here, so the two sides cannot drift::

    data:     {"ok": false, "rows": 120, "usableRows": 118, "badRows": 2, "sha256": "9f...", "files": 1,
               "firstBadRows": [{"row": 7, "file": "train.parquet", "reason": "..."}], "errors": ["..."],
               "trainRows": 0, "evalRows": 0, "evalFiles": [], "tokens": {"min": 12, "p50": 80,
               "max": 300, "truncatedRows": 0}, "packing": "bfd"}
    progress: {"step": 40, "totalSteps": 120, "percent": 33, "loss": 2.31, "evalLoss": null,
               "tokensPerSecond": 2450.0, "etaSeconds": 95.0, "event": "progress",
               "updatedAt": "2025-01-01T12:00:00Z"}
    evaluation: {"baseLoss": 2.31, "adapterLoss": 0.84, "basePerplexity": 10.07,
               "adapterPerplexity": 2.32, "heldOutRows": 24, "summary": "2.31->0.84",
               "checks": {"passed": 20, "total": 24, "basePassed": 3}}
    tracking: {"uri": "http://mlflow.mlflow:5000", "experiment": "kaito-tune", "runId": "4f1c...",
               "error": null, "adapter": "registry.example/adapters/phi@sha256:..."}

With ``EvaluationConfig.min_improvement`` the trainer also writes the gate's verdict into metadata.json
(``improvement_gate``); the push step reads it there and refuses an adapter that failed it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict
from urllib.parse import urlsplit, urlunsplit

from contract.checks import ChecksScore, checks_line

SUMMARY_MAX_BYTES = 3800  # the kubelet keeps 4096 bytes of a termination message
FIRST_BAD_ROWS = 5
EVAL_FILES_SHOWN = 10  # of DatasetConfig.eval_files' matches (a glob may match many); the log has all
MAX_ERRORS = 5


# ---- the pre-flight's data summary -----------------------------------------------------------------


def data_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The pre-flight report (``trainer.preflight``) cut to what a person needs in ``kubectl get -o yaml``."""
    bad = report.get("bad_rows") or []
    tokens = report.get("tokens") or {}
    summary: dict[str, Any] = {
        "ok": bool(report.get("ok")),
        "rows": report.get("rows", 0),
        "usableRows": report.get("usable_rows", 0),
        "badRows": len(bad),
        "firstBadRows": [
            {"row": b.get("index"), "file": b.get("file"), "reason": str(b.get("reason", ""))[:300]}
            for b in bad[:FIRST_BAD_ROWS]
        ],
        "errors": [str(e)[:600] for e in report.get("errors") or []][:MAX_ERRORS],
        "trainRows": report.get("train_rows", 0),
        "evalRows": report.get("eval_rows", 0),
        # the files the held-out rows are (DatasetConfig.eval_files); [] where train_test_split drew them
        "evalFiles": [str(name)[:200] for name in (report.get("eval_files") or [])[:EVAL_FILES_SHOWN]],
        "tokens": {
            "min": tokens.get("min"),
            "p50": tokens.get("p50"),
            "max": tokens.get("max"),
            "truncatedRows": tokens.get("truncated_rows"),
        },
    }
    if report.get("packing"):
        summary["packing"] = report["packing"]
    if report.get("files"):
        summary["sha256"] = report["sha256"]
        summary["files"] = len(report["files"])
    return summary


def _compact(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, separators=(",", ":"))


def write_data_summary(summary: Mapping[str, Any], limit: int = SUMMARY_MAX_BYTES) -> str:
    """JSON under ``limit`` bytes: drop bad-row details and eval file names, then shorten error texts,
    until it fits."""
    fitted: dict[str, Any] = json.loads(json.dumps(summary))
    text = _compact(fitted)
    for listed in ("firstBadRows", "evalFiles"):
        while len(text.encode()) > limit and fitted.get(listed):
            fitted[listed].pop()
            text = _compact(fitted)
    while len(text.encode()) > limit and fitted.get("errors"):
        fitted["errors"] = [e[: max(40, len(e) // 2)] for e in fitted["errors"]]
        text = _compact(fitted)
        if all(len(e) <= 40 for e in fitted["errors"]):
            fitted["errors"] = fitted["errors"][:1]
            text = _compact(fitted)[:limit]
            break
    return text


def read_data_summary(text: str) -> dict[str, Any] | None:
    """The summary from a pre-flight termination message; None when the container wrote none."""
    try:
        summary = json.loads(text)
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


# ---- training progress -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of the trainer (also its JSON lines on stdout, field for field)."""

    event: str  # "start" | "progress" | "eval" | "checkpoint" | "stopped" | "done"
    step: int
    total_steps: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    time: float = 0.0
    evaluation: EvaluationStatus | None = None  # at "start" (the base's) and "evaluated" (both)
    tracking: TrackingStatus | None = None  # at "start" and "evaluated", when a tracking URI is set


class ProgressStatus(TypedDict):
    """``status.tuning.progress`` as the trainer writes it (printer column: ``percent``)."""

    step: int
    totalSteps: int
    percent: int
    loss: float | None
    evalLoss: float | None
    tokensPerSecond: float | None
    etaSeconds: float | None
    event: str
    updatedAt: str


def progress_status(event: ProgressEvent, now: dt.datetime) -> ProgressStatus:
    total = max(int(event.total_steps or 0), 0)
    return {
        "step": event.step,
        "totalSteps": total,
        "percent": int(100 * event.step / total) if total else 0,
        "loss": event.loss,
        "evalLoss": event.eval_loss,
        "tokensPerSecond": event.tokens_per_s,
        "etaSeconds": event.eta_s,
        "event": event.event,
        "updatedAt": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---- the held-out evaluation ---------------------------------------------------------------------------


class EvaluationStatus(TypedDict):
    """``status.tuning.evaluation``, and the artifact's ``sh.kaito.tuning.evaluation+json``: the held-out
    loss on trained tokens of the base model before the first step and of the adapter after the last,
    perplexity = exp(loss). ``summary`` is the EVAL printer column. ``checks``: the task checks' score
    (``contract.checks``), None without checks. Every key is always present (None when not measured), so
    a merge patch replaces an older evaluation whole."""

    baseLoss: float | None
    adapterLoss: float | None
    basePerplexity: float | None
    adapterPerplexity: float | None
    heldOutRows: int
    summary: str
    checks: ChecksScore | None


NOT_EVALUATED = "no held-out rows"


def _rounded(value: float | None) -> float | None:
    """4 decimals; None for a value JSON (and so the API server) cannot carry: NaN, infinity."""
    return round(value, 4) if value is not None and math.isfinite(value) else None


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return _rounded(math.exp(loss) if loss < 709.0 else math.inf)  # exp raises above 709.78


def evaluation_status(
    base_loss: float | None,
    adapter_loss: float | None,
    held_out_rows: int,
    checks: ChecksScore | None = None,
) -> EvaluationStatus:
    """The evaluation so far: the base's loss (and checks) once measured, the adapter's after the last
    step."""
    if not held_out_rows:
        summary = NOT_EVALUATED
    elif adapter_loss is None:
        summary = f"base {base_loss:.3g}"
    else:
        summary = f"{base_loss:.3g}->{adapter_loss:.3g}"
    return {
        "baseLoss": _rounded(base_loss),
        "adapterLoss": _rounded(adapter_loss),
        "basePerplexity": _perplexity(base_loss),
        "adapterPerplexity": _perplexity(adapter_loss),
        "heldOutRows": held_out_rows,
        "summary": summary,
        "checks": checks,
    }


def _measured(evaluation: Mapping[str, Any], side: str) -> str:
    loss, perplexity = evaluation.get(f"{side}Loss"), evaluation.get(f"{side}Perplexity")
    return "n/a" if loss is None or perplexity is None else f"{loss:.4g} (perplexity {perplexity:.4g})"


def evaluation_line(evaluation: Mapping[str, Any]) -> str:
    """The evaluation for people: `kaito-tune status`, the Succeeded Event, the demo."""
    checks = evaluation.get("checks")
    losses = _losses_line(evaluation)
    return f"{losses}; {checks_line(checks)}" if checks else losses


def _losses_line(evaluation: Mapping[str, Any]) -> str:
    rows = evaluation.get("heldOutRows") or 0
    if not rows:
        return (
            "none: no held-out rows (set DatasetConfig.train_test_split below 1, or name evaluation files "
            "in DatasetConfig.eval_files, to hold some out)"
        )
    text = f"held-out loss on {rows} rows: base {_measured(evaluation, 'base')}"
    if "->" not in str(evaluation.get("summary")):  # a finished evaluation's summary is "base->adapter"
        return f"{text}, the adapter's after the last step"
    return f"{text} -> adapter {_measured(evaluation, 'adapter')}"


class GateVerdict(TypedDict):
    """metadata.json's ``gate``: whether the adapter's held-out loss is at least ``minImprovement`` (a
    fraction) below the base's. Decided once by the trainer and kept with the adapter, so the push step
    of any later pod (a retry, the multi-node push Job, a person) reads the same verdict without
    measuring again. ``improvement`` is (base - adapter) / base, None when either was not measured."""

    minImprovement: float
    improvement: float | None
    passed: bool
    message: str


def _change(improvement: float) -> str:
    return f"{abs(improvement):.1%} {'lower' if improvement >= 0 else 'higher'}"


def improvement_gate(evaluation: Mapping[str, Any], min_improvement: float) -> GateVerdict:
    """The verdict on ``evaluation`` (``EvaluationStatus``): passed when the adapter's held-out loss is at
    least ``min_improvement`` of the base's below it; failed when it is not, or was not measured."""
    base, adapter = evaluation.get("baseLoss"), evaluation.get("adapterLoss")
    asked = f"EvaluationConfig.min_improvement asks for at least {min_improvement:.1%} lower"
    if base is None or adapter is None or base <= 0:
        message = f"the held-out loss was not measured (base {base}, adapter {adapter}); {asked}"
        return {"minImprovement": min_improvement, "improvement": None, "passed": False, "message": message}
    improvement = round((base - adapter) / base, 4)
    passed = improvement >= min_improvement
    message = f"held-out loss: base {base:.4g} -> adapter {adapter:.4g}, {_change(improvement)}; {asked}"
    return {
        "minImprovement": min_improvement,
        "improvement": improvement,
        "passed": passed,
        "message": message,
    }


# ---- experiment tracking -------------------------------------------------------------------------------


class TrackingStatus(TypedDict):
    """``status.tuning.tracking``: the MLflow run the trainer logs to (``trainer.tracking``). ``uri`` has no
    user or password; ``error`` says why tracking stopped (training goes on without it), None while it
    works. Every key the trainer writes is always present, so its merge patch replaces an older one
    whole. ``adapter``: the pushed image@digest, once the controller has tagged the run with it
    (``tuning_controller.run_tags``)."""

    uri: str
    experiment: str
    runId: str | None
    error: str | None
    adapter: NotRequired[str]


def tracking_status(
    uri: str, experiment: str, run_id: str | None = None, error: str | None = None
) -> TrackingStatus:
    """The status for ``uri`` with any ``user:password@`` removed: status is readable by more people
    than the Secret."""
    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None:
        uri = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return {"uri": uri, "experiment": experiment, "runId": run_id, "error": error}


def tracking_line(tracking: Mapping[str, Any]) -> str:
    """The MLflow run for people (`kaito-tune status`)."""
    where = f"experiment {tracking.get('experiment')!r} at {tracking.get('uri')}"
    run = f"MLflow run {tracking['runId']} in {where}" if tracking.get("runId") else f"MLflow {where}"
    if tracking.get("adapter"):
        run = f"{run}; tagged with the adapter {tracking['adapter']}"
    return f"{run}; stopped: {tracking['error']}" if tracking.get("error") else run
