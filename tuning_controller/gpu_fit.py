"""Does a tuning job fit its GPUs? The memory estimate for the effective training options vs the SKU.

KAITO declares per-method memory needs but never enforces them, so a job that cannot fit is found out
after the node is paid for. Here the estimate (``presets.memory``) is compared with the SKU's memory
per GPU before anything is created, and a misfit names concrete ways out: a larger SKU from the
catalog, qlora instead of lora, a smaller micro-batch, gradient checkpointing, or a shorter sequence.
Each GPU holds the whole model (data-parallel replicas), so a multi-GPU SKU does not lower the need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from contract.problems import Problem
from contract.training_config import ROOT, effective_options
from presets.catalog import GpuSku, ModelPreset, skus
from presets.memory import MemoryEstimate, estimate, largest_micro_batch

DTYPE_ALIASES = {
    "auto": "bfloat16",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float": "float32",
}


@dataclass(frozen=True)
class TrainingShape:
    """The options that drive memory, read from a training config with the trainer's defaults."""

    method: str
    micro_batch: int
    seq_len: int
    gradient_checkpointing: bool
    lora_r: int
    target_modules: tuple[str, ...] | None
    dtype: str
    optimizer: str
    load_in_8bit: bool
    double_quant: bool

    def estimate(self, preset: ModelPreset) -> MemoryEstimate:
        return estimate(
            preset,
            self.method,
            micro_batch=self.micro_batch,
            seq_len=self.seq_len,
            gradient_checkpointing=self.gradient_checkpointing,
            lora_r=self.lora_r,
            target_modules=self.target_modules,
            dtype=self.dtype,
            optimizer=self.optimizer,
            load_in_8bit=self.load_in_8bit,
            double_quant=self.double_quant,
        )

    def describe(self) -> str:
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return (
            f"{self.method}, micro-batch {self.micro_batch}, sequence {self.seq_len}, "
            f"gradient checkpointing {checkpointing}, r {self.lora_r}"
        )


def _int(value: Any, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else fallback


def training_shape(doc: Mapping[str, Any] | None, method: str, preset: ModelPreset) -> TrainingShape:
    """Read the memory-relevant options; an unset batch size counts as 1 (KAITO's template)."""
    opts = effective_options(doc, method)
    sections = doc.get(ROOT) if isinstance(doc, Mapping) else None
    raw_args = sections.get("TrainingArguments") if isinstance(sections, Mapping) else None
    batch_set = isinstance(raw_args, Mapping) and "per_device_train_batch_size" in raw_args
    args, lora, quant, model = (
        opts[s] for s in ("TrainingArguments", "LoraConfig", "QuantizationConfig", "ModelConfig")
    )
    modules = lora.get("target_modules")
    if modules == "all-linear":
        modules = tuple(preset.linear_shapes())
    elif isinstance(modules, list) and all(isinstance(m, str) for m in modules):
        modules = tuple(modules)
    else:
        modules = None
    dtype = model.get("dtype") or model.get("torch_dtype") or "bfloat16"
    dtype = DTYPE_ALIASES.get(str(dtype), str(dtype))
    checkpointing = bool(args.get("gradient_checkpointing")) or bool(args.get("activation_checkpointing"))
    max_length = opts["DatasetConfig"].get("max_length") or args.get("max_length")
    return TrainingShape(
        method=method,
        micro_batch=_int(args.get("per_device_train_batch_size"), 1) if batch_set else 1,
        seq_len=_int(max_length, preset.max_position_embeddings),
        gradient_checkpointing=checkpointing,
        lora_r=_int(lora.get("r"), 8),
        target_modules=modules,
        dtype=dtype if dtype in ("bfloat16", "float16", "float32") else "bfloat16",
        optimizer=str(args.get("optim") or "adamw"),
        load_in_8bit=quant.get("load_in_8bit") is True,
        double_quant=quant.get("bnb_4bit_use_double_quant") is True,
    )


def fitting_skus(need_gib: float, cloud: str | None = None, limit: int = 3) -> list[GpuSku]:
    """Catalog SKUs whose per-GPU memory holds ``need_gib``: same cloud, fewest GPUs, least memory first."""
    fits = [s for s in skus() if s.gpu_memory_gib >= need_gib]
    fits.sort(key=lambda s: (s.cloud != cloud, s.gpu_count, s.gpu_memory_gib))
    return fits[:limit]


def _largest_seq(shape: TrainingShape, preset: ModelPreset, memory_gib: float) -> int:
    """The longest sequence (a multiple of 128, below the current one) that fits, or 0."""
    low, high = 0, shape.seq_len // 128
    while low < high:
        mid = (low + high + 1) // 2
        if replace(shape, seq_len=mid * 128).estimate(preset).total_gib <= memory_gib:
            low = mid
        else:
            high = mid - 1
    return low * 128 if low * 128 < shape.seq_len else 0


def alternatives(shape: TrainingShape, preset: ModelPreset, sku: GpuSku, need_gib: float) -> list[str]:
    """Concrete changes that would make the job fit, best first."""
    memory = sku.gpu_memory_gib
    out = []
    bigger = fitting_skus(need_gib, sku.cloud)
    if bigger:
        listed = ", ".join(
            f"{s.name} ({s.gpu_count}x {s.gpu_model}, {s.gpu_memory_gib:g} GiB)" for s in bigger
        )
        out.append(f"a larger instance type: {listed}")
    if shape.method == "lora" and "qlora" in preset.methods:
        qlora = replace(shape, method="qlora", double_quant=True).estimate(preset).total_gib
        if qlora <= memory:
            out.append(f"method: qlora (needs about {qlora:.1f} GiB)")
    if shape.micro_batch > 1:
        batch = largest_micro_batch(
            preset,
            shape.method,
            memory,
            shape.seq_len,
            shape.gradient_checkpointing,
            lora_r=shape.lora_r,
            target_modules=shape.target_modules,
            dtype=shape.dtype,
            optimizer=shape.optimizer,
        )
        if batch >= 1:
            out.append(
                f"TrainingArguments.per_device_train_batch_size: {batch} (raise gradient_accumulation_steps)"
            )
    if not shape.gradient_checkpointing:
        on = replace(shape, gradient_checkpointing=True).estimate(preset).total_gib
        if on <= memory:
            out.append(f"TrainingArguments.gradient_checkpointing: true (needs about {on:.1f} GiB)")
    seq = _largest_seq(shape, preset, memory)
    if seq:
        out.append(f"TrainingArguments.max_length: {seq}")
    return out


def fit_problems(
    preset: ModelPreset,
    method: str,
    sku: GpuSku,
    doc: Mapping[str, Any] | None,
    path: str = "resource.instanceType",
) -> list[Problem]:
    """An error when the estimated peak memory per GPU exceeds the SKU's, with the estimate and ways out."""
    shape = training_shape(doc, method, preset)
    found = shape.estimate(preset)
    if found.total_gib <= sku.gpu_memory_gib:
        return []
    parts = ", ".join(f"{k} {v:g}" for k, v in found.breakdown().items() if k != "total")
    ways = alternatives(shape, preset, sku, found.total_gib)
    return [
        Problem(
            path,
            f"{preset.name} does not fit: tuning needs about {found.total_gib:.1f} GiB per GPU "
            f"({shape.describe()}; {parts} GiB) but {sku.name} has {sku.gpu_memory_gib:g} GiB per "
            f"{sku.gpu_model}",
            sku.name,
            ("try " + "; or ".join(ways)) if ways else "no catalog instance type is large enough",
        )
    ]


def inference_fit_problems(
    preset: ModelPreset, sku: GpuSku, path: str = "resource.instanceType"
) -> list[Problem]:
    """An error when the 16-bit weights alone exceed all the SKU's GPU memory together."""
    need = preset.parameters * 2 / 1024**3 + 0.5 * sku.gpu_count
    if need <= sku.total_memory_gib:
        return []
    bigger = [s.name for s in skus() if s.total_memory_gib >= need][:3]
    return [
        Problem(
            path,
            f"{preset.name} does not fit: its 16-bit weights need about {need:.1f} GiB but {sku.name} has "
            f"{sku.total_memory_gib:g} GiB of GPU memory in all",
            sku.name,
            f"try {', '.join(bigger)}" if bigger else "no catalog instance type is large enough",
        )
    ]
