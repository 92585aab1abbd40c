"""The trainer's side of the controller contract: data pre-flight summary, data identity, live progress.

The tuning controller runs the trainer twice, each time through this module:

    # CPU pre-flight Job: dry run; a compact summary (< 4 KiB) goes to the termination message
    python -m trainer.workspace_status preflight --summary-file /dev/termination-log -- \\
        --preset tiny-llama --config /mnt/config/training_config.yaml --data /mnt/data

    # Training: refuse data that differs from what the pre-flight checked, report progress into the
    # Workspace's status (in-cluster credentials of the Workspace's own ServiceAccount)
    python -m trainer.workspace_status train --expect-data-sha256 HEX -- --preset tiny-llama ...

Everything after ``--`` goes to ``trainer.qlora`` unchanged. The summary the controller copies into
``status.tuning.data``::

    {"ok": false, "rows": 120, "usableRows": 118, "badRows": 2, "sha256": "9f...",
     "firstBadRows": [{"row": 7, "file": "train.parquet", "reason": "..."}], "errors": ["..."],
     "trainRows": 0, "evalRows": 0, "tokens": {"min": 12, "p50": 80, "max": 300, "truncatedRows": 0}}

``WorkspaceStatusSink`` patches ``status.tuning.progress`` of the Workspace named by the environment
(KAITO_WORKSPACE_NAME, KAITO_WORKSPACE_NAMESPACE, KAITO_WORKSPACE_API_VERSION) at most every
KAITO_PROGRESS_INTERVAL_S seconds (default 15, capped at 30) plus at start, evaluation and end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("trainer")

SUMMARY_MAX_BYTES = 3800  # the kubelet keeps 4096 bytes of a termination message
FIRST_BAD_ROWS = 5
MAX_INTERVAL_S = 30.0


# ---- data summary --------------------------------------------------------------------------------


def data_sha256(files: list[dict[str, Any]]) -> str:
    """The data's identity from the report's file list: the same value trainer.data.combined_sha256 gives."""
    from trainer.data import DataFile, combined_sha256

    return combined_sha256([DataFile(Path(f["path"]), f["path"], f["sha256"], 0, 0) for f in files])


def compact_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The dry-run report cut to what a person needs in ``kubectl get workspace -o yaml``."""
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
        "errors": [str(e)[:600] for e in report.get("errors") or []][:5],
        "trainRows": report.get("train_rows", 0),
        "evalRows": report.get("eval_rows", 0),
        "tokens": {
            "min": tokens.get("min"),
            "p50": tokens.get("p50"),
            "max": tokens.get("max"),
            "truncatedRows": tokens.get("truncated_rows"),
        },
    }
    if report.get("files"):
        summary["sha256"] = data_sha256(report["files"])
        summary["files"] = len(report["files"])
    return summary


def fit_summary(summary: dict[str, Any], limit: int = SUMMARY_MAX_BYTES) -> str:
    """JSON under ``limit`` bytes: drop bad-row details, then shorten error texts, until it fits."""
    summary = json.loads(json.dumps(summary))
    text = json.dumps(summary, separators=(",", ":"))
    while len(text.encode()) > limit and summary.get("firstBadRows"):
        summary["firstBadRows"].pop()
        text = json.dumps(summary, separators=(",", ":"))
    while len(text.encode()) > limit and summary.get("errors"):
        summary["errors"] = [e[: max(40, len(e) // 2)] for e in summary["errors"]]
        text = json.dumps(summary, separators=(",", ":"))
        if all(len(e) <= 40 for e in summary["errors"]):
            summary["errors"] = summary["errors"][:1]
            text = json.dumps(summary, separators=(",", ":"))[:limit]
            break
    return text


def preflight(summary_file: Path, trainer_args: list[str]) -> int:
    """Run the trainer's dry run, write the compact summary; the exit status is the trainer's."""
    from trainer import qlora

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = qlora.main([*trainer_args, "--dry-run"])
    sys.stderr.write(err.getvalue())
    sys.stdout.write(out.getvalue())
    try:
        report = json.loads(out.getvalue())
    except ValueError:  # config or preset errors: the trainer printed them on stderr only
        lines = [
            line.removeprefix("error: ") for line in err.getvalue().splitlines() if line.startswith("error:")
        ]
        report = {"ok": False, "errors": lines or [f"the data check exited {code} without a report"]}
    summary = compact_summary(report)
    summary["ok"] = summary["ok"] and code == 0
    summary_file.write_text(fit_summary(summary))
    return code


# ---- training ------------------------------------------------------------------------------------


def directory_sha256(root: Path) -> str:
    """The combined sha256 of the data files under ``root``, as the pre-flight computed it."""
    from trainer.data import find_files

    files = []
    for path in find_files(root):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        files.append({"path": str(path.relative_to(root)), "sha256": digest.hexdigest()})
    return data_sha256(files)


def _data_dir(trainer_args: list[str]) -> Path:
    from trainer.qlora import make_parser

    known, _ = make_parser().parse_known_args(trainer_args)
    return known.data


def train(expected_sha256: str | None, trainer_args: list[str]) -> int:
    from trainer import qlora

    if expected_sha256:
        data = _data_dir(trainer_args)
        found = directory_sha256(data)
        if found != expected_sha256:
            print(
                f"error: {data}: the data changed since the pre-flight check (sha256 {found}, checked "
                f"{expected_sha256}); the source was modified between the two downloads: re-apply the "
                "Workspace to check the new data",
                file=sys.stderr,
            )
            return 1
    return qlora.main(trainer_args)


# ---- live progress -------------------------------------------------------------------------------


class WorkspaceStatusSink:
    """Patches ``status.tuning.progress`` of one Workspace; a failed patch is logged, never raised."""

    def __init__(self, kube, api_version: str, namespace: str, name: str, interval_s: float = 15.0):
        self.kube = kube
        self.api_version = api_version
        self.namespace = namespace
        self.name = name
        self.interval_s = min(max(interval_s, 1.0), MAX_INTERVAL_S)
        self.last = 0.0

    @staticmethod
    def progress(event) -> dict[str, Any]:
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
            "updatedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def emit(self, event) -> None:
        now = time.monotonic()
        if event.event == "progress" and now - self.last < self.interval_s:
            return
        self.last = now
        body = {"status": {"tuning": {"progress": self.progress(event)}}}
        try:
            self.kube.merge_patch(
                self.api_version, "Workspace", self.namespace, self.name, body, subresource="status"
            )
        except Exception as exc:  # progress is informative: training must go on without it
            log.warning("progress: cannot patch Workspace %s/%s status: %s", self.namespace, self.name, exc)

    def close(self) -> None:
        return None


def status_sinks_from_env() -> list[WorkspaceStatusSink]:
    """A sink when the controller set KAITO_WORKSPACE_NAME (in its pods), else none."""
    name = os.environ.get("KAITO_WORKSPACE_NAME")
    if not name:
        return []
    from tuning_controller.kube import Kube

    try:
        kube = Kube.from_environment(field_manager="kaito-tune-trainer")
    except Exception as exc:
        log.warning("progress: no Kubernetes credentials (%s); status will not show progress", exc)
        return []
    return [
        WorkspaceStatusSink(
            kube,
            os.environ.get("KAITO_WORKSPACE_API_VERSION", "kaito.sh/v1beta1"),
            os.environ.get("KAITO_WORKSPACE_NAMESPACE", "default"),
            name,
            float(os.environ.get("KAITO_PROGRESS_INTERVAL_S", "15")),
        )
    ]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.workspace_status", description=__doc__.split("\n")[0]
    )
    steps = parser.add_subparsers(dest="step", required=True)
    pre = steps.add_parser("preflight", help="dry run; compact summary to --summary-file")
    pre.add_argument("--summary-file", type=Path, required=True)
    pre.add_argument("trainer_args", nargs=argparse.REMAINDER)
    run = steps.add_parser("train", help="verify the data's sha256, then train")
    run.add_argument("--expect-data-sha256", help="the pre-flight's data sha256")
    run.add_argument("trainer_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    rest = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    if args.step == "preflight":
        return preflight(args.summary_file, rest)
    return train(args.expect_data_sha256, rest)


if __name__ == "__main__":
    sys.exit(main())
