"""Training end to end on the tiny model: it learns a task the base model cannot know, and the results
directory holds a PEFT adapter that loads, with metadata and the completion marker."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.trainer.conftest import run_trainer
from tests.trainer.synthetic import code_word_rows, code_words, held_out_checks, kaito_config, write_jsonl

pytestmark = pytest.mark.slow

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One QLoRA run on the code-word task with a held-out quarter (KAITO's template plus a few knobs,
    packing among them), the held-out prompts as task checks and a gate it passes."""
    tmp = tmp_path_factory.mktemp("quality")
    write_jsonl(tmp / "data" / "train.jsonl", code_word_rows())
    config = kaito_config(
        tmp / "config.yaml",
        learning_rate=0.003,
        num_train_epochs=60,
        max_length=128,
        packing=True,  # rows of 128 tokens, ~5 of these short conversations per step, at this rate
        logging_steps=5,
        eval_strategy="no",
        eval_on_start=True,
        DatasetConfig={"train_test_split": 0.75},
        LoraConfig={"r": 16, "lora_alpha": 32, "target_modules": ALL_LINEAR},
        EvaluationConfig={
            "min_improvement": 0.5,
            "checks": held_out_checks(code_word_rows()),
            "check_max_new_tokens": 4,
        },
    )
    # 20-40 s alone; two CPU-bound jobs beside it on 2 cores (OpenMP threads spinning) made it pass 300 s
    result = run_trainer("--config", config, "--data", tmp / "data", "--output", tmp / "out", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result


def test_eval_loss_falls_below_half_and_held_out_prompts_are_answered(trained, tiny_preset):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import DatasetOptions
    from trainer.preflight import _split

    tmp, _ = trained
    metadata = json.loads((tmp / "out" / "metadata.json").read_text())
    evaluation, metrics = metadata["evaluation"], metadata["metrics"]
    # the base model before the first step, the adapter after the last, on the 24 held-out rows
    assert evaluation["heldOutRows"] == 24
    assert evaluation["adapterLoss"] < evaluation["baseLoss"] / 2, evaluation
    assert evaluation["adapterLoss"] == round(metrics["eval_loss"], 4)
    assert evaluation["basePerplexity"] == pytest.approx(math.exp(evaluation["baseLoss"]), rel=1e-3)
    assert evaluation["adapterPerplexity"] == pytest.approx(math.exp(evaluation["adapterLoss"]), rel=1e-3)
    assert re.fullmatch(r"\d+(\.\d+)?->\d+(\.\d+)?", evaluation["summary"]), evaluation  # e.g. 6.69->0.84
    assert 0 < metrics["evaluation_s"] < metrics["train_runtime_s"] / 10  # two passes over 24 rows
    # EvaluationConfig.min_improvement 0.5: the adapter's loss is below half the base's, the push may run
    assert metadata["gate"]["passed"] and metadata["gate"]["improvement"] > 0.5, metadata["gate"]
    # the task checks: the held-out prompts, answered greedily by the base (before) and the adapter (after)
    checks = evaluation["checks"]
    assert checks["total"] == 24 and checks["passed"] > 12 and checks["passed"] > checks["basePassed"], checks
    assert 0 < metrics["checks_s"] < 48 * 2  # 48 answers of at most 4 tokens: well under 2 s each on a CPU

    tokenizer = AutoTokenizer.from_pretrained(tiny_preset)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_preset), tmp / "out").eval()
    rows = code_word_rows()
    # the same shuffle and split the trainer used: these prompts were never trained on
    _, held_out = _split(list(range(len(rows))), DatasetOptions(train_test_split=0.75))
    answers = code_words()
    right = 0
    for i in held_out:
        prompt, expected = rows[i]["messages"][0], rows[i]["messages"][1]["content"]
        ids = tokenizer.apply_chat_template([prompt], add_generation_prompt=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        right += answer == expected
    assert expected in answers.values()
    assert right / len(held_out) > 0.5, f"{right}/{len(held_out)} held-out prompts answered right"


def test_results_directory_holds_adapter_metadata_and_marker(trained):
    tmp, _ = trained
    out = tmp / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "metadata.json", ".kaito-complete"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "checkpoints").exists()
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["preset"] == "tiny-llama" and metadata["method"] == "qlora"
    assert len(metadata["config_sha256"]) == 64 and len(metadata["data_sha256"]["combined"]) == 64
    assert list(metadata["data_sha256"]["files"]) == ["train.jsonl"]
    assert metadata["data"]["train_rows"] == 72 and metadata["data"]["eval_rows"] == 24
    marker = json.loads((out / ".kaito-complete").read_text())
    assert "adapter_model.safetensors" in marker["files"]


def test_progress_is_json_lines_with_loss_rate_and_eta(trained):
    _, result = trained
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "done" in kinds
    done = events[kinds.index("done")]
    assert done["step"] == done["total_steps"] > 0
    assert done["loss"] > 0 and done["learning_rate"] is not None and done["tokens_per_s"] > 0
    assert events[1]["event"] == "eval" and events[1]["step"] == 0  # eval_on_start
    # the base's loss rides on the first event, both losses on the last
    assert events[0]["evaluation"]["summary"].startswith("base ")
    assert events[-1]["event"] == "evaluated" and events[-1]["evaluation"]["adapterLoss"] is not None
    assert events[0]["evaluation"]["checks"]["passed"] is None  # the base's count only, at the start
    assert events[-1]["evaluation"]["checks"]["passed"] is not None


def test_a_rerun_after_completion_does_nothing(trained):
    tmp, _ = trained
    before = (tmp / "out" / "adapter_model.safetensors").stat().st_mtime_ns
    config = tmp / "config.yaml"
    result = run_trainer("--config", config, "--data", tmp / "data", "--output", tmp / "out")
    assert result.returncode == 0 and "already holds a complete adapter" in result.stderr
    assert (tmp / "out" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_an_adapter_below_the_gate_is_kept_complete_and_its_push_refused(tmp_path, capsys):
    """Two steps cannot lower the loss by 99%: the trainer still writes the adapter and the marker (exit 0,
    so torchrun's pods are not retried), the push step refuses it from metadata.json before reaching the
    registry, and a retried pod's train step finds the adapter complete and trains nothing."""
    from contract.pod import EXIT_NOT_BETTER
    from tuning_controller.cli import main

    write_jsonl(tmp_path / "data" / "train.jsonl", code_word_rows())
    config = kaito_config(
        tmp_path / "config.yaml",
        max_steps=2,
        max_length=128,
        DatasetConfig={"train_test_split": 0.75},
        EvaluationConfig={"min_improvement": 0.99},
    )
    out = tmp_path / "out"
    args = ("--config", config, "--data", tmp_path / "data", "--output", out)
    result = run_trainer(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gate failed (the push step will refuse)" in result.stderr
    gate = json.loads((out / "metadata.json").read_text())["gate"]
    assert gate["passed"] is False and gate["minImprovement"] == 0.99 and gate["improvement"] < 0.99
    assert (out / ".kaito-complete").is_file() and (out / "adapter_model.safetensors").is_file()

    log = tmp_path / "termination-log"
    refused = main(["push", str(out), "127.0.0.1:9/adapters/worse:v1", "--termination-log", str(log)])
    assert refused == EXIT_NOT_BETTER  # port 9 (discard) was never dialled: the refusal comes first
    assert (
        log.read_text().startswith("not pushed: held-out loss: base ")
        and "at least 99.0% lower" in log.read_text()
    )

    again = run_trainer(*args)
    assert again.returncode == 0 and "already holds a complete adapter" in again.stderr
