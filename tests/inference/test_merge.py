"""The vLLM init step: strengths baked into plain LoRA adapters give the transformers runtime's answers."""

from __future__ import annotations

import json

import pytest
import torch

from inference.adapters import AdapterError, discover
from inference.merge import main, merge
from inference.model import load_engine
from tests.inference.conftest import adapter_root
from tests.inference.test_adapter_strength import PROMPT, logits


def peft_logits(tiny_preset, engine, adapter_dir) -> torch.Tensor:
    """Logits of a fresh base model with ``adapter_dir`` loaded by PEFT, as vLLM would load it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_preset), str(adapter_dir))
    batch = engine.tokenizer(engine.chat_prompt(PROMPT), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


def test_merged_adapters_answer_like_the_weighted_combination(
    tiny_preset, weak_adapter, code_word_adapter, tmp_path, capsys
):
    root = adapter_root(tmp_path, {"weak": weak_adapter, "code": code_word_adapter})
    output = tmp_path / "merged"
    strengths = ["--adapter-strength", "weak=0.5", "--adapter-strength", "code=0.25"]

    assert (
        main(["--preset", "tiny-llama", "--adapter-root", str(root), "--output", str(output), *strengths])
        == 0
    )

    written = json.loads(capsys.readouterr().out)
    assert sorted(written) == ["code", "tiny-llama+adapters", "weak"]
    engine = load_engine("tiny-llama", discover(root, {"weak": 0.5, "code": 0.25}))
    for name, directory in written.items():
        torch.testing.assert_close(peft_logits(tiny_preset, engine, directory), logits(engine, name))
    config = json.loads((output / "tiny-llama+adapters" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 16
    assert (output / "max-lora-rank").read_text() == "16\n"


def test_adapters_vllm_cannot_serve_are_refused_with_the_reason(weak_adapter, tmp_path):
    root = adapter_root(tmp_path, {"head": weak_adapter})
    config_path = root / "head" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "modules_to_save": ["lm_head"], "use_dora": True}))

    with pytest.raises(AdapterError, match=r"adapter 'head' .* use_dora .*; modules_to_save \['lm_head'\]"):
        merge(discover(root, {}))
    # the CLI reports it in one line and exits 1
    assert main(["--preset", "tiny-llama", "--adapter-root", str(root), "--output", str(tmp_path / "o")]) == 1
