"""Packed sequences do not see each other, and the per-token loss equals the model's own loss."""

from __future__ import annotations

import pytest
import torch

from trainer.packing import choose_strategy, collate, cpu_row_tokens, pack
from trainer.preflight import IGNORE, Encoded


def _examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(10, 1000, (n,), generator=g).tolist()
        labels = [IGNORE] * (n // 2) + ids[n // 2 :]
        out.append(Encoded(i, ids, labels, n))
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_preset):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_preset, attn_implementation="sdpa").eval()


def test_packed_logits_match_separate_forwards(tiny_model):
    examples = _examples([7, 19, 3, 30, 11])
    [row] = pack(examples, row_tokens=1000)
    batch = collate([row])
    assert batch["position_ids"][0, 7].item() == 0 and batch["position_ids"][0, 26].item() == 0
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        start = 0
        for example in examples:
            alone = tiny_model(input_ids=torch.tensor([example.input_ids]), use_cache=False)
            n = len(example.input_ids)
            got = packed.logits[0, start : start + n]
            torch.testing.assert_close(got, alone.logits[0], atol=1e-5, rtol=1e-4)
            start += n


def test_trained_position_loss_equals_the_models_loss_on_separate_sequences(tiny_model):
    from trainer.sft import PackedTrainer

    examples = _examples([12, 25, 9])
    batch = collate(pack(examples, row_tokens=1000))
    ours = PackedTrainer.compute_loss(None, tiny_model, batch)  # eval path: mean over trained tokens
    total, count = 0.0, 0
    for example in examples:
        labels = torch.tensor([example.labels])
        out = tiny_model(input_ids=torch.tensor([example.input_ids]), labels=labels, use_cache=False)
        n = int((labels[0, 1:] != IGNORE).sum())
        total, count = total + out.loss.item() * n, count + n
    assert ours.item() == pytest.approx(total / count, rel=1e-5)


def test_next_fit_packing_keeps_order_and_budget():
    rows = pack(_examples([400, 500, 200, 900, 100]), row_tokens=1024)
    assert [[e.index for e in row] for row in rows] == [[0, 1], [2], [3, 4]]


def test_cpu_strategy_is_one_row_per_micro_step_with_accumulation():
    config = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    strategy = choose_strategy(config, 512, cuda=False)
    assert (strategy.rows_per_micro_step, strategy.gradient_accumulation_steps) == (1, 8)
    assert strategy.gradient_checkpointing is False and strategy.row_tokens == 512


def test_gpu_strategy_asks_the_estimator_when_unset():
    asked = []

    def estimator(checkpointing: bool) -> int:
        asked.append(checkpointing)
        return 6 if checkpointing else 2

    config = {"per_device_train_batch_size": 4}
    strategy = choose_strategy(config, 1024, cuda=True, largest_micro_batch=estimator, varlen=True)
    assert strategy.gradient_checkpointing is True  # 4 rows do not fit without it
    assert strategy.rows_per_micro_step == 4 and "micro-batch 4 rows" in " ".join(strategy.notes)
    config = {"per_device_train_batch_size": 4, "gradient_checkpointing": False}
    strategy = choose_strategy(config, 1024, cuda=True, largest_micro_batch=estimator, varlen=True)
    assert (strategy.rows_per_micro_step, strategy.gradient_accumulation_steps) == (2, 2)  # split, not cut
    strategy = choose_strategy({}, 1024, cuda=True, largest_micro_batch=estimator, varlen=True)
    assert strategy.gradient_checkpointing is False and "micro-batch 1 rows" in " ".join(strategy.notes)
    assert False in asked and True in asked


def test_cpu_rows_shrink_for_small_models_and_accumulation_keeps_the_tokens():
    from transformers import LlamaConfig

    from presets.tiny import TINY_CONFIG

    small = LlamaConfig(**TINY_CONFIG)
    seven_b = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008
    )
    assert cpu_row_tokens(small, 1024) == 256 and cpu_row_tokens(small, 128) == 128
    assert cpu_row_tokens(seven_b, 2048) == 2048
    strategy = choose_strategy({"per_device_train_batch_size": 2}, 1024, cuda=False, cpu_row=256)
    assert (strategy.row_tokens, strategy.gradient_accumulation_steps) == (256, 8)  # 2 x 1024 tokens a step
