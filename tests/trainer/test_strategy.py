"""The layout of a step: flattened packed rows do not see each other, and sdpa gets one row per micro-step."""

from __future__ import annotations

import pytest
import torch

from trainer.preflight import IGNORE
from trainer.strategy import choose_strategy, flattens


def _examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(10, 1000, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * (n // 2) + ids[n // 2 :]})
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_preset):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_preset, attn_implementation="sdpa").eval()


def test_trls_padding_free_batch_gives_the_logits_of_separate_forwards_under_sdpa(tiny_model):
    """What choose_strategy relies on when it flattens: sdpa turns restarting position ids into a
    block-diagonal mask, so examples in one flattened sequence never attend to each other."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = _examples([7, 19, 3, 30, 11])
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert "attention_mask" not in batch and batch["position_ids"][0, 7].item() == 0
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        start = 0
        for example in examples:
            alone = tiny_model(input_ids=torch.tensor([example["input_ids"]]), use_cache=False)
            n = len(example["input_ids"])
            torch.testing.assert_close(
                packed.logits[0, start : start + n], alone.logits[0], atol=1e-5, rtol=1e-4
            )
            start += n


@pytest.mark.parametrize(
    ("args", "flat"),
    [
        ({"packing": True}, True),
        ({"packing": True, "packing_strategy": "bfd_split"}, True),
        ({"packing": True, "packing_strategy": "wrapped"}, False),
        ({"packing": False}, False),
        ({"padding_free": True}, True),
        ({}, False),
    ],
)
def test_flattening_follows_trls_collator_choice(args, flat):
    assert flattens(args) is flat


def test_cpu_flattened_rows_go_one_per_micro_step_and_padded_examples_as_configured():
    packed = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "packing": True}
    strategy = choose_strategy(packed, 512, cuda=False)
    assert (strategy.micro_batch, strategy.gradient_accumulation_steps) == (1, 8)
    assert strategy.gradient_checkpointing is False and strategy.tokens_per_step == 8 * 512
    padded = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "packing": False}
    strategy = choose_strategy(padded, 512, cuda=False)
    assert (strategy.micro_batch, strategy.gradient_accumulation_steps) == (4, 2)
    assert "8 examples per process" in strategy.notes[0]


def test_gpu_strategy_asks_the_estimator_when_unset():
    asked = []

    def estimator(checkpointing: bool) -> int:
        asked.append(checkpointing)
        return 6 if checkpointing else 2

    config = {"per_device_train_batch_size": 4, "packing": True}
    strategy = choose_strategy(config, 1024, cuda=True, largest_micro_batch=estimator, varlen=True)
    assert strategy.gradient_checkpointing is True  # 4 rows do not fit without it
    assert strategy.micro_batch == 4 and "micro-batch 4" in " ".join(strategy.notes)
    config = {"per_device_train_batch_size": 4, "gradient_checkpointing": False, "packing": True}
    strategy = choose_strategy(config, 1024, cuda=True, largest_micro_batch=estimator, varlen=True)
    assert (strategy.micro_batch, strategy.gradient_accumulation_steps) == (2, 2)  # split, not cut
    config = {"per_device_train_batch_size": 4, "activation_checkpointing": False, "packing": True}
    assert (
        choose_strategy(config, 1024, cuda=True, largest_micro_batch=estimator).gradient_checkpointing
        is False
    )
    strategy = choose_strategy({}, 1024, cuda=True, largest_micro_batch=estimator, varlen=True)
    assert strategy.gradient_checkpointing is False and "micro-batch 1" in " ".join(strategy.notes)
    assert False in asked and True in asked


def test_the_configs_attention_kernel_wins_and_decides_the_split():
    config = {"per_device_train_batch_size": 4, "packing": True}
    sdpa = choose_strategy(config, 1024, cuda=True, varlen=True, attn_implementation="sdpa")
    assert (sdpa.attn_implementation, sdpa.micro_batch) == ("sdpa", 1)
    flash = choose_strategy(config, 1024, cuda=True, varlen=False, attn_implementation="flash_attention_2")
    assert (flash.attn_implementation, flash.micro_batch) == ("flash_attention_2", 4)
