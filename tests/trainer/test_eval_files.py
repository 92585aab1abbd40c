"""DatasetConfig.eval_files: the rows of the named files are the held-out set, whole and in file order;
every other file trains. Patterns that match nothing, or leave nothing to train on, stop the pre-flight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contract.reports import EVAL_FILES_SHOWN, data_summary, write_data_summary
from tests.trainer.synthetic import kaito_config, write_jsonl
from trainer.config import CollatorOptions, DatasetOptions
from trainer.data import read_rows
from trainer.preflight import Prepared, prepare
from trainer.qlora import main


def _rows(name: str, count: int) -> list[dict[str, Any]]:
    return [{"prompt": f"{name} question {i}?", "completion": f" answer {i}"} for i in range(count)]


def _prepare(data: Path, tokenizer: Any, **options: Any) -> Prepared:
    rows, files = read_rows(data)
    return prepare(rows, files, tokenizer, DatasetOptions(**options), CollatorOptions(), 64)


def test_the_eval_files_rows_are_the_held_out_set_in_file_order(tmp_path, tiny_tokenizer):
    data = tmp_path / "data"
    write_jsonl(data / "a-train.jsonl", _rows("a", 5))
    write_jsonl(data / "b-eval.jsonl", _rows("b", 3))  # rows 5, 6, 7 of the concatenation
    write_jsonl(data / "c-train.jsonl", _rows("c", 4))
    prepared = _prepare(data, tiny_tokenizer, eval_files=("b-eval.jsonl",), shuffle_seed=3)
    assert prepared.ok
    assert [e.index for e in prepared.eval] == [5, 6, 7]  # whole, in file order, though shuffling is on
    train = [e.index for e in prepared.train]
    assert sorted(train) == [0, 1, 2, 3, 4, 8, 9, 10, 11] and train != sorted(train)  # the rest, shuffled
    report = prepared.report
    assert (report["train_rows"], report["eval_rows"], report["eval_files"]) == (9, 3, ["b-eval.jsonl"])
    same_seed = _prepare(data, tiny_tokenizer, eval_files=("b-eval.jsonl",), shuffle_seed=3)
    assert [e.index for e in same_seed.train] == train
    split = _prepare(data, tiny_tokenizer, train_test_split=0.75)
    assert split.report["eval_files"] == [] and split.report["eval_rows"] == 3


def test_globs_select_files_by_their_path_inside_the_input(tmp_path, tiny_tokenizer):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", _rows("t", 4))
    write_jsonl(data / "held" / "eval-1.jsonl", _rows("e", 2))
    pq.write_table(pa.Table.from_pylist(_rows("p", 2)), data / "held" / "eval-2.parquet")
    write_jsonl(data / "held" / "notes.jsonl", _rows("n", 1))
    prepared = _prepare(data, tiny_tokenizer, eval_files=("held/eval-*",), shuffle_dataset=False)
    assert prepared.ok and prepared.report["eval_files"] == ["held/eval-1.jsonl", "held/eval-2.parquet"]
    assert [e.index for e in prepared.eval] == [0, 1, 2, 3]  # files in path order: held/... sorts first
    assert [e.index for e in prepared.train] == [4, 5, 6, 7, 8]  # held/notes.jsonl and train.jsonl
    everywhere = _prepare(data, tiny_tokenizer, eval_files=("*.parquet",))  # `*` crosses folders
    assert everywhere.report["eval_files"] == ["held/eval-2.parquet"]


def test_a_pattern_matching_no_file_names_itself_and_the_files(tmp_path, tiny_tokenizer):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", _rows("t", 4))
    write_jsonl(data / "eval.jsonl", _rows("e", 2))
    prepared = _prepare(data, tiny_tokenizer, eval_files=("eval.jsonl", "valid*.parquet"))
    assert not prepared.ok and prepared.train == prepared.eval == []
    assert prepared.report["errors"] == [
        "DatasetConfig.eval_files: 'valid*.parquet' matches no data file (the files: eval.jsonl, train.jsonl)"
    ]


def test_eval_files_that_leave_no_training_file_are_refused(tmp_path, tiny_tokenizer):
    data = tmp_path / "data"
    write_jsonl(data / "eval-1.jsonl", _rows("a", 2))
    write_jsonl(data / "eval-2.jsonl", _rows("b", 2))
    prepared = _prepare(data, tiny_tokenizer, eval_files=("eval-1.jsonl", "eval-*.jsonl"))
    assert not prepared.ok and prepared.report["train_rows"] == 0
    assert prepared.report["errors"] == [
        "DatasetConfig.eval_files holds out every data file (eval-1.jsonl, eval-2.jsonl): nothing is left "
        "to train on; keep at least one file out of it"
    ]


def test_an_eval_files_bad_rows_count_like_any_others(tmp_path, tiny_tokenizer):
    data = tmp_path / "data"
    write_jsonl(data / "eval.jsonl", [*_rows("e", 1), {"prompt": "q", "completion": 3}])
    write_jsonl(data / "train.jsonl", _rows("t", 3))
    refused = _prepare(data, tiny_tokenizer, eval_files=("eval.jsonl",))
    assert (
        not refused.ok
        and "1 of 5 rows are unusable (first: row 1 in eval.jsonl" in refused.report["errors"][0]
    )
    skipped = _prepare(data, tiny_tokenizer, eval_files=("eval.jsonl",), skip_bad_rows=True)
    assert skipped.ok and skipped.report["skipped_rows"] == 1 and [e.index for e in skipped.eval] == [0]
    write_jsonl(data / "eval.jsonl", [{"prompt": "q", "completion": 3}])
    emptied = _prepare(data, tiny_tokenizer, eval_files=("eval.jsonl",), skip_bad_rows=True)
    assert emptied.report["errors"] == [
        "no usable rows in the eval files (eval.jsonl): nothing to evaluate on"
    ]


def test_the_preflight_summary_says_where_the_held_out_rows_came_from(tmp_path, capsys, tiny_preset):
    write_jsonl(tmp_path / "data" / "train.jsonl", _rows("t", 4))
    write_jsonl(tmp_path / "data" / "eval.jsonl", _rows("e", 2))
    config = kaito_config(tmp_path / "config.yaml", DatasetConfig={"eval_files": ["eval.jsonl"]})
    summary_file = tmp_path / "summary"
    args = ["--preset", "tiny-llama", "--config", str(config), "--data", str(tmp_path / "data")]
    code = main(["preflight", *args, "--summary-file", str(summary_file)])
    report, summary = json.loads(capsys.readouterr().out), json.loads(summary_file.read_text())
    assert code == 0 and report["eval_files"] == summary["evalFiles"] == ["eval.jsonl"]
    assert (summary["trainRows"], summary["evalRows"]) == (4, 2)


def test_a_long_list_of_eval_files_fits_the_termination_message():
    names = [f"held/{'x' * 300}-{i}.parquet" for i in range(500)]
    report = {"ok": True, "rows": 500, "eval_rows": 500, "eval_files": names, "errors": ["e" * 600] * 5}
    summary = data_summary(report)
    assert len(summary["evalFiles"]) == EVAL_FILES_SHOWN and all(len(n) == 200 for n in summary["evalFiles"])
    text = write_data_summary(summary, limit=1500)
    assert len(text.encode()) <= 1500 and json.loads(text)["evalRows"] == 500
