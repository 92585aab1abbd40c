"""Padding-free packing: examples laid end to end in rows, position ids restarting at each example.

With no attention mask and restarting position ids, transformers' attention builds a block-diagonal
causal mask (sdpa/eager) or uses variable-length kernels (flash-attention), so packed examples never see
each other; ``tests/trainer/test_packing.py`` compares the logits with separate forwards. Every example
starts with an ignored label, so no loss crosses a boundary either.

Where the compute goes (``choose_strategy``):
- CPU, or a GPU without a varlen kernel: ONE packed row per micro-step and gradient accumulation for the
  rest. sdpa over several flattened rows attends over the whole masked square: measured 0.6-0.7x the
  unpacked baseline, while one row per micro-step is the fastest and smallest. The square is still
  computed within a row, so on a CPU a row is only as long as keeps it under a quarter of the matmul
  work (``cpu_row_tokens``): 256 tokens instead of 1024 made a 22M-parameter model 1.5x faster.
- GPU with flash-attention: a micro-step flattens several rows into one varlen sequence.

The optimizer step is a hyperparameter, fixed by the config and never by the hardware: per process it is
``per_device_train_batch_size x gradient_accumulation_steps`` packed rows of ``max_length`` tokens (at
most; next-fit rows can end early), times the processes for the global batch. An unset key takes KAITO's
template value (``per_device_train_batch_size: 1``), else the option set's default
(``gradient_accumulation_steps: 1``); the trainer always packs, so the unit is a packed row, not an
example. Memory only chooses how a step is split (``split_step``): on a GPU the micro-batch is the
largest divisor of the step's rows that is at most both the configured per-device batch and what the
memory estimator fits, and the accumulation is the rest, so micro x accumulation is always the
configured step. A step whose rows have no divisor in that range (a prime number of rows, say) is split
into micro-batches of one row: an uneven split would change the step or leave a ragged last micro-step.
When even one row does not fit, the micro-batch is one row anyway (the controller's fit check refuses
such jobs up front). A CPU or a GPU without a varlen kernel runs one row per micro-step whatever fits.
The chosen split goes into ``Strategy.notes``, which the trainer logs.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.training_config import ROOT, Method, default_training_config, option_sets
from trainer.preflight import Encoded

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class Strategy:
    """How a step is laid out on this hardware; ``notes`` are logged so the choice is visible."""

    device: str
    attn_implementation: str
    row_tokens: int
    rows_per_micro_step: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    use_liger_kernel: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step and process, at most (a packed row ends before an example that would
        not fit); times the processes, the global batch."""
        return self.row_tokens * self.rows_per_micro_step * self.gradient_accumulation_steps


MIN_CPU_ROW_TOKENS = 256  # below this, per-micro-step work (4-bit dequantisation, Python) dominates


def cpu_row_tokens(model_config: PretrainedConfig, max_length: int) -> int:
    """Row length at which attention over the masked square costs about a quarter of the matmuls.

    Per token and layer, attention costs ~4 x row x hidden FLOPs and the projections ~2 x layer
    parameters, so the row is layer_parameters / (8 x hidden), within [MIN_CPU_ROW_TOKENS, max_length].
    Large models get ``max_length`` (7B: ~6,000 tokens); a 22M one 354.
    """
    h = model_config.hidden_size
    kv = h * model_config.num_key_value_heads // model_config.num_attention_heads
    layer = 2 * h * h + 2 * h * kv + 3 * h * model_config.intermediate_size
    return max(min(MIN_CPU_ROW_TOKENS, max_length), min(max_length, layer // (8 * h)))


def configured_step(training_args: dict[str, Any]) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) as the config says; unset keys take KAITO's template
    value, then the option set's default (lora's and qlora's templates share TrainingArguments)."""
    template = default_training_config(Method.QLORA)[ROOT]["TrainingArguments"]
    defaults = option_sets()["TrainingArguments"]

    def value(key: str) -> int:
        found = training_args.get(key)
        return int(found if found is not None else template.get(key, defaults[key]["default"]))

    return value("per_device_train_batch_size"), value("gradient_accumulation_steps")


def split_step(step_rows: int, limit: int) -> int:
    """The micro-batch for a step of ``step_rows`` rows: its largest divisor that is at most ``limit``
    (1 when ``limit`` is below 1), so that micro-batch x accumulation is exactly the step."""
    limit = max(1, min(step_rows, limit))
    return max(d for d in range(1, limit + 1) if step_rows % d == 0)


def choose_strategy(
    training_args: dict[str, Any],
    max_length: int,
    *,
    cuda: bool,
    largest_micro_batch: Callable[[bool], int] | None = None,
    cpu_row: int | None = None,
    varlen: bool | None = None,
) -> Strategy:
    """Pick the layout of a step from the config and the hardware.

    ``per_device_train_batch_size`` counts packed rows of ``max_length`` tokens, so a step holds at most
    ``batch x accumulation x max_length`` tokens per process on every path and on every GPU.
    ``largest_micro_batch(checkpointing)`` is the memory estimator for the GPU (rows that fit): it decides
    gradient checkpointing when unset and how the step is split, never its size. ``varlen``: whether
    flash-attention's variable-length kernels are there (None: look for ``flash_attn``).
    """
    batch, accumulation = configured_step(training_args)
    checkpointing = training_args.get("gradient_checkpointing")
    if not cuda:
        return _cpu_strategy(batch * accumulation, max_length, cpu_row, bool(checkpointing))
    step_rows = batch * accumulation
    notes = [f"step: {batch} x {accumulation} = {step_rows} rows of {max_length} tokens per process"]
    if checkpointing is None:
        fits = largest_micro_batch(False) if largest_micro_batch else 0
        checkpointing = fits < batch
        notes.append(
            f"gradient checkpointing {'on' if checkpointing else 'off'}: estimator fits {fits} rows without"
        )
    micro = batch
    if largest_micro_batch:
        fits = largest_micro_batch(bool(checkpointing))
        micro = split_step(step_rows, min(batch, fits))
        notes.append(f"micro-batch {micro} rows: the estimator fits {fits}, the config asks for {batch}")
    if varlen is None:
        varlen = importlib.util.find_spec("flash_attn") is not None
    attn = "flash_attention_2" if varlen else "sdpa"
    rows_per_step = micro if varlen else 1
    accumulation = step_rows // rows_per_step
    notes.append(
        f"cuda: {attn}, {rows_per_step} row(s) of {max_length} per micro-step, {accumulation} accumulated"
    )
    return Strategy(
        device="cuda",
        attn_implementation=attn,
        row_tokens=max_length,
        rows_per_micro_step=rows_per_step,
        gradient_accumulation_steps=accumulation,
        gradient_checkpointing=bool(checkpointing),
        use_liger_kernel=importlib.util.find_spec("liger_kernel") is not None,
        notes=notes,
    )


def _cpu_strategy(step_rows: int, max_length: int, cpu_row: int | None, checkpointing: bool) -> Strategy:
    """One packed row of ``cpu_row`` tokens per micro-step; the step's rows of ``max_length`` accumulated."""
    row = min(cpu_row or max_length, max_length)
    micro_steps = step_rows * math.ceil(max_length / row)
    return Strategy(
        device="cpu",
        attn_implementation="sdpa",
        row_tokens=row,
        rows_per_micro_step=1,
        gradient_accumulation_steps=micro_steps,
        gradient_checkpointing=checkpointing,
        notes=[f"cpu: one packed row of {row} tokens per micro-step, {micro_steps} accumulated"],
    )


def pack(examples: Sequence[Encoded], row_tokens: int) -> list[list[Encoded]]:
    """Next-fit in the given (shuffled) order: rows vary in length, but padding-free rows waste nothing."""
    rows: list[list[Encoded]] = []
    current: list[Encoded] = []
    used = 0
    for example in examples:
        n = len(example.input_ids)
        if current and used + n > row_tokens:
            rows.append(current)
            current, used = [], 0
        current.append(example)
        used += n
    if current:
        rows.append(current)
    return rows


class PackedRows:
    """A map-style dataset of packed rows (a list of examples each), for the Trainer's sampler."""

    def __init__(self, rows: list[list[Encoded]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[Encoded]:
        return self.rows[i]


def collate(batch: list[list[Encoded]]) -> dict[str, Any]:
    """Flatten a micro-step's rows into one sequence of shape [1, tokens], no padding, no attention mask."""
    import torch

    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for row in batch:
        for example in row:
            input_ids += example.input_ids
            labels += example.labels
            position_ids += range(len(example.input_ids))
    return {
        "input_ids": torch.tensor([input_ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([position_ids]),
    }
