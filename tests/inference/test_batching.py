"""Batched greedy generation answers exactly as one request at a time."""

from __future__ import annotations

from inference.adapters import discover
from inference.model import SamplingParams, load_engine
from tests.inference.conftest import adapter_root

QUESTIONS = ["what is the code word?", "tell me about the river", "hello"]


def test_a_batch_of_different_prompts_and_lengths_matches_single_requests(code_word_adapter, tmp_path):
    engine = load_engine("tiny-llama", discover(adapter_root(tmp_path, {"code": code_word_adapter}), {}))
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    params = [SamplingParams(max_new_tokens=n) for n in (24, 6, 15)]

    finishes = set()
    for model_id in (engine.default_id, engine.base_id):
        batched = engine.generate_batch(model_id, prompts, params)
        single = [engine.generate(model_id, p, q) for p, q in zip(prompts, params, strict=True)]
        assert batched == single, model_id
        finishes |= {g.finish_reason for g in single}
    assert finishes == {"stop", "length"}  # rows ending early and rows cut at their length


def test_only_plain_greedy_requests_share_a_batch():
    greedy = SamplingParams(max_new_tokens=10)

    assert greedy.batches_with(SamplingParams(max_new_tokens=50))
    assert not greedy.batches_with(SamplingParams(max_new_tokens=10, repetition_penalty=1.2))
    assert not SamplingParams(max_new_tokens=10, do_sample=True).batches_with(
        SamplingParams(max_new_tokens=10, do_sample=True)
    )
    assert not SamplingParams(max_new_tokens=10, stop=("x",)).batches_with(
        SamplingParams(max_new_tokens=10, stop=("x",))
    )
