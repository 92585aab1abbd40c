"""Loading the tokenizer and the model of a resolved preset for LoRA / QLoRA (``presets.resolve``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from contract.problems import Problem
from presets.resolve import ResolvedPreset
from trainer.config import ConfigError, TrainingConfig, lora_config, model_kwargs, quantization_config

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def load_tokenizer(preset: ResolvedPreset, config: TrainingConfig) -> PreTrainedTokenizerBase:
    """The preset's tokenizer; ModelConfig.chat_template replaces the template, TrainingArguments'
    eos_token and pad_token (TRL's) replace those tokens, and a pad token is ensured."""
    from transformers import AutoTokenizer

    section = config.section("ModelConfig")
    kwargs = {k: section[k] for k in ("local_files_only", "trust_remote_code") if k in section}
    tokenizer = AutoTokenizer.from_pretrained(preset.source, revision=preset.revision, **kwargs)
    if section.get("chat_template"):
        tokenizer.chat_template = section["chat_template"]
    args = config.section("TrainingArguments")
    for key in ("eos_token", "pad_token"):
        token = args.get(key)
        if token is None:
            continue
        if token not in tokenizer.get_vocab():
            where = f"training_config.TrainingArguments.{key}"
            raise ConfigError(
                [
                    Problem(
                        where, f"is not a token of {preset.name}'s tokenizer", token, "name one, or unset it"
                    )
                ]
            )
        setattr(tokenizer, key, token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        log.warning("the tokenizer has no chat template: 'messages' rows need ModelConfig.chat_template")
    return tokenizer


def load_model(
    preset: ResolvedPreset,
    config: TrainingConfig,
    *,
    on_cpu: bool,
    attn_implementation: str,
    device_map: dict[str, int] | None = None,
) -> PeftModel:
    """Base model (4-bit NF4 / 8-bit / full precision) wrapped with a fresh LoRA adapter.

    Gradient checkpointing is the Trainer's to enable (``SFTConfig.gradient_checkpointing``)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    kwargs = model_kwargs(config.section("ModelConfig"), on_cpu=on_cpu)
    kwargs.setdefault("revision", preset.revision)
    kwargs.setdefault("attn_implementation", attn_implementation)
    quant = quantization_config(config.section("QuantizationConfig"), on_cpu=on_cpu)
    model = AutoModelForCausalLM.from_pretrained(
        preset.source,
        quantization_config=quant,
        device_map=device_map,
        **kwargs,
    )
    model.config.use_cache = False
    if quant is not None and on_cpu:
        _keep_cpu_4bit_trainable(model)
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = lora_config(config.section("LoraConfig"), preset.target_modules)
    return get_peft_model(model, lora)


def _keep_cpu_4bit_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for AVX512-BF16 inference during an evaluation.

    The repacked layout is served by a kernel without a backward, so training after the first eval
    would get wrong gradients (torch warns "an autograd kernel was not registered").
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def vllm_warnings(lora_section: dict[str, Any]) -> list[str]:
    """vLLM serves LoRA adapters but not ones that also replace the LM head or the embeddings."""
    modules = lora_section.get("modules_to_save") or []
    risky = [m for m in modules if any(k in m for k in ("lm_head", "embed"))]
    if not risky:
        return []
    return [
        f"LoraConfig.modules_to_save {risky}: vLLM cannot serve adapters that replace the LM head or "
        "embeddings; the transformers runtime can"
    ]
