"""Pre-flight: every bad input gives one clear message, with row numbers in the concatenated input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.trainer.synthetic import kaito_config, write_jsonl
from trainer.config import CollatorOptions, DatasetOptions
from trainer.data import DataError, combined_sha256, read_rows
from trainer.preflight import IGNORE, prepare
from trainer.qlora import main

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


def _prepare(tmp_path, tokenizer, rows, max_length=64, **options):
    write_jsonl(tmp_path / "data" / "a.jsonl", rows)
    table, files = read_rows(tmp_path / "data")
    return prepare(table, files, tokenizer, DatasetOptions(**options), CollatorOptions(), max_length)


def test_assistant_only_labels_cover_exactly_the_answer(tmp_path, tiny_tokenizer):
    prepared = _prepare(tmp_path, tiny_tokenizer, [GOOD])
    [example] = prepared.train
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE]
    assert tiny_tokenizer.decode(trained).startswith("hello there<|end|>")
    assert "hi" not in tiny_tokenizer.decode(trained)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "wizard", "content": "hi"}, GOOD["messages"][1]]}, "unknown role 'wizard'"),
        # the data's own text goes into status messages at most 40 characters long
        (
            {"messages": [{"role": "x" * 5000, "content": "hi"}, GOOD["messages"][1]]},
            f"role '{'x' * 36}...; allowed",
        ),
        ({"messages": [{"role": "user", "content": 42}, GOOD["messages"][1]]}, "must be a string, got int"),
        ({"messages": [GOOD["messages"][0], {"role": "assistant", "content": " "}]}, "is empty"),
    ],
)
def test_bad_row_is_reported_with_its_index_and_reason(tmp_path, tiny_tokenizer, row, reason):
    prepared = _prepare(tmp_path, tiny_tokenizer, [GOOD, row, GOOD])
    assert not prepared.ok
    assert [b["index"] for b in prepared.report["bad_rows"]] == [1]
    assert reason in prepared.report["bad_rows"][0]["reason"]
    [error] = prepared.report["errors"]
    assert "row 1" in error and "skip_bad_rows" in error


def test_skip_bad_rows_trains_on_the_rest_and_counts_them(tmp_path, tiny_tokenizer):
    prepared = _prepare(tmp_path, tiny_tokenizer, [GOOD, {"messages": []}, GOOD], skip_bad_rows=True)
    assert prepared.ok and prepared.report["skipped_rows"] == 1 and len(prepared.train) == 2


def test_every_row_too_long_is_one_message(tmp_path, tiny_tokenizer):
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    prepared = _prepare(tmp_path, tiny_tokenizer, [long, long], max_length=32)
    assert prepared.report["errors"] == [
        "every row is longer than max_length 32; raise DatasetConfig.max_length "
        "(or TrainingArguments.max_length) or shorten the data"
    ]


def test_several_files_are_concatenated_in_path_order(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "x", "completion": "y"}, {"prompt": "x", "completion": 3}]
    write_jsonl(tmp_path / "data" / "b.jsonl", rows)
    pq.write_table(pa.Table.from_pylist([{"text": "plain text row"}]), tmp_path / "data" / "a.parquet")
    rows, files = read_rows(tmp_path / "data")
    prepared = prepare(rows, files, tiny_tokenizer, DatasetOptions(), CollatorOptions(), 64)
    assert [f["path"] for f in prepared.report["files"]] == ["a.parquet", "b.jsonl"]
    assert prepared.report["bad_rows"] == [
        {"index": 2, "file": "b.jsonl", "reason": "completion must be a string, got int"}
    ]


def test_length_report_counts_truncation(tmp_path, tiny_tokenizer):
    long = {"text": "word " * 100}
    prepared = _prepare(tmp_path, tiny_tokenizer, [long, {"text": "short"}], max_length=32)
    tokens = prepared.report["tokens"]
    assert prepared.ok and tokens["truncated_rows"] == 1 and tokens["truncation_rate"] == 0.5
    assert sum(b["rows"] for b in tokens["histogram"]) == 2


def test_missing_configured_column_names_the_file_and_the_columns(tmp_path):
    write_jsonl(tmp_path / "data" / "a.jsonl", [GOOD])
    rows, files = read_rows(tmp_path / "data")
    expected = r"a.jsonl: missing column\(s\) \['conversation'\]; found \['messages'\]"
    with pytest.raises(DataError, match=expected):
        prepare(rows, files, None, DatasetOptions(messages_column="conversation"), CollatorOptions(), 64)


def _cli(tmp_path, capsys, *extra, step=None, **config_options):
    config = kaito_config(tmp_path / "config.yaml", **config_options)
    args = ["--preset", "tiny-llama", "--config", str(config), "--data", str(tmp_path / "data"), *extra]
    code = main([step, *args] if step else args)
    return code, capsys.readouterr()


def test_dry_run_prints_the_report_and_fails_on_bad_rows(tmp_path, capsys, tiny_preset):
    write_jsonl(tmp_path / "data" / "a.jsonl", [GOOD, {"messages": [{"role": "user", "content": "hi"}]}])
    code, out = _cli(tmp_path, capsys, "--dry-run")
    report = json.loads(out.out)
    assert code == 1 and report["bad_rows"][0]["index"] == 1 and report["usable_rows"] == 1
    assert report["tokens"]["max"] >= report["tokens"]["min"] > 0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.mkdir(), "no data files in the input directory"),
        (
            lambda d: (d.mkdir(), (d / "x.parquet").write_bytes(b"not parquet")),
            "x.parquet: cannot read this parquet",
        ),
        (lambda d: write_jsonl(d / "a.jsonl", [{"question": "q"}]), "no usable columns; found ['question']"),
    ],
)
def test_unusable_input_fails_with_one_clear_message(tmp_path, capsys, tiny_preset, setup, message):
    setup(tmp_path / "data")
    code, out = _cli(tmp_path, capsys, "--output", str(tmp_path / "out"))
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "out").exists()


def test_unknown_preset_names_the_nearest(tmp_path, capsys):
    write_jsonl(tmp_path / "data" / "a.jsonl", [GOOD])
    code = main(["--preset", "tiny-lama", "--config", str(kaito_config(tmp_path / "c.yaml")), "--data", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "unknown model preset 'tiny-lama'" in err and "tiny-llama" in err


def test_unknown_config_key_is_one_message(tmp_path, capsys):
    code = main(["--preset", "tiny-llama", "--config", str(kaito_config(tmp_path / "c.yaml", lora_r=8))])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "TrainingArguments.lora_r: unknown option" in errors[0]


def test_preflight_step_writes_the_summary_the_controller_reads(tmp_path, capsys, tiny_preset):
    write_jsonl(tmp_path / "data" / "a.jsonl", [GOOD, {"messages": [{"role": "user", "content": "hi"}]}])
    code, out = _cli(tmp_path, capsys, "--summary-file", str(tmp_path / "summary"), step="preflight")
    report, summary = json.loads(out.out), json.loads((tmp_path / "summary").read_text())
    assert code == 1 and not summary["ok"] and summary["badRows"] == 1 and summary["usableRows"] == 1
    assert summary["firstBadRows"][0] == {
        "row": 1,
        "file": "a.jsonl",
        "reason": report["bad_rows"][0]["reason"],
    }
    assert summary["sha256"] == report["sha256"] == combined_sha256(read_rows(tmp_path / "data")[1])


def test_preflight_step_summarises_a_config_error(tmp_path, capsys):
    code, out = _cli(
        tmp_path, capsys, "--summary-file", str(tmp_path / "summary"), step="preflight", lora_r=8
    )
    summary = json.loads((tmp_path / "summary").read_text())
    assert code == 1 and not summary["ok"] and "sha256" not in summary
    [error] = summary["errors"]
    assert error.startswith("training_config.TrainingArguments.lora_r: unknown option")
    assert f"error: {error}" in out.err


def test_train_step_refuses_data_that_changed_since_the_preflight(tmp_path, capsys, tiny_preset):
    write_jsonl(tmp_path / "data" / "a.jsonl", [GOOD])
    code, out = _cli(tmp_path, capsys, step="preflight")
    checked = json.loads(out.out)["sha256"]
    write_jsonl(tmp_path / "data" / "a.jsonl", [GOOD, GOOD])
    code, out = _cli(
        tmp_path, capsys, "--expect-data-sha256", checked, "--output", str(tmp_path / "out"), step="train"
    )
    assert code == 1 and "the data changed since the pre-flight check" in out.err and checked in out.err
    assert not (tmp_path / "out").exists()
