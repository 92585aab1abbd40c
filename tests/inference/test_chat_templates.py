"""An adapter trained with its own chat template (saved next to it by the trainer) is prompted with it."""

from __future__ import annotations

import json

from inference.adapters import discover
from inference.model import load_engine
from tests.inference.conftest import adapter_root

TEMPLATE = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
MESSAGES = [{"role": "user", "content": "hi"}]


def test_adapter_templates_apply_to_their_model_ids(weak_adapter, tmp_path):
    root = adapter_root(tmp_path, {"own": weak_adapter, "plain": weak_adapter})
    (root / "own" / "chat_template.jinja").write_text(TEMPLATE)

    engine = load_engine("tiny-llama", discover(root, {}))

    assert engine.chat_prompt(MESSAGES, "own") == "Q: hi\nA:"
    base = engine.chat_prompt(MESSAGES, "tiny-llama")
    assert base.startswith("<|user|>\nhi")
    assert engine.chat_prompt(MESSAGES, "plain") == base
    assert engine.chat_prompt(MESSAGES) == base  # the adapters disagree: the combination keeps the base's


def test_one_template_shared_by_all_adapters_is_the_combinations(weak_adapter, tmp_path):
    root = adapter_root(tmp_path, {"a": weak_adapter})
    (root / "a" / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))

    engine = load_engine("tiny-llama", discover(root, {}))

    assert engine.chat_prompt(MESSAGES) == engine.chat_prompt(MESSAGES, "a") == "Q: hi\nA:"
