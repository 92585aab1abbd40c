"""TRL's SFTTrainer as this project runs it: the config's TrainingArguments, with the layout of a step.

The training loop, the dataset packing (``packing``, ``packing_strategy``: bfd, bfd_split, wrapped), the
collators (padded, or ``padding_free``), the loss (TRL's fused LM head: no full logits; on CUDA it
projects only the positions that carry a label) and DDP are TRL's and transformers', unchanged.

Departures from TRL, each for a measured reason:
- **Tokenisation and loss masks come from the pre-flight** (``trainer.preflight``), which SFTTrainer takes
  as a processed dataset (``input_ids`` + ``labels``). The pre-flight runs in the data Job, on a CPU with
  no torch, before a GPU node is requested: a bad row fails there with its index, costing no GPU time,
  where TRL's tokenisation would first run after the model loaded on the GPU and stop at the first bad
  row without naming it. Its masks follow TRL's options (``completion_only_loss``,
  ``assistant_only_loss``, ``dataset_text_field``, ``truncation_mode``, ``eos_token``) and match TRL's
  own labels token for token on every shape (``tests/trainer/test_trl_parity.py``); assistant masks need no
  ``{% generation %}`` marks, so chat templates TRL has no training variant for work too.
- **The step is the config's, its split the hardware's** (``trainer.strategy``): the micro-batch,
  accumulation, gradient checkpointing when unset, and the attention kernel.
- **CPU computes in float32** (bfloat16 autocast on a CPU is slow or unsupported), and TRL's cast of a
  quantised model's adapter weights to bfloat16 is undone there for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trainer.strategy import Strategy

if TYPE_CHECKING:
    from trl import SFTConfig


# Precision options a CPU cannot honour (SFTConfig refuses them without a GPU): float32 there instead.
GPU_PRECISION = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


def sft_config(
    training_args: Mapping[str, Any],
    strategy: Strategy,
    output_dir: str,
    *,
    has_eval: bool,
    world_size: int,
) -> SFTConfig:
    """SFTConfig from the TrainingArguments section (``sft_values``)."""
    from trl import SFTConfig

    return SFTConfig(
        **sft_values(training_args, strategy, output_dir, has_eval=has_eval, world_size=world_size)
    )


def sft_values(
    training_args: Mapping[str, Any],
    strategy: Strategy,
    output_dir: str,
    *,
    has_eval: bool,
    world_size: int,
) -> dict[str, Any]:
    """SFTConfig's arguments: every key of the section as given (validation refused those nothing would
    act on), the step's layout as chosen, float32 on a CPU."""
    values = dict(training_args)
    kwargs = values.pop("gradient_checkpointing_kwargs", None) or values.get(
        "activation_checkpointing_kwargs"
    )
    values.pop("gradient_checkpointing", None)  # transformers 5 calls it activation checkpointing
    values.update(
        output_dir=output_dir,  # checkpoints; the adapter goes to the results directory (output_dir)
        per_device_train_batch_size=strategy.micro_batch,
        gradient_accumulation_steps=strategy.gradient_accumulation_steps,
        activation_checkpointing=strategy.gradient_checkpointing,
        activation_checkpointing_kwargs=kwargs or {"use_reentrant": False},
        # the pre-flight truncated every example; packing cuts rows at max_length
        max_length=strategy.max_length if strategy.packing else None,
        include_num_input_tokens_seen="non_padding",  # tokens per second in the progress events
    )
    values.setdefault("per_device_eval_batch_size", strategy.micro_batch)
    values.setdefault("disable_tqdm", True)  # the progress events and their bar report instead
    values.setdefault("report_to", "none")
    values.setdefault("prediction_loss_only", True)  # no compute_metrics: logits would cost a forward pass
    values.setdefault("save_total_limit", 2)
    if has_eval:
        values.setdefault("eval_strategy", "epoch")
    else:
        values["eval_strategy"] = "no"
        values.pop("eval_on_start", None)
    if strategy.device == "cpu":
        values.update(dict.fromkeys(GPU_PRECISION, False), use_cpu=True)
        if world_size > 1:
            values["ddp_backend"] = "gloo"
    else:
        import torch

        values.setdefault("bf16", torch.cuda.is_bf16_supported())
    return values
