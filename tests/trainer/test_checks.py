"""Task checks answered by a model (trainer.checks) on the tiny preset: greedy, so the same answer twice,
scored by contract.checks, the model left in the mode it was in; and their cost per answer on this CPU."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="module")
def adapter_on_base(tiny_preset):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_preset)
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def test_greedy_answers_are_scored_by_the_checks(adapter_on_base, tiny_tokenizer):
    from trainer.checks import answer, passed

    prompt = "What is the code word for Paris?"
    first = answer(adapter_on_base, tiny_tokenizer, prompt, 8)
    assert first == answer(adapter_on_base, tiny_tokenizer, prompt, 8)  # greedy: no sampling
    adapter_on_base.train()
    checks = [
        {"prompt": prompt, "exact": first},
        {"prompt": prompt, "regex": "(?s).*"},
        {"prompt": prompt, "exact": first + " and more"},
    ]
    assert passed(adapter_on_base, tiny_tokenizer, checks, 8) == 2
    assert adapter_on_base.training  # left as it was


def test_an_answer_costs_seconds_at_most_on_a_cpu(adapter_on_base, tiny_tokenizer):
    """The figure the README quotes: seconds per answer of 32 new tokens (the default; the untrained
    adapter never stops early) on this CPU. The bound is loose: the CPU is shared with other test runs."""
    from trainer.checks import answer

    started = time.monotonic()
    for i in range(5):
        answer(adapter_on_base, tiny_tokenizer, f"What is the code word for city {i}?", 32)
    per_answer = (time.monotonic() - started) / 5
    print(f"checks: {per_answer:.3f} s per answer of up to 32 tokens")
    assert per_answer < 5.0
