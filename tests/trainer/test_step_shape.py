"""The optimizer step is the config's, whatever the GPU: memory only chooses how a step is split."""

from __future__ import annotations

import pytest

from presets.catalog import get_model
from presets.memory import largest_micro_batch
from trainer.strategy import choose_strategy, configured_step, split_step

PHI3 = get_model("phi-3-mini-4k-instruct")
H200_GIB, SMALL_GIB = 141.0, 24.0
MAX_LENGTH = 1024


def _estimator(gib: float):
    """What trainer.train._estimator gives on a GPU of ``gib`` (phi-3-mini, QLoRA, rows of 1024)."""
    return lambda checkpointing: largest_micro_batch(PHI3, "qlora", gib, MAX_LENGTH, checkpointing)


def _strategy(config: dict, gib: float, varlen: bool = True):
    config = {"packing": True, **config}
    return choose_strategy(config, MAX_LENGTH, cuda=True, largest_micro_batch=_estimator(gib), varlen=varlen)


@pytest.mark.parametrize("varlen", [True, False])
def test_h200_and_a_24gb_card_train_the_same_global_batch(varlen):
    config = {
        "per_device_train_batch_size": 16,
        "gradient_accumulation_steps": 2,
        "gradient_checkpointing": False,
    }
    assert _estimator(H200_GIB)(False) > 16 > _estimator(SMALL_GIB)(False) >= 1  # the big card fits it all
    big, small = _strategy(config, H200_GIB, varlen), _strategy(config, SMALL_GIB, varlen)
    world_size = 4
    want = 16 * 2 * MAX_LENGTH * world_size  # per-device batch x accumulation x processes, in tokens
    assert big.tokens_per_step * world_size == small.tokens_per_step * world_size == want
    for strategy in (big, small):
        assert strategy.micro_batch * strategy.gradient_accumulation_steps == 32
        assert strategy.max_length == MAX_LENGTH and strategy.gradient_checkpointing is False
    if varlen:
        assert (big.micro_batch, big.gradient_accumulation_steps) == (16, 2)  # never enlarged
        assert small.micro_batch < big.micro_batch
        assert small.micro_batch <= _estimator(SMALL_GIB)(False)  # and it fits
        assert (small.micro_batch, small.gradient_accumulation_steps) == (4, 8)  # 4 fit
    assert any("micro-batch" in note for note in small.notes)  # the chosen split is logged
    assert f"{small.gradient_accumulation_steps} accumulated" in small.notes[-1]


def test_kaito_template_and_unset_batch_give_one_row_per_step_on_any_gpu():
    """Before: an unset batch became the estimator's 36 rows on an H200 and 5 on a 24 GB card."""
    for config in ({"per_device_train_batch_size": 1}, {}):
        for gib in (H200_GIB, SMALL_GIB):
            strategy = _strategy(config, gib)
            assert (strategy.micro_batch, strategy.gradient_accumulation_steps) == (1, 1)
            assert strategy.tokens_per_step == MAX_LENGTH
            assert strategy.gradient_checkpointing is False  # one row fits without it on both


def test_checkpointing_unset_is_turned_on_only_when_the_configured_batch_needs_it():
    config = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2}
    big, small = _strategy(config, H200_GIB), _strategy(config, SMALL_GIB)
    assert big.gradient_checkpointing is False and small.gradient_checkpointing is True
    assert big.tokens_per_step == small.tokens_per_step == 32 * MAX_LENGTH


def test_unset_keys_take_kaitos_template_then_the_option_defaults():
    assert configured_step({}) == (1, 1)
    assert configured_step({"per_device_train_batch_size": None, "gradient_accumulation_steps": 3}) == (1, 3)
    assert configured_step({"per_device_train_batch_size": 8}) == (8, 1)


@pytest.mark.parametrize(
    ("rows", "limit", "micro"),
    [(32, 5, 4), (32, 64, 32), (12, 5, 4), (7, 4, 1), (7, 7, 7), (6, 0, 1), (1, 36, 1), (30, 16, 15)],
)
def test_split_step_is_the_largest_divisor_within_the_limit(rows, limit, micro):
    assert split_step(rows, limit) == micro and rows % micro == 0


def test_a_step_that_does_not_fit_splits_down_to_one_row():
    config = {
        "per_device_train_batch_size": 7,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": True,
    }
    strategy = choose_strategy(config, 1024, cuda=True, largest_micro_batch=lambda c: 4, varlen=True)
    assert (strategy.micro_batch, strategy.gradient_accumulation_steps) == (1, 7)  # 7 is prime
    strategy = choose_strategy(config, 1024, cuda=True, largest_micro_batch=lambda c: 0, varlen=True)
    assert (strategy.micro_batch, strategy.gradient_accumulation_steps) == (1, 7)


@pytest.mark.parametrize("packing", [True, False])
def test_cpu_keeps_the_configured_step(packing):
    config = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "packing": packing}
    strategy = choose_strategy(config, 1024, cuda=False)
    assert strategy.sequences_per_step == 8 and strategy.tokens_per_step == 8 * 1024
    assert choose_strategy({"packing": packing}, 1024, cuda=False).sequences_per_step == 1


def test_unpacked_examples_split_by_the_estimator_even_under_sdpa():
    """Padded examples are a plain batch (no flattened square), so the split is the estimator's alone."""
    config = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2, "packing": False}
    config["gradient_checkpointing"] = False
    small = choose_strategy(
        config, MAX_LENGTH, cuda=True, largest_micro_batch=_estimator(SMALL_GIB), varlen=False
    )
    assert (small.micro_batch, small.gradient_accumulation_steps) == (4, 8)
