"""The task checks of ``EvaluationConfig.checks`` (``contract.checks``), answered by a model in the pod.

Greedy decoding, one prompt at a time (no padding to get wrong), the prompt as one user turn through the
tokenizer's chat template (the raw prompt for a tokenizer without one), the new tokens decoded without
special tokens. The trainer asks the base before the first step (``train.as_base``, as for the base's
loss) and the adapter after the last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from contract.checks import passes

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("trainer")


def _inputs(tokenizer: PreTrainedTokenizerBase, prompt: str) -> Any:
    if tokenizer.chat_template:
        turn = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(
            turn, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    return tokenizer(prompt, return_tensors="pt")


def answer(model: PeftModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy answer to ``prompt``: its new tokens, decoded."""
    inputs = _inputs(tokenizer, prompt).to(model.device)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,  # training turns the cache off in the model's config; generation wants it
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


def passed(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    checks: Sequence[Mapping[str, str]],
    max_new_tokens: int,
) -> int:
    """How many ``checks`` the model passes; the model is left in the mode it was in."""
    training = model.training
    model.eval()
    try:
        count = 0
        for index, check in enumerate(checks):
            reply = answer(model, tokenizer, check["prompt"], max_new_tokens)
            ok = passes(check, reply)
            log.debug("check %d: %r -> %r (%s)", index, check["prompt"], reply, "pass" if ok else "fail")
            count += ok
        return count
    finally:
        model.train(training)
