"""Model presets and GPU SKUs: typed, immutable records loaded from ``models.yaml`` and ``gpus.yaml``.

The YAML files are the source of truth (as KAITO's supported_models.yaml is); this module validates them
on load so a typo in the data fails loudly at import of the catalog rather than as a wrong estimate later.
Derived properties (head size, LoRA module shapes, bfloat16 support) live on the records, not in callers.

    >>> get_model("phi-3-mini-4k-instruct").hidden_size
    3072
    >>> get_sku("Standard_NC6s_v3").bf16
    False
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).resolve().parent
METHODS = ("lora", "qlora")
# Architectures whose attention and MLP input projections are fused (one qkv_proj, one gate_up_proj).
FUSED_PROJECTIONS = frozenset({"Phi3ForCausalLM"})
KNOWN_ARCHITECTURES = frozenset(
    {"Phi3ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
)
# Stated parameter counts must match the dimensions this closely (biases and norms are the slack).
PARAMETER_TOLERANCE = 0.02


class CatalogError(ValueError):
    """The catalog data itself is wrong (a bad entry in models.yaml or gpus.yaml)."""


class UnknownName(LookupError):
    """A model preset or SKU name that is not in the catalog; the message lists the nearest names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.name = name
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        parts = [f"unknown {kind} {name!r}"]
        if self.suggestions:
            parts.append(f"did you mean {' or '.join(self.suggestions)}?")
        if len(known) <= 20:
            parts.append(f"known: {', '.join(sorted(known))}")
        else:
            parts.append(f"`kaito-tune presets` lists all {len(known)}")
        super().__init__("; ".join(parts))

    def __str__(self) -> str:  # LookupError would quote the whole message like a key
        return str(self.args[0])


@dataclass(frozen=True)
class ModelPreset:
    """A base model that can be tuned: where it comes from and the dimensions the memory estimate needs."""

    name: str
    repo_id: str
    revision: str
    architecture: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    parameters: int
    target_modules: tuple[str, ...]
    methods: tuple[str, ...]
    chat_template: str | None = None
    local_build: bool = False
    gated: bool = False
    """The hub repository asks users to accept its terms: fetching it needs a token (modelAccessSecret)."""
    tie_word_embeddings: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of every linear layer in one decoder layer, by module name."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q_out, kv_out = self.num_attention_heads * d, self.num_key_value_heads * d
        if self.architecture in FUSED_PROJECTIONS:
            return {
                "qkv_proj": (h, q_out + 2 * kv_out),
                "o_proj": (q_out, h),
                "gate_up_proj": (h, 2 * i),
                "down_proj": (i, h),
            }
        return {
            "q_proj": (h, q_out),
            "k_proj": (h, kv_out),
            "v_proj": (h, kv_out),
            "o_proj": (q_out, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_parameters(self) -> int:
        """Parameters of the decoder layers' linear layers: what 4-/8-bit quantisation shrinks."""
        per_layer = sum(a * b for a, b in self.linear_shapes().values())
        return per_layer * self.num_hidden_layers

    @property
    def embedding_parameters(self) -> int:
        copies = 1 if self.tie_word_embeddings else 2
        return copies * self.vocab_size * self.hidden_size

    def lora_parameters(self, r: int, target_modules: tuple[str, ...] | None = None) -> int:
        """Trainable parameters of rank-r LoRA on the given modules (default: the preset's)."""
        shapes = self.linear_shapes()
        modules = target_modules or self.target_modules
        return r * self.num_hidden_layers * sum(sum(shapes[m]) for m in modules if m in shapes)


@dataclass(frozen=True)
class GpuSku:
    """A GPU instance type: how many GPUs of which model, with how much memory each."""

    name: str
    cloud: str
    gpu_model: str
    gpu_count: int
    gpu_memory_gib: float
    compute_capability: float
    source: str
    nvlink: bool = False

    @property
    def bf16(self) -> bool:
        """bfloat16 needs compute capability 8.0 (Ampere) or later; V100 and T4 lack it."""
        return self.compute_capability >= 8.0

    @property
    def total_memory_gib(self) -> float:
        return self.gpu_memory_gib * self.gpu_count


def _require(entry: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CatalogError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    if isinstance(value, int) and kind is int and value <= 0:
        raise CatalogError(f"{where}: {key} must be positive, got {value!r}")
    return value


_MODEL_INTS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "parameters",
)
_MODEL_KEYS = frozenset(
    {"name", "repo_id", "revision", "architecture", "target_modules", "methods", "chat_template"}
    | {"local_build", "gated", "tie_word_embeddings", "aliases", *_MODEL_INTS}
)


def _model_from_entry(entry: Mapping[str, Any], index: int) -> ModelPreset:
    where = f"models.yaml models[{index}] ({entry.get('name', '?')})"
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_MODEL_KEYS)}")
    for key in ("name", "repo_id", "revision", "architecture"):
        _require(entry, key, str, where)
    ints = {key: _require(entry, key, int, where) for key in _MODEL_INTS}
    preset = ModelPreset(
        name=entry["name"],
        repo_id=entry["repo_id"],
        revision=entry["revision"],
        architecture=entry["architecture"],
        target_modules=tuple(_require(entry, "target_modules", list, where)),
        methods=tuple(_require(entry, "methods", list, where)),
        chat_template=entry.get("chat_template"),
        local_build=bool(entry.get("local_build", False)),
        gated=bool(entry.get("gated", False)),
        tie_word_embeddings=bool(entry.get("tie_word_embeddings", False)),
        aliases=tuple(entry.get("aliases", ())),
        **ints,
    )
    if preset.architecture not in KNOWN_ARCHITECTURES:
        raise CatalogError(
            f"{where}: architecture {preset.architecture!r} not in {sorted(KNOWN_ARCHITECTURES)}"
        )
    if (
        preset.hidden_size % preset.num_attention_heads
        or preset.num_attention_heads % preset.num_key_value_heads
    ):
        raise CatalogError(f"{where}: hidden_size/heads/kv heads do not divide evenly")
    bad_methods = set(preset.methods) - set(METHODS)
    if bad_methods or not preset.methods:
        raise CatalogError(f"{where}: methods must be a non-empty subset of {METHODS}, got {preset.methods}")
    bad_modules = set(preset.target_modules) - set(preset.linear_shapes())
    if bad_modules or not preset.target_modules:
        raise CatalogError(
            f"{where}: target_modules {sorted(bad_modules)} are not linear layers of {preset.architecture} "
            f"({sorted(preset.linear_shapes())})"
        )
    norms = (2 * preset.num_hidden_layers + 1) * preset.hidden_size
    computed = preset.layer_linear_parameters + preset.embedding_parameters + norms
    if abs(computed - preset.parameters) > PARAMETER_TOLERANCE * preset.parameters:
        raise CatalogError(
            f"{where}: parameters {preset.parameters} disagree with the dimensions ({computed}); fix one"
        )
    return preset


def _sku_from_entry(entry: Mapping[str, Any], gpu_models: Mapping[str, Any], index: int) -> GpuSku:
    where = f"gpus.yaml skus[{index}] ({entry.get('name', '?')})"
    for key in ("name", "cloud", "gpu_model", "source"):
        _require(entry, key, str, where)
    model = gpu_models.get(entry["gpu_model"])
    if model is None:
        raise CatalogError(
            f"{where}: gpu_model {entry['gpu_model']!r} not in gpu_models ({sorted(gpu_models)})"
        )
    return GpuSku(
        name=entry["name"],
        cloud=entry["cloud"],
        gpu_model=entry["gpu_model"],
        gpu_count=_require(entry, "gpu_count", int, where),
        gpu_memory_gib=float(model["memory_gib"]),
        compute_capability=float(model["compute_capability"]),
        source=entry["source"],
        nvlink=bool(entry.get("nvlink", False)),
    )


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CatalogError(f"{where}: {name!r} appears twice")
        seen.add(name)


@functools.cache
def _models() -> dict[str, ModelPreset]:
    data = yaml.safe_load((DATA_DIR / "models.yaml").read_text())
    presets = [_model_from_entry(entry, i) for i, entry in enumerate(data["models"])]
    _unique([n for p in presets for n in (p.name, *p.aliases)], "models.yaml")
    return {p.name: p for p in presets}


@functools.cache
def _skus() -> dict[str, GpuSku]:
    data = yaml.safe_load((DATA_DIR / "gpus.yaml").read_text())
    skus = [_sku_from_entry(entry, data["gpu_models"], i) for i, entry in enumerate(data["skus"])]
    _unique([s.name for s in skus], "gpus.yaml")
    return {s.name: s for s in skus}


def models() -> list[ModelPreset]:
    return list(_models().values())


def skus() -> list[GpuSku]:
    return list(_skus().values())


def get_model(name: str) -> ModelPreset:
    """A preset by name or alias (e.g. mistral-7b); UnknownName lists the nearest names."""
    by_name = _models()
    if name in by_name:
        return by_name[name]
    for preset in by_name.values():
        if name in preset.aliases:
            return preset
    raise UnknownName("model preset", name, [n for p in by_name.values() for n in (p.name, *p.aliases)])


def get_sku(name: str) -> GpuSku:
    """A GPU SKU by instance type name (exact; Azure names are case-insensitive, so those match too)."""
    by_name = _skus()
    if name in by_name:
        return by_name[name]
    folded = {n.lower(): sku for n, sku in by_name.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise UnknownName("instance type", name, list(by_name))
