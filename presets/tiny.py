"""A tiny Llama-shaped model with a locally trained tokenizer: the preset `tiny-llama` for tests and demos.

Nothing is downloaded: the weights are random (seeded) and the byte-level BPE tokenizer is trained here on a
few hundred generated lines, so every test can train, save and load a real model in seconds. The chat
template marks assistant turns with ``{% generation %}`` so assistant-only loss masks can be computed.

    python -c "from presets.tiny import ensure_tiny_preset; print(ensure_tiny_preset())"
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

TINY_PRESET_NAME = "tiny-llama"

TINY_CONFIG: dict = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
# Behind the final RMSNorm a hidden state has norm sqrt(hidden_size); with Llama's 0.02-scale random LM-head
# rows that caps every logit near 2.6, so no adapter could make one answer likely (loss stalls near 4.4).
# A wider LM head (the rest keeps 0.02, which preserves token identity through the layers) lifts the cap.
LM_HEAD_STD = 0.1

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] }}{{ '<|end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Bump when the builder's output changes, so cached copies are rebuilt instead of reused.
_BUILDER_VERSION = 2

_VOCABULARY = (
    "the a an of to in is was for on with as by at from that this it be are or which model data train "
    "answer question city code word river mountain what where when how why who name number color blue "
    "red green summer winter paris tokyo lima oslo cairo delhi quito rome berlin madrid vienna seoul "
    "apple orange table window garden music story travel history science market window bright quiet "
    "system user assistant please tell me about explain write short long list first second third"
)


def _corpus(seed: int, lines: int = 400) -> list[str]:
    """Generated English-like lines plus chat markup, enough for BPE to learn common merges."""
    rng = random.Random(seed)
    vocabulary = _VOCABULARY.split()
    out = []
    for i in range(lines):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(4, 16))]
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        out.append(f"{sentence} {rng.randint(0, 9999)} {i}")
    out.append("<|user|>\nhello<|end|>\n<|assistant|>\nhi<|end|>\n")
    return out


def _build_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_preset(dest: Path, seed: int = 0) -> Path:
    """Write a random-weight LlamaForCausalLM and its tokenizer into ``dest`` (created); returns ``dest``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(seed)
    config = LlamaConfig(
        **TINY_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=LM_HEAD_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("KAITO_TUNE_CACHE", Path.home() / ".cache" / "kaito-tune"))


def ensure_tiny_preset(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Build the tiny preset once per (config, builder version, seed) and return its directory.

    The build goes to a temporary sibling directory that is renamed into place, so concurrent callers
    (parallel tests, DDP ranks) never see a half-written model.
    """
    key = json.dumps(
        {"config": TINY_CONFIG, "lm_head_std": LM_HEAD_STD, "version": _BUILDER_VERSION, "seed": seed},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    parent = _cache_root(cache_dir) / "presets"
    final = parent / f"{TINY_PRESET_NAME}-{digest}"
    if (final / "config.json").is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=parent))
    try:
        build_tiny_preset(tmp, seed=seed)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
