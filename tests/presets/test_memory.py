"""The memory estimator against published figures, term by term, and its shape: monotone, fit search exact."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from presets.catalog import get_model
from presets.memory import (
    GIB,
    adapter_bytes,
    dequant_bytes,
    estimate,
    largest_micro_batch,
    optimizer_family,
    weight_bytes,
)

# torchtune README, Llama 3.1 8B on 1x RTX 4090: batch 2, packed sequence 2048, activation checkpointing,
# chunked cross-entropy; LoRA rank 8 on q, v, output projections and the MLP. Measured with torchtune's
# recipe, so estimated as trainer="torchtune" (no fp32 upcast, bf16 adapters, 8-chunk loss).
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
        trainer="torchtune",
    )
    published = TORCHTUNE_PEAKS_GIB[method]
    assert abs(found.allocator_peak_gib - published) <= TOLERANCE * published, found.breakdown()


def test_loss_in_chunks_still_means_torchtune() -> None:
    preset, shape = get_model("llama-3.1-8b-instruct"), {"micro_batch": 2, "seq_len": 2048}
    old = estimate(preset, "qlora", gradient_checkpointing=True, loss_in_chunks=True, **shape)
    assert old == estimate(preset, "qlora", gradient_checkpointing=True, trainer="torchtune", **shape)
    assert old != estimate(preset, "qlora", gradient_checkpointing=True, **shape)  # default: trl
    with pytest.raises(ValueError, match="loss_in_chunks"):
        estimate(preset, "qlora", gradient_checkpointing=True, loss_in_chunks=True, trainer="trl", **shape)


def test_estimate_grows_with_batch_and_sequence_and_shrinks_with_checkpointing() -> None:
    preset = get_model("phi-3-mini-4k-instruct")

    def total(**kw: object) -> float:
        args = {"micro_batch": 1, "seq_len": 1024, "gradient_checkpointing": True} | kw
        return estimate(preset, "lora", **args).total_gib  # type: ignore[arg-type]

    assert total(micro_batch=2) > total()
    assert total(seq_len=2048) > total()
    assert total(gradient_checkpointing=False) > total()
    assert total(lora_r=64) > total()
    shape: dict[str, Any] = {"micro_batch": 1, "seq_len": 1024, "gradient_checkpointing": True}
    lora = estimate(preset, "lora", **shape).weights_gib
    # 4-bit layers; the k-bit preparation's fp32 embeddings, LM head and norms keep it above a third.
    assert estimate(preset, "qlora", **shape).weights_gib < lora / 2.5
    assert estimate(preset, "qlora", trainer="torchtune", **shape).weights_gib < lora / 3


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
    with pytest.raises(ValueError, match="trainer"):
        estimate(preset, "lora", micro_batch=1, seq_len=8, gradient_checkpointing=True, trainer="axolotl")


# The terms, each against the formula in presets/memory.py's docstring.
PHI3, LLAMA8B = get_model("phi-3-mini-4k-instruct"), get_model("llama-3.1-8b-instruct")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("preset", [PHI3, LLAMA8B], ids=lambda p: p.name)
def test_kbit_preparation_upcasts_the_unquantised_parameters_for_qlora_only(preset, dtype: str) -> None:
    w = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
    unquantised = preset.parameters - preset.layer_linear_parameters
    for eight_bit in (False, True):
        quant = {"load_in_8bit": eight_bit, "double_quant": True}
        prepared = weight_bytes(preset, "qlora", dtype, trainer="trl", **quant)
        assert prepared == weight_bytes(preset, "qlora", dtype, trainer="transformers", **quant)
        as_loaded = weight_bytes(preset, "qlora", dtype, trainer="torchtune", **quant)
        assert prepared - as_loaded == pytest.approx(unquantised * (4 - w))
    lora = {
        weight_bytes(preset, "lora", dtype, load_in_8bit=False, double_quant=True, trainer=t)
        for t in ("trl", "transformers", "torchtune")
    }
    assert lora == {preset.parameters * w}


def test_upcast_matches_the_sizes_the_issue_quotes() -> None:
    def extra(preset) -> float:
        quant = {"load_in_8bit": False, "double_quant": True}
        diff = weight_bytes(preset, "qlora", "bfloat16", trainer="trl", **quant) - weight_bytes(
            preset, "qlora", "bfloat16", trainer="torchtune", **quant
        )
        return diff / GIB

    assert 0.3 < extra(PHI3) < 0.5  # ~0.4 GiB
    assert 1.8 < extra(LLAMA8B) < 2.1  # ~2 GiB


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_dequant_buffer_is_the_largest_quantised_layer_at_the_compute_dtype(dtype: str) -> None:
    w = {"bfloat16": 2, "float32": 4}[dtype]
    h, i = LLAMA8B.hidden_size, LLAMA8B.intermediate_size
    assert dequant_bytes(LLAMA8B, "qlora", dtype) == h * i * w  # gate/up/down: the MLP's
    assert dequant_bytes(PHI3, "qlora", dtype) == PHI3.hidden_size * 2 * PHI3.intermediate_size * w  # fused
    assert dequant_bytes(LLAMA8B, "lora", dtype) == 0
    found = estimate(LLAMA8B, "qlora", micro_batch=1, seq_len=512, gradient_checkpointing=True, dtype=dtype)
    assert found.dequant_gib == pytest.approx(h * i * w / GIB)
    assert estimate(LLAMA8B, "lora", micro_batch=1, seq_len=512, gradient_checkpointing=True).dequant_gib == 0
    # 8-bit dequantises to its input's dtype, fp32 once the k-bit preparation made the stream fp32.
    assert dequant_bytes(LLAMA8B, "qlora", "bfloat16", load_in_8bit=True) == h * i * 4
    assert dequant_bytes(LLAMA8B, "qlora", "bfloat16", load_in_8bit=True, trainer="torchtune") == h * i * 2


def test_adapter_dtype_follows_the_trainer_and_adamw_states_follow_the_adapter() -> None:
    n = LLAMA8B.lora_parameters(8)

    def adapter(method: str, trainer: str, optimizer: str = "adamw_torch", dtype: str = "bfloat16") -> float:
        opts = {"lora_r": 8, "target_modules": None, "optimizer": optimizer, "trainer": trainer}
        return adapter_bytes(LLAMA8B, method, dtype, **opts)

    assert adapter("qlora", "trl") == n * (2 + 2 + 2 * 2)  # SFTTrainer's bf16 cast; AdamW states in bf16
    assert adapter("lora", "trl") == n * (4 + 4 + 2 * 4)  # PEFT's fp32 adapters
    assert adapter("qlora", "transformers") == n * (4 + 4 + 2 * 4)
    assert adapter("qlora", "torchtune") == adapter("lora", "torchtune") == n * (2 + 2 + 2 * 2)
    assert adapter("qlora", "trl", "paged_adamw_32bit") == n * (2 + 2 + 8)  # bitsandbytes: fp32 states
    assert adapter("qlora", "trl", "paged_adamw_8bit") == n * (2 + 2 + 2)
    assert adapter("lora", "trl", "sgd") == n * (4 + 4)


@pytest.mark.parametrize(
    ("optim", "family"),
    [
        ("adamw_torch", "adamw"),
        ("adamw_torch_fused", "adamw"),
        ("paged_adamw_32bit", "adamw_32bit"),
        ("adamw_bnb_8bit", "adamw_8bit"),
        ("paged_adamw_8bit", "adamw_8bit"),
        ("adafactor", "adafactor"),
        ("sgd", "sgd"),
    ],
)
def test_optimizer_families(optim: str, family: str) -> None:
    assert optimizer_family(optim) == family


def _logits(preset, trainer: str, method: str = "lora", tokens: int = 4096) -> float:
    found = estimate(
        preset, method, micro_batch=1, seq_len=tokens, gradient_checkpointing=False, trainer=trainer
    )
    return found.logits_gib * GIB


def test_trl_fused_head_never_builds_the_full_logits() -> None:
    h, tokens = LLAMA8B.hidden_size, 8192
    # bf16 LoRA: one 4096 x 32768 tile, the saved hidden states, their fp32 gradient and its bf16 cast.
    assert _logits(LLAMA8B, "trl", tokens=tokens) == 4096 * 32768 * 2 + tokens * h * (2 * 2 + 4)
    # QLoRA: the prepared model's stream (so the saved states) is fp32, and the fp32 head's chunk is cast.
    qlora = 4096 * 32768 * 2 + tokens * h * (2 * 4 + 4) + 32768 * h * 2
    assert _logits(LLAMA8B, "trl", "qlora", tokens=tokens) == qlora
    # A larger vocabulary does not grow the tile; transformers' loss grows with it.
    wider = replace(LLAMA8B, vocab_size=2 * LLAMA8B.vocab_size)
    assert _logits(wider, "trl", tokens=tokens) == _logits(LLAMA8B, "trl", tokens=tokens)
    assert _logits(wider, "transformers", tokens=tokens) > _logits(LLAMA8B, "transformers", tokens=tokens)
    assert _logits(LLAMA8B, "transformers", tokens=tokens) == tokens * LLAMA8B.vocab_size * (2 + 12)
    assert _logits(LLAMA8B, "torchtune", tokens=tokens) == tokens * LLAMA8B.vocab_size * (2 + 4 / 8)
    assert _logits(LLAMA8B, "trl", tokens=tokens) < _logits(LLAMA8B, "torchtune", tokens=tokens)


def test_prepared_qlora_keeps_the_residual_stream_in_fp32() -> None:
    preset, tokens = LLAMA8B, 2048
    h, i, layers = preset.hidden_size, preset.intermediate_size, preset.num_hidden_layers
    kv = preset.num_key_value_heads * preset.head_dim
    shape = {"micro_batch": 1, "seq_len": tokens}
    off = {"gradient_checkpointing": False, **shape}
    lora = estimate(preset, "lora", **off).activations_gib * GIB
    qlora = estimate(preset, "qlora", **off).activations_gib * GIB
    assert lora == layers * tokens * 2 * (6 * h + 2 * kv + 4 * i)
    assert qlora - lora == layers * tokens * (4 - 2) * 3 * i  # gate, up and the activation in fp32
    assert estimate(preset, "qlora", trainer="torchtune", **off).activations_gib * GIB == lora
    # With checkpointing the kept layer inputs are fp32 (the recomputed layer is below the loss here).
    on = estimate(preset, "qlora", gradient_checkpointing=True, trainer="transformers", **shape)
    assert on.activations_gib * GIB == layers * tokens * h * 4


def test_defaults_model_the_trl_runtime() -> None:
    args = {"micro_batch": 2, "seq_len": 1024, "gradient_checkpointing": True}
    for method in ("lora", "qlora"):
        assert estimate(PHI3, method, **args) == estimate(PHI3, method, trainer="trl", **args)
    assert largest_micro_batch(PHI3, "qlora", 24.0, 1024, True) == largest_micro_batch(
        PHI3, "qlora", 24.0, 1024, True, trainer="trl"
    )
