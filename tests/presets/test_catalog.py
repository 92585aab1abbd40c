"""The model and GPU catalogs load, hold what the issue names, and agree with real model code.

Each preset's dimensions are turned into a transformers config and the model is instantiated on the
meta device (no memory, no download): its parameter count and its decoder layer's linear shapes must
equal the catalog's, so the memory estimator works from the same numbers as the real model.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from presets import catalog
from presets.catalog import CatalogError, UnknownName, get_model, get_sku, models, skus

TUNABLE = [
    "phi-4",
    "phi-4-mini-instruct",
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
    "mistral-7b-v0.3",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct",
    "llama-3.1-8b-instruct",
    "qwen2.5-7b-instruct",
]
# (instance type, GPU model, GPUs, bfloat16) for each family the issue names.
SKUS = [
    ("Standard_NC6s_v3", "V100-16GB", 1, False),
    ("Standard_NV36ads_A10_v5", "A10", 1, True),
    ("Standard_NC24ads_A100_v4", "A100-80GB", 1, True),
    ("Standard_NC40ads_H100_v5", "H100-NVL", 1, True),
    ("Standard_ND96isr_H100_v5", "H100-80GB", 8, True),
    ("Standard_ND96isr_H200_v5", "H200", 8, True),
    ("g5.xlarge", "A10G", 1, True),
    ("g6.xlarge", "L4", 1, True),
    ("p4d.24xlarge", "A100-40GB", 8, True),
    ("p5.48xlarge", "H100-80GB", 8, True),
    ("g2-standard-8", "L4", 1, True),
    ("a2-highgpu-1g", "A100-40GB", 1, True),
    ("a3-highgpu-8g", "H100-80GB", 8, True),
]


def test_every_tunable_preset_is_present_with_a_pinned_revision() -> None:
    names = {m.name for m in models()}
    assert set(TUNABLE) <= names
    for name in TUNABLE:
        preset = get_model(name)
        assert set(preset.methods) == {"lora", "qlora"}
        assert preset.target_modules
        pinned = re.fullmatch(r"[0-9a-f]{40}", preset.revision)
        assert pinned or name == "qwen2.5-7b-instruct", f"{name} revision {preset.revision!r} is not a commit"


def test_alias_resolves() -> None:
    assert get_model("mistral-7b") is get_model("mistral-7b-v0.3")


@pytest.mark.parametrize(("name", "gpu", "count", "bf16"), SKUS, ids=[s[0] for s in SKUS])
def test_sku_catalog_covers_the_named_families(name: str, gpu: str, count: int, bf16: bool) -> None:
    sku = get_sku(name)
    assert (sku.gpu_model, sku.gpu_count, sku.bf16) == (gpu, count, bf16)
    assert sku.gpu_memory_gib > 10 and sku.source


def test_every_cloud_is_present_and_names_are_unique() -> None:
    assert {s.cloud for s in skus()} == {"azure", "aws", "gcp"}
    assert len({s.name for s in skus()}) == len(skus())


def test_unknown_names_suggest_the_nearest() -> None:
    with pytest.raises(UnknownName, match="phi-3-mini-4k-instruct"):
        get_model("phi-3-mini")
    with pytest.raises(UnknownName, match="Standard_NC6s_v3"):
        get_sku("Standard_NC6s_v2")
    assert get_sku("standard_nc6s_v3").name == "Standard_NC6s_v3"  # Azure sizes are case-insensitive


def test_tiny_preset_matches_the_builder() -> None:
    from presets.tiny import TINY_CONFIG, TINY_PRESET_NAME

    preset = get_model(TINY_PRESET_NAME)
    assert preset.local_build
    assert preset.architecture == "LlamaForCausalLM"
    dimensions = {f.name for f in dataclasses.fields(preset)} & set(TINY_CONFIG)  # not init options
    assert dimensions >= {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"}
    assert dimensions >= {"intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings"}
    for key in dimensions:
        assert getattr(preset, key) == TINY_CONFIG[key], key
    assert preset.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


BASE_ENTRY = {
    "name": "x",
    "repo_id": "o/x",
    "revision": "main",
    "architecture": "LlamaForCausalLM",
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "parameters": 656000,
    "target_modules": ["q_proj"],
    "methods": ["lora"],
}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"parameters": 900000}, "disagree with the dimensions"),
        ({"target_modules": ["qkv_proj"]}, "not linear layers"),
        ({"methods": ["dora"]}, "methods must be"),
        ({"num_key_value_heads": 3}, "divide evenly"),
        ({"hidden_size": "128"}, "hidden_size must be int"),
        ({"architecture": "GPT2LMHeadModel"}, "architecture"),
        ({"colour": "blue"}, "unknown keys"),
    ],
)
def test_bad_catalog_entries_fail_loudly(change: dict, says: str) -> None:
    with pytest.raises(CatalogError, match=says):
        catalog._model_from_entry({**BASE_ENTRY, **change}, 0)


def test_dimensions_match_real_model_code() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    configs = {
        "LlamaForCausalLM": transformers.LlamaConfig,
        "MistralForCausalLM": transformers.MistralConfig,
        "Phi3ForCausalLM": transformers.Phi3Config,
        "Qwen2ForCausalLM": transformers.Qwen2Config,
    }
    for preset in models():
        config = configs[preset.architecture](
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_hidden_layers=preset.num_hidden_layers,
            num_attention_heads=preset.num_attention_heads,
            num_key_value_heads=preset.num_key_value_heads,
            vocab_size=preset.vocab_size,
            max_position_embeddings=preset.max_position_embeddings,
            tie_word_embeddings=preset.tie_word_embeddings,
        )
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == preset.parameters, preset.name
        layer0 = {
            name.rsplit(".", 1)[-1]: (module.in_features, module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers.0." in name
        }
        assert layer0 == preset.linear_shapes(), preset.name
