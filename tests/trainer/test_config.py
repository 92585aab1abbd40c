"""The training config: KAITO's templates parse, typos are caught with the section and a suggestion."""

from __future__ import annotations

import pytest

from tests.trainer.synthetic import kaito_config
from trainer import config as cfg


def test_kaito_qlora_template_parses_and_means_qlora(tmp_path):
    config = cfg.load(kaito_config(tmp_path / "c.yaml"))
    assert config.method == "qlora"
    assert config.collator.mlm is True
    assert config.dataset.train_test_split == 1
    assert config.max_length == 1024
    assert len(config.sha256()) == 64
    # KAITO's step, one example: packing at this batch of 1 took 5x as long to the same held-out loss
    # (benchmarks/RESULTS.md, trainer_throughput)
    assert config.packing == "off"


def test_lora_template_means_lora_and_builds_no_quantization(tmp_path):
    config = cfg.load(kaito_config(tmp_path / "c.yaml", QuantizationConfig={"load_in_4bit": False}))
    assert config.method == "lora" and config.packing == "off"
    assert cfg.quantization_config(config.section("QuantizationConfig"), on_cpu=True) is None


def test_cpu_gets_float32_compute_even_when_config_asks_bfloat16(tmp_path):
    import torch

    config = cfg.load(kaito_config(tmp_path / "c.yaml"))
    quant = cfg.quantization_config(config.section("QuantizationConfig"), on_cpu=True)
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.float32
    assert cfg.model_kwargs(config.section("ModelConfig"), on_cpu=False)["dtype"] == torch.bfloat16


def test_unknown_key_names_section_key_and_close_match(tmp_path):
    path = kaito_config(tmp_path / "c.yaml", learning_rat=1e-4)
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(path)
    [problem] = caught.value.problems
    assert problem.path == "training_config.TrainingArguments.learning_rat"
    assert "learning_rate" in problem.hint


def test_unknown_section_lists_the_allowed_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training_config:\n  Optimizer: {lr: 1}\n")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(path)
    assert "DatasetConfig" in str(caught.value) and "training_config.Optimizer" in str(caught.value)


def test_train_test_split_out_of_range_is_refused(tmp_path):
    path = kaito_config(tmp_path / "c.yaml", DatasetConfig={"train_test_split": 0})
    with pytest.raises(cfg.ConfigError, match="train_test_split"):
        cfg.load(path)
