"""Strength on the loaded model: 0.0 is the base model, 0.5 halves the adapter's effect, adapters add up."""

from __future__ import annotations

import pytest
import torch

from inference.adapters import discover
from inference.model import load_engine
from tests.inference.conftest import adapter_root

PROMPT = [{"role": "user", "content": "what is the code word?"}]


def logits(engine, model_id: str) -> torch.Tensor:
    batch = engine.tokenizer(engine.chat_prompt(PROMPT), return_tensors="pt", add_special_tokens=False)
    with engine.selected(model_id) as model, torch.no_grad():
        return model(**batch).logits


def delta_weight(engine, model_id: str, module: str = "q_proj") -> torch.Tensor:
    """The weight change model_id applies to layer 0's ``module`` (B @ A * scaling)."""
    layer = getattr(engine.model.base_model.model.model.layers[0].self_attn, module)
    return layer.get_delta_weight(engine._internal[model_id])


def test_strength_zero_serves_exactly_the_base_model(weak_adapter, tmp_path):
    engine = load_engine(
        "tiny-llama", discover(adapter_root(tmp_path, {"weak": weak_adapter}), {"weak": 0.0})
    )

    base = logits(engine, "tiny-llama")
    for model_id in ("weak", "tiny-llama+adapters"):
        torch.testing.assert_close(logits(engine, model_id), base, rtol=0, atol=1e-6)


def test_strength_half_is_halfway(weak_adapter, tmp_path):
    # Two copies of one adapter; "half" is also a torch.nn.Module attribute name, which PEFT cannot take.
    root = adapter_root(tmp_path, {"full": weak_adapter, "half": weak_adapter})
    engine = load_engine("tiny-llama", discover(root, {"half": 0.5}))

    torch.testing.assert_close(delta_weight(engine, "half"), 0.5 * delta_weight(engine, "full"))
    base, full, half = (logits(engine, m) for m in ("tiny-llama", "full", "half"))
    assert (full - base).abs().max() > 0.1  # the adapter does move the logits
    # The network is not linear in its weights, so logits are only nearly halfway for a small adapter.
    error = ((half - base) - 0.5 * (full - base)).norm() / (0.5 * (full - base)).norm()
    assert error < 0.15, f"logit change at 0.5 is {error:.0%} off half the change at 1.0"


def test_the_default_model_sums_the_weighted_adapters(weak_adapter, code_word_adapter, tmp_path):
    root = adapter_root(tmp_path, {"a": weak_adapter, "b": code_word_adapter})
    engine = load_engine("tiny-llama", discover(root, {"a": 0.25, "b": 0.75}))

    for module in ("q_proj", "o_proj"):
        combined = delta_weight(engine, "tiny-llama+adapters", module)
        torch.testing.assert_close(
            combined, delta_weight(engine, "a", module) + delta_weight(engine, "b", module)
        )
    assert engine.model_ids == ["tiny-llama", "a", "b", "tiny-llama+adapters"]
    assert engine.default_id == "tiny-llama+adapters"


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_one_adapter_by_name_equals_the_default(weak_adapter, tmp_path, strength):
    engine = load_engine("tiny-llama", discover(adapter_root(tmp_path, {"w": weak_adapter}), {"w": strength}))

    torch.testing.assert_close(logits(engine, "w"), logits(engine, "tiny-llama+adapters"))
