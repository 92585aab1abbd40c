"""The base model's held-out loss is the base's for every LoRA initialisation a config may name: measured
before the first step, the adapter either starts as the base (B.A = 0, or B.A taken out of the base weights)
or is switched off (``trainer.train.as_base``)."""

from __future__ import annotations

import pytest
import torch

from contract.training_config import UNRUN_INITS, option_sets
from trainer.train import NONZERO_INITS, as_base


def allowed_inits() -> list[bool | str]:
    """Every init_lora_weights value validation lets through (an iteration count for pissa_niter_)."""
    choices = option_sets()["LoraConfig"]["init_lora_weights"]["choices"]
    named = [c.replace("[number of iters]", "4") for c in choices if c not in UNRUN_INITS]
    return [True, False, *named]


@pytest.fixture(scope="module")
def base_logits(tiny_preset):
    from transformers import AutoModelForCausalLM

    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        return ids, AutoModelForCausalLM.from_pretrained(tiny_preset).eval()(ids).logits


@pytest.mark.parametrize("init", allowed_inits(), ids=str)
def test_the_base_is_measured_as_the_base_for_every_allowed_init(init, tiny_preset, base_logits):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ids, expected = base_logits
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, init_lora_weights=init, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_preset), lora).eval()
    with torch.no_grad():
        with as_base(model):
            measured = model(ids).logits
        adapter = model(ids).logits
    torch.testing.assert_close(measured, expected, atol=2e-4, rtol=1e-4)
    # the adapter is switched off exactly where it would not start as the base
    assert (not torch.allclose(adapter, expected, atol=2e-4)) == (init in NONZERO_INITS)
