"""GPU fit: the estimate against the instance type's memory, with concrete ways out when it does not fit."""

from __future__ import annotations

from typing import Any

from contract.problems import Severity, errors
from contract.training_config import default_training_config, validate_training_config
from presets.catalog import get_model, get_sku
from tests.api.builders import edit
from tuning_controller.gpu_fit import fit_problems, training_shape
from tuning_controller.training_targets import target_problems
from tuning_controller.validation import validate_workspace

ARGS = "training_config.TrainingArguments"


def test_seed_qlora_fits_a_v100() -> None:
    preset, sku = get_model("phi-3-mini-4k-instruct"), get_sku("Standard_NC6s_v3")
    assert fit_problems(preset, "qlora", sku, default_training_config("qlora")) == []


def test_lora_misfit_offers_larger_skus_and_qlora() -> None:
    (problem,) = fit_problems(get_model("phi-4"), "lora", get_sku("Standard_NC6s_v3"), None)
    assert problem.path == "resource.instanceType"
    assert "does not fit" in problem.message and "15.8 GiB" in problem.message
    assert "a larger instance type: Standard_" in problem.hint
    assert "method: qlora" in problem.hint


def test_large_batch_misfit_offers_the_batch_that_fits() -> None:
    doc = edit(default_training_config("qlora"), f"{ARGS}.per_device_train_batch_size", 64)
    doc = edit(doc, f"{ARGS}.max_length", 2048)
    (problem,) = fit_problems(get_model("llama-3.1-8b-instruct"), "qlora", get_sku("g5.xlarge"), doc)
    assert "per_device_train_batch_size:" in problem.hint
    assert "micro-batch 64" in problem.message


def test_checkpointing_off_misfit_offers_checkpointing() -> None:
    doc = edit(default_training_config("qlora"), f"{ARGS}.gradient_checkpointing", False)
    doc = edit(doc, f"{ARGS}.max_length", 4096)
    (problem,) = fit_problems(get_model("llama-3.1-8b-instruct"), "qlora", get_sku("g5.xlarge"), doc)
    assert "gradient_checkpointing: true" in problem.hint
    assert "max_length:" in problem.hint


def test_unset_batch_counts_as_one_and_all_linear_expands() -> None:
    preset = get_model("mistral-7b")
    doc = edit(default_training_config("lora"), f"{ARGS}.per_device_train_batch_size", 4)
    assert training_shape(doc, "lora", preset).micro_batch == 4
    doc = edit(default_training_config("lora"), "training_config.TrainingArguments", {"output_dir": "/mnt/r"})
    doc = edit(doc, "training_config.LoraConfig.target_modules", "all-linear")
    shape = training_shape(doc, "lora", preset)
    assert shape.micro_batch == 1
    assert shape.target_modules == tuple(preset.linear_shapes())


def test_own_nodes_skip_the_fit_check(tuning_ws: dict[str, Any]) -> None:
    """KAITO's bring-your-own-nodes mode: empty instanceType, nodes chosen by labelSelector."""
    big = edit(edit(tuning_ws, "tuning.preset.name", "qwen2.5-coder-32b-instruct"), "tuning.method", "lora")
    assert "resource.instanceType" in [p.path for p in errors(validate_workspace(big))]
    own = edit(big, "resource.instanceType", "")
    assert errors(validate_workspace(own)) == []


def test_pre_ampere_gpus_get_warnings_not_errors() -> None:
    doc = edit(default_training_config("lora"), f"{ARGS}.bf16", True)
    doc = edit(doc, "training_config.ModelConfig.attn_implementation", "flash_attention_2")
    assert validate_training_config(doc, "lora") == []
    v100 = target_problems(doc, sku="Standard_NC6s_v3")
    assert {p.severity for p in v100} == {Severity.WARNING}
    assert {p.path.rsplit(".", 1)[-1] for p in v100} == {"torch_dtype", "bf16", "attn_implementation"}
    assert target_problems(doc, sku="Standard_NC24ads_A100_v4") == []
