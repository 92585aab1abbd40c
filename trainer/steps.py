"""The tuning pod's two steps: the CPU pre-flight and the training, each returning the exit code.

The pre-flight checks config, preset and data without a model, prints the full report as JSON and writes
the compact summary (``contract.reports``) where the controller reads it. The training refuses data whose
sha256 differs from what the pre-flight checked (the source changed between the two downloads). Problems
go to stderr, one ``error:`` line each; stdout carries JSON only.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.pod import EXIT_OK, EXIT_UNUSABLE
from contract.problems import InvalidSpec, Problem
from contract.reports import data_summary, write_data_summary
from trainer.inputs import check_data, load_setup
from trainer.options import TrainerOptions

log = logging.getLogger("trainer")


def fail(problems: Sequence[Problem | str]) -> int:
    """One line per problem on stderr; a Problem already starts with its severity."""
    for problem in problems:
        text = str(problem)
        print(text if text.startswith("error: ") else f"error: {text}", file=sys.stderr)
    return EXIT_UNUSABLE


def _failed_report(problems: Sequence[Problem]) -> dict[str, Any]:
    """The report of a check that stopped before the rows: each problem's text without its severity."""
    errors = [str(p).removeprefix(f"{p.severity}: ") for p in problems]
    return {"ok": False, "errors": errors, "bad_rows": []}


def preflight(options: TrainerOptions, summary_file: Path | None = None) -> int:
    """Check everything a GPU would need, without a model: print the report, write the summary."""
    try:
        report = check_data(options, load_setup(options)).prepared.report
    except InvalidSpec as exc:
        fail(exc.problems)
        report = _failed_report(exc.problems)
    print(json.dumps(report, indent=2))
    if summary_file is not None:
        summary_file.write_text(write_data_summary(data_summary(report)))
    return EXIT_OK if report["ok"] else EXIT_UNUSABLE


def train(options: TrainerOptions, expect_data_sha256: str | None = None) -> int:
    """Check as the pre-flight did, then train; a complete adapter in the output is left as it is."""
    try:
        setup = load_setup(options)
    except InvalidSpec as exc:
        return fail(exc.problems)
    from trainer.output import is_complete  # imports torch, which the pre-flight image lacks

    if is_complete(options.output):
        log.info("%s already holds a complete adapter: nothing to do", options.output)
        return EXIT_OK
    try:
        data = check_data(options, setup)
    except InvalidSpec as exc:
        return fail(exc.problems)
    found = data.prepared.sha256
    if expect_data_sha256 and found != expect_data_sha256:
        changed = Problem(
            str(options.data),
            f"the data changed since the pre-flight check (sha256 {found}, checked {expect_data_sha256})",
            None,
            "the source was modified between the two downloads: re-apply the Workspace to check the new data",
        )
        return fail([changed])
    if not data.prepared.ok:
        return fail(data.prepared.report["errors"])
    if setup.config.collator.mlm:
        log.info(
            "DataCollator.mlm is ignored: causal LMs are trained on next tokens (kept for KAITO configs)"
        )
    from trainer import train as training

    return training.train(options, setup, data)
