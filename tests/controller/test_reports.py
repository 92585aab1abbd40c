"""contract.reports: the pre-flight's summary fits a termination message and the controller reads it back;
the progress and the held-out evaluation have the status's shape."""

from __future__ import annotations

import json
import math

from contract.checks import passes
from contract.reports import (
    NOT_EVALUATED,
    ProgressEvent,
    data_summary,
    evaluation_line,
    evaluation_status,
    progress_status,
    read_data_summary,
    write_data_summary,
)
from tuning_controller import status as st


def test_summary_fits_4k_with_many_long_bad_rows():
    report = {
        "ok": False,
        "rows": 10_000,
        "usable_rows": 0,
        "bad_rows": [{"index": i, "file": f"part-{i}.parquet", "reason": "x" * 500} for i in range(2000)],
        "errors": ["e" * 5000, "f" * 5000],
        "tokens": {"min": 1, "p50": 2, "max": 3, "truncated_rows": 0},
        "files": [{"path": "a.parquet", "sha256": "0" * 64}],
        "sha256": "1" * 64,
    }
    text = write_data_summary(data_summary(report))
    assert len(text.encode()) <= 3800
    summary = json.loads(text)
    assert summary["badRows"] == 2000 and summary["rows"] == 10_000 and summary["sha256"] == "1" * 64
    assert summary["firstBadRows"] and summary["firstBadRows"][0]["row"] == 0


def test_the_controller_reads_what_the_preflight_wrote():
    report = {"ok": True, "rows": 3, "usable_rows": 3, "files": [{"path": "a.jsonl"}], "sha256": "ab" * 32}
    written = write_data_summary(data_summary(report))
    outcome = st.JobOutcome(phase=st.SUCCEEDED, terminations={"preflight": written})
    assert st.data_summary(outcome) == read_data_summary(written) == json.loads(written)
    assert read_data_summary("error: not json") is None and read_data_summary("[1]") is None


def test_progress_status_is_the_printer_columns_shape():
    import datetime as dt

    event = ProgressEvent("progress", step=40, total_steps=120, loss=2.5, tokens_per_s=10.0, eta_s=95.0)
    status = progress_status(event, dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC))
    assert status == {
        "step": 40,
        "totalSteps": 120,
        "percent": 33,
        "loss": 2.5,
        "evalLoss": None,
        "tokensPerSecond": 10.0,
        "etaSeconds": 95.0,
        "event": "progress",
        "updatedAt": "2025-01-01T12:00:00Z",
    }


def test_evaluation_status_is_the_status_shape_with_perplexity_and_summary():
    evaluation = evaluation_status(2.3125, 0.84, 24)
    assert evaluation == {
        "baseLoss": 2.3125,
        "adapterLoss": 0.84,
        "basePerplexity": round(math.exp(2.3125), 4),
        "adapterPerplexity": round(math.exp(0.84), 4),
        "heldOutRows": 24,
        "summary": "2.31->0.84",
        "checks": None,
    }
    assert evaluation_line(evaluation) == (
        "held-out loss on 24 rows: base 2.312 (perplexity 10.1) -> adapter 0.84 (perplexity 2.316)"
    )
    # while training: the base only; every key is present, so a merge patch replaces an older evaluation
    during = evaluation_status(2.3125, None, 24)
    assert during["summary"] == "base 2.31" and during["adapterLoss"] is None
    assert set(during) == set(evaluation)
    assert evaluation_line(during).endswith("base 2.312 (perplexity 10.1), the adapter's after the last step")


def test_evaluation_without_held_out_rows_says_so_and_never_writes_nan():
    none = evaluation_status(None, None, 0)
    assert none["summary"] == NOT_EVALUATED and none["heldOutRows"] == 0 and none["baseLoss"] is None
    assert "DatasetConfig.train_test_split below 1" in evaluation_line(none)
    diverged = evaluation_status(float("nan"), 800.0, 3)
    assert diverged["baseLoss"] is None and diverged["basePerplexity"] is None  # JSON has no NaN
    assert diverged["adapterLoss"] == 800.0 and diverged["adapterPerplexity"] is None  # exp overflows
    assert diverged["summary"] == "nan->800"
    json.dumps(diverged, allow_nan=False)
    assert evaluation_line(diverged) == "held-out loss on 3 rows: base n/a -> adapter n/a"


def test_checks_match_exactly_by_substring_or_by_regex_and_their_score_joins_the_line():
    assert passes({"prompt": "p", "exact": "River"}, " River\n") and not passes({"exact": "River"}, "River!")
    assert passes({"contains": "red"}, "a red apple") and not passes({"contains": "Red"}, "a red apple")
    assert passes({"regex": r"^ORD-\d{3}$"}, "ORD-123") and not passes({"regex": r"^ORD-\d{3}$"}, "ORD-12")
    during = evaluation_status(2.3125, None, 24, {"passed": None, "total": 24, "basePassed": 3})
    assert evaluation_line(during).endswith("; checks: adapter not yet answered, base 3/24")
    done = evaluation_status(None, None, 0, {"passed": 20, "total": 24, "basePassed": 3})
    assert evaluation_line(done).endswith("to hold some out); checks: adapter 20/24, base 3/24")
    assert done["summary"] == NOT_EVALUATED and done["checks"] == {"passed": 20, "total": 24, "basePassed": 3}
