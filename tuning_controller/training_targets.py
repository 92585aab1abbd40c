"""The training config's rules that need the catalogs: target modules of the preset, GPU limits of the SKU.

The contract's ``validate_training_config`` checks a document on its own (the trainer runs it in the
pod); the operator adds these when it knows the Workspace's preset and instance type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from contract.problems import Problem, Severity
from contract.suggest import did_you_mean
from contract.training_config import ROOT
from presets.catalog import GpuSku, ModelPreset, UnknownName, get_model, get_sku

BF16_NAMES = frozenset({"bfloat16", "bf16"})


def _resolve(kind: str, value: Any, getter: Callable[[str], Any]) -> tuple[Any, list[Problem]]:
    if value is None or not isinstance(value, str):
        return value, []
    try:
        return getter(value), []
    except UnknownName as exc:
        return None, [Problem(kind, str(exc), value)]


def _preset_rules(sections: Mapping[str, Any], preset: ModelPreset, path: str) -> list[Problem]:
    lora = sections.get("LoraConfig") or {}
    modules = lora.get("target_modules") if isinstance(lora, Mapping) else None
    if not isinstance(modules, list):
        return []
    known = preset.linear_shapes()
    problems = []
    for i, module in enumerate(modules):
        if module not in known:
            guess = did_you_mean(str(module), known)
            hint = f"{guess} " if guess else ""
            problems.append(
                Problem(
                    f"{path}.LoraConfig.target_modules[{i}]",
                    f"is not a linear layer of {preset.name} ({preset.architecture})",
                    module,
                    f"{hint}its linear layers: {', '.join(known)}; or write target_modules: all-linear",
                )
            )
    return problems


def _is_bf16(value: Any) -> bool:
    return isinstance(value, str) and value.lower() in BF16_NAMES


def _sku_rules(sections: Mapping[str, Any], sku: GpuSku, path: str) -> list[Problem]:
    """Known GPU limits as warnings: bfloat16 or flash-attention asked on a pre-Ampere GPU (V100, T4)."""
    if sku.bf16:
        return []
    model = sections.get("ModelConfig") or {}
    quant = sections.get("QuantizationConfig") or {}
    args = sections.get("TrainingArguments") or {}
    asked = [
        (f"{path}.{section}.{key}", body.get(key))
        for section, body, key in (
            ("ModelConfig", model, "torch_dtype"),
            ("ModelConfig", model, "dtype"),
            ("QuantizationConfig", quant, "bnb_4bit_compute_dtype"),
        )
        if isinstance(body, Mapping) and _is_bf16(body.get(key))
    ]
    if isinstance(args, Mapping) and args.get("bf16") is True:
        asked.append((f"{path}.TrainingArguments.bf16", True))
    gpu = f"{sku.name} has {sku.gpu_model} GPUs (compute capability {sku.compute_capability})"
    problems = [
        Problem(
            where,
            f"{gpu} without bfloat16 support; bfloat16 needs 8.0+",
            value,
            "use float16 (in the ConfigMap named by tuning.config), or an Ampere or newer instance type",
            Severity.WARNING,
        )
        for where, value in asked
    ]
    attention = model.get("attn_implementation") if isinstance(model, Mapping) else None
    if isinstance(attention, str) and attention.startswith("flash_attention"):
        problems.append(
            Problem(
                f"{path}.ModelConfig.attn_implementation",
                f"{gpu}; flash-attention kernels need 8.0+",
                attention,
                "use sdpa on this GPU",
                Severity.WARNING,
            )
        )
    return problems


def target_problems(
    doc: Mapping[str, Any],
    *,
    sku: GpuSku | str | None = None,
    preset: ModelPreset | str | None = None,
    path: str = ROOT,
) -> list[Problem]:
    """Problems of ``doc`` on ``preset`` (target modules) and ``sku`` (bfloat16, flash-attention warnings).

    Names are looked up in the catalogs; objects are used as they are. A malformed document yields
    nothing here: ``contract.training_config.validate_training_config`` reports its shape.
    """
    sections = doc.get(ROOT) if isinstance(doc, Mapping) else None
    if not isinstance(sections, Mapping):
        return []
    problems: list[Problem] = []
    preset_obj, found = _resolve("preset", preset, get_model)
    problems += found
    if preset_obj is not None:
        problems += _preset_rules(sections, preset_obj, path)
    sku_obj, found = _resolve("instanceType", sku, get_sku)
    problems += found
    if sku_obj is not None:
        problems += _sku_rules(sections, sku_obj, path)
    return problems
