"""The memory estimator against published figures, and its shape: monotone, consistent, fit search exact."""

from __future__ import annotations

import pytest

from presets.catalog import get_model
from presets.memory import estimate, largest_micro_batch

# torchtune README, Llama 3.1 8B on 1x RTX 4090: batch 2, packed sequence 2048, activation checkpointing,
# chunked cross-entropy; LoRA rank 8 on q, v, output projections and the MLP.
TORCHTUNE_MODULES = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TORCHTUNE_PEAKS_GIB = {"qlora": 7.4, "lora": 16.2}
TOLERANCE = 0.15


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_llama_3_1_8b_matches_torchtune_within_tolerance(method: str) -> None:
    found = estimate(
        get_model("llama-3.1-8b-instruct"),
        method,
        micro_batch=2,
        seq_len=2048,
        gradient_checkpointing=True,
        target_modules=TORCHTUNE_MODULES,
        loss_in_chunks=True,
    )
    published = TORCHTUNE_PEAKS_GIB[method]
    assert abs(found.allocator_peak_gib - published) <= TOLERANCE * published, found.breakdown()


def test_estimate_grows_with_batch_and_sequence_and_shrinks_with_checkpointing() -> None:
    preset = get_model("phi-3-mini-4k-instruct")

    def total(**kw: object) -> float:
        args = {"micro_batch": 1, "seq_len": 1024, "gradient_checkpointing": True} | kw
        return estimate(preset, "lora", **args).total_gib  # type: ignore[arg-type]

    assert total(micro_batch=2) > total()
    assert total(seq_len=2048) > total()
    assert total(gradient_checkpointing=False) > total()
    assert total(lora_r=64) > total()
    qlora = estimate(preset, "qlora", micro_batch=1, seq_len=1024, gradient_checkpointing=True)
    assert (
        qlora.weights_gib
        < estimate(preset, "lora", micro_batch=1, seq_len=1024, gradient_checkpointing=True).weights_gib / 3
    )


def test_breakdown_adds_up() -> None:
    found = estimate(
        get_model("mistral-7b"), "qlora", micro_batch=4, seq_len=512, gradient_checkpointing=False
    )
    parts = found.breakdown()
    assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], abs=0.05)
    assert found.total_gib == pytest.approx(found.allocator_peak_gib + found.overhead_gib)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_largest_micro_batch_is_exact_and_monotone(method: str) -> None:
    preset = get_model("llama-3.1-8b-instruct")
    previous = 0
    for memory in (16.0, 24.0, 40.0, 80.0, 141.0):
        batch = largest_micro_batch(preset, method, memory, 2048, True)
        assert batch >= previous
        previous = batch
        if batch:
            fits = estimate(preset, method, micro_batch=batch, seq_len=2048, gradient_checkpointing=True)
            assert fits.total_gib <= memory
        over = estimate(preset, method, micro_batch=batch + 1, seq_len=2048, gradient_checkpointing=True)
        assert over.total_gib > memory
    longer = largest_micro_batch(preset, method, 80.0, 4096, True)
    assert longer <= largest_micro_batch(preset, method, 80.0, 2048, True)


def test_nothing_fits_gives_zero() -> None:
    assert largest_micro_batch(get_model("qwen2.5-coder-32b-instruct"), "lora", 24.0, 1024, True) == 0


def test_bad_arguments_are_refused() -> None:
    preset = get_model("tiny-llama")
    with pytest.raises(ValueError, match="method"):
        estimate(preset, "dora", micro_batch=1, seq_len=8, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="positive"):
        estimate(preset, "lora", micro_batch=0, seq_len=8, gradient_checkpointing=True)
