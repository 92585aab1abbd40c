"""`kaito-tune status NAME [-n NS] [--watch]`: a Workspace's conditions, tuning status, a progress bar.

    kaito-tune status my-tuning -n team-a            # conditions, phase, data check, evaluation, run, adapter
    kaito-tune status my-tuning -n team-a --watch    # a progress bar until it succeeds (exit 0) or fails (1)

The pure part (a Workspace -> printed lines, bar fields, outcome) is separate from the thin watch loop, so the
demo (hack/demo.py) shows training with the very same bar.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from contract.reports import evaluation_line, tracking_line
from tuning_controller import conditions as c

API_VERSION = "kaito.sh/v1beta1"
POLL_S = 1.0
MAX_SECONDS = 24 * 3600
# tqdm's own rate and ETA would time this poller, not the trainer: show the trainer's figures instead.
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"


@dataclass(frozen=True)
class BarFields:
    """What the progress bar shows: position, length and a ``key=value`` postfix."""

    step: int
    total: int
    postfix: str


def _seconds(value: float) -> str:
    value = int(value)
    hours, rest = divmod(value, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def bar_fields(progress: Mapping[str, Any] | None) -> BarFields | None:
    """The bar for ``status.tuning.progress`` (as the trainer writes it), or None before the first step."""
    if not progress or not progress.get("totalSteps"):
        return None
    parts = []
    if progress.get("loss") is not None:
        parts.append(f"loss={progress['loss']:.4g}")
    if progress.get("evalLoss") is not None:
        parts.append(f"eval_loss={progress['evalLoss']:.4g}")
    if progress.get("tokensPerSecond") is not None:
        parts.append(f"tok/s={progress['tokensPerSecond']:.0f}")
    if progress.get("etaSeconds") is not None:
        parts.append(f"ETA {_seconds(progress['etaSeconds'])}")
    return BarFields(int(progress.get("step") or 0), int(progress["totalSteps"]), " ".join(parts))


def outcome(ws: Mapping[str, Any]) -> int | None:
    """0 once WorkspaceSucceeded is True, 1 once it is False, None while it is still open."""
    found = c.find((ws.get("status") or {}).get("conditions"), c.WORKSPACE_SUCCEEDED) or {}
    return {"True": 0, "False": 1}.get(str(found.get("status")))


def _tuning_lines(tuning: Mapping[str, Any]) -> list[str]:
    """``status.tuning``: phase, data check, progress, evaluation, MLflow run, adapter, message."""
    lines = [f"Tuning phase: {tuning.get('phase', 'Unknown')}"]
    data = tuning.get("data") or {}
    if data:
        verdict = "ok" if data.get("ok") else "FAILED"
        rows = f", {data['rows']} rows" if data.get("rows") is not None else ""
        sha = f", sha256 {data['sha256'][:12]}" if data.get("sha256") else ""
        lines.append(f"Data check: {verdict}{rows}{_held_out(data)}{sha}")
    bar = bar_fields(tuning.get("progress"))
    if bar:
        lines.append(f"Progress: step {bar.step}/{bar.total} {bar.postfix}".rstrip())
    if tuning.get("evaluation"):
        lines.append(f"Evaluation: {evaluation_line(tuning['evaluation'])}")
    if tuning.get("tracking"):
        lines.append(f"Tracking: {tracking_line(tuning['tracking'])}")
    adapter = tuning.get("adapter") or {}
    if adapter.get("image"):
        digest = f"@{adapter['digest']}" if adapter.get("digest") else ""
        lines.append(f"Adapter: {adapter['image']}{digest}")
    if tuning.get("message"):
        lines.append(f"Message: {tuning['message']}")
    return lines


def _held_out(data: Mapping[str, Any]) -> str:
    """Where the held-out rows come from: DatasetConfig.eval_files, or the split of train_test_split."""
    if not data.get("evalRows"):
        return ""
    files = data.get("evalFiles") or []
    return f", {data['evalRows']} held out" + (f" ({', '.join(files)})" if files else "")


def status_lines(ws: Mapping[str, Any]) -> list[str]:
    """What `kaito-tune status` prints: identity, state, conditions, then ``status.tuning`` (or inference)."""
    meta, status = ws.get("metadata") or {}, ws.get("status") or {}
    lines = [
        f"Workspace {meta.get('namespace', '')}/{meta.get('name', '')}: {status.get('state') or 'Unknown'}"
    ]
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        for cond in conditions:
            detail = f" - {cond['message']}" if cond.get("message") else ""
            lines.append(f"  {cond['type']}={cond.get('status')} ({cond.get('reason', '')}){detail}")
    tuning = status.get("tuning") or {}
    if tuning:
        lines += _tuning_lines(tuning)
    inference = status.get("inference") or {}
    if inference.get("workload"):
        lines.append(f"Inference workload: {inference['workload']}")
    return lines


def watch(
    read: Callable[[], Mapping[str, Any]],
    out: TextIO = sys.stderr,
    interval_s: float = POLL_S,
    max_seconds: float = MAX_SECONDS,
) -> tuple[int, Mapping[str, Any]]:
    """Show a progress bar from `read()` (the Workspace) until it succeeds or fails; returns (exit code,
    last Workspace). Exit 2 when `max_seconds` pass first."""
    from tqdm import tqdm

    bar = None
    phase = None
    deadline = time.monotonic() + max_seconds
    try:
        while True:
            ws = read()
            tuning = (ws.get("status") or {}).get("tuning") or {}
            if tuning.get("phase") != phase:
                phase = tuning.get("phase")
                message = f"phase: {phase or 'Pending'}"
                bar.write(message, file=out) if bar else print(message, file=out)
            fields = bar_fields(tuning.get("progress"))
            if fields:
                if bar is None:
                    bar = tqdm(total=fields.total, file=out, dynamic_ncols=True, bar_format=BAR_FORMAT)
                bar.total = fields.total
                bar.n = fields.step
                bar.set_postfix_str(fields.postfix, refresh=False)
                bar.refresh()
            code = outcome(ws)
            if code is not None:
                return code, ws
            if time.monotonic() > deadline:
                return 2, ws
            time.sleep(interval_s)
    finally:
        if bar is not None:
            bar.close()


def _reader(args: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    from tuning_controller.kube import Kube

    kube = Kube.from_environment(args.kubeconfig)

    def read() -> dict[str, Any]:
        ws = kube.get(API_VERSION, "Workspace", args.namespace, args.name)
        if ws is None:
            raise SystemExit(f"Workspace {args.namespace}/{args.name} not found (check -n NAMESPACE)")
        return ws

    return read


def _status(args: argparse.Namespace) -> int:
    read = _reader(args)
    if not args.watch:
        print("\n".join(status_lines(read())))
        return 0
    code, ws = watch(read, interval_s=args.interval)
    print("\n".join(status_lines(ws)))
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser(
        "status", help="a Workspace's conditions, tuning status and (with --watch) a live progress bar"
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument("-n", "--namespace", default="default")
    status.add_argument("--watch", action="store_true", help="follow progress until it succeeds or fails")
    status.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config (in a pod: in-cluster)")
    status.add_argument("--interval", type=float, default=POLL_S, help=argparse.SUPPRESS)
    status.set_defaults(func=_status)
