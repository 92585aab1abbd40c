"""How an optimizer step is laid out on this hardware: micro-batch, accumulation, checkpointing, attention.

The optimizer step is a hyperparameter, fixed by the config and never by the hardware: per process it is
``per_device_train_batch_size x gradient_accumulation_steps`` sequences, times the processes for the
global batch. The sequence is TRL's: with ``packing`` a packed row of at most ``max_length`` tokens, without
it one example (KAITO's meaning). An unset key takes KAITO's template value
(``per_device_train_batch_size: 1``), else the option set's default (``gradient_accumulation_steps: 1``).

Memory and kernels only choose how a step is split (``split_step``): on a GPU the micro-batch is the
largest divisor of the step's sequences that is at most both the configured per-device batch and what the
memory estimator fits, and the accumulation is the rest, so micro x accumulation is always the configured
step. A step with no divisor in that range (a prime number of sequences) is split into micro-batches of
one. When even one sequence does not fit, the micro-batch is one anyway (the controller's fit check
refuses such jobs up front).

Flattened batches (TRL's padding-free collator: ``padding_free``, or packing with a ``bfd`` strategy) lay a
micro-batch end to end in one sequence. Only flash-attention's variable-length kernels compute that as
separate sequences; sdpa (CPUs, GPUs without flash-attn) attends over the whole masked square, measured
0.6-0.7x the unpacked baseline with several rows per micro-step, so there a micro-step holds one row and
the rest is accumulated. The chosen split goes into ``Strategy.notes``, which the trainer logs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contract.training_config import ROOT, Method, default_training_config, option_sets
from trainer.config import packing_strategy

# Packing strategies whose rows reach the model flattened (TRL turns padding_free on for them).
FLATTENING_STRATEGIES = ("bfd", "bfd_split")


@dataclass(frozen=True)
class Strategy:
    """How a step is laid out on this hardware; ``notes`` are logged so the choice is visible."""

    device: str
    attn_implementation: str
    max_length: int
    packing: bool
    micro_batch: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)

    @property
    def sequences_per_step(self) -> int:
        """Packed rows (with packing) or examples per optimizer step and process."""
        return self.micro_batch * self.gradient_accumulation_steps

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step and process, at most; times the processes, the global batch."""
        return self.sequences_per_step * self.max_length


def configured_step(training_args: Mapping[str, Any]) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) as the config says; unset keys take KAITO's template
    value, then the option set's default (lora's and qlora's templates share TrainingArguments)."""
    template = default_training_config(Method.QLORA)[ROOT]["TrainingArguments"]
    defaults = option_sets()["TrainingArguments"]

    def value(key: str) -> int:
        found = training_args.get(key)
        return int(found if found is not None else template.get(key, defaults[key]["default"]))

    return value("per_device_train_batch_size"), value("gradient_accumulation_steps")


def configured_checkpointing(training_args: Mapping[str, Any]) -> bool | None:
    """The config's gradient checkpointing (or transformers 5's name for it); None when unset."""
    for key in ("gradient_checkpointing", "activation_checkpointing"):
        if training_args.get(key) is not None:
            return bool(training_args[key])
    return None


def flattens(training_args: Mapping[str, Any]) -> bool:
    """Whether TRL's collator lays a micro-batch end to end in one sequence (padding-free)."""
    packing = packing_strategy(training_args)
    return bool(training_args.get("padding_free")) or packing in FLATTENING_STRATEGIES


def split_step(step: int, limit: int) -> int:
    """The micro-batch for a step of ``step`` sequences: its largest divisor that is at most ``limit``
    (1 when ``limit`` is below 1), so that micro-batch x accumulation is exactly the step."""
    limit = max(1, min(step, limit))
    return max(d for d in range(1, limit + 1) if step % d == 0)


def choose_strategy(
    training_args: Mapping[str, Any],
    max_length: int,
    *,
    cuda: bool,
    largest_micro_batch: Callable[[bool], int] | None = None,
    varlen: bool | None = None,
    attn_implementation: str | None = None,
) -> Strategy:
    """Pick the layout of a step from the config and the hardware.

    ``largest_micro_batch(checkpointing)`` is the memory estimator for the GPU (sequences of
    ``max_length`` that fit): it decides gradient checkpointing when unset and how the step is split, never
    its size. ``varlen``: whether flash-attention's variable-length kernels are there (None: look for
    ``flash_attn``; never on a CPU). ``attn_implementation``: the config's kernel (ModelConfig), which wins.
    """
    batch, accumulation = configured_step(training_args)
    step = batch * accumulation
    packing = bool(training_args.get("packing"))
    unit = f"packed rows of up to {max_length} tokens" if packing else "examples"
    notes = [f"step: {batch} x {accumulation} = {step} {unit} per process"]
    checkpointing = configured_checkpointing(training_args)
    if checkpointing is None:
        fits = largest_micro_batch(False) if largest_micro_batch else batch
        checkpointing = cuda and fits < batch
        notes.append(f"gradient checkpointing {'on' if checkpointing else 'off'} (unset in the config)")
    micro = batch
    if largest_micro_batch:
        fits = largest_micro_batch(checkpointing)
        micro = split_step(step, min(batch, fits))
        notes.append(f"micro-batch {micro}: the estimator fits {fits}, the config asks for {batch}")
    if attn_implementation:
        attn, varlen = attn_implementation, attn_implementation.startswith("flash_attention")
    else:
        if varlen is None:
            varlen = cuda and importlib.util.find_spec("flash_attn") is not None
        attn = "flash_attention_2" if varlen else "sdpa"
    if flattens(training_args) and not varlen:
        micro = 1  # sdpa over a flattened micro-batch computes the whole masked square
        notes.append(f"{attn} over flattened sequences: one per micro-step")
    notes.append(f"{'cuda' if cuda else 'cpu'}: {attn}, {micro} per micro-step, {step // micro} accumulated")
    return Strategy(
        device="cuda" if cuda else "cpu",
        attn_implementation=attn,
        max_length=max_length,
        packing=packing,
        micro_batch=micro,
        gradient_accumulation_steps=step // micro,
        gradient_checkpointing=checkpointing,
        notes=notes,
    )
