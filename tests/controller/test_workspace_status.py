"""trainer.workspace_status: the summary fits a termination message; the data identity is stable."""

from __future__ import annotations

import json

from tests.controller.conftest import make_parquet
from trainer.data import read_rows
from trainer.workspace_status import compact_summary, data_sha256, directory_sha256, fit_summary


def test_summary_fits_4k_with_many_long_bad_rows():
    report = {
        "ok": False,
        "rows": 10_000,
        "usable_rows": 0,
        "bad_rows": [{"index": i, "file": f"part-{i}.parquet", "reason": "x" * 500} for i in range(2000)],
        "errors": ["e" * 5000, "f" * 5000],
        "tokens": {"min": 1, "p50": 2, "max": 3, "truncated_rows": 0},
        "files": [{"path": "a.parquet", "sha256": "0" * 64}],
    }
    text = fit_summary(compact_summary(report))
    assert len(text.encode()) <= 3800
    summary = json.loads(text)
    assert summary["badRows"] == 2000 and summary["rows"] == 10_000 and summary["sha256"]
    assert summary["firstBadRows"] and summary["firstBadRows"][0]["row"] == 0


def test_data_sha256_matches_the_trainers_and_the_directory_hash(tmp_path):
    make_parquet(tmp_path / "b.parquet", rows=3)
    make_parquet(tmp_path / "a.parquet", rows=4)
    _, files = read_rows(tmp_path)
    from trainer.data import combined_sha256

    listed = [{"path": f.relpath, "sha256": f.sha256} for f in files]
    assert data_sha256(listed) == combined_sha256(files) == directory_sha256(tmp_path)
    make_parquet(tmp_path / "a.parquet", rows=5)
    assert directory_sha256(tmp_path) != combined_sha256(files)
