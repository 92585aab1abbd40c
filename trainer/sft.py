"""The Trainer: transformers' loop (DDP, checkpoints, schedules, resume) with loss only where it counts.

The stock causal-LM loss projects every position onto the full vocabulary and computes cross-entropy in
plain torch; on a CPU that was about a third of the step. Here the LM head runs only on positions whose
next token is trained (``logits_to_keep`` with their indices), and the sum is divided by the number of
trained tokens in the whole accumulated step, so accumulation and several processes average per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from trainer.packing import Strategy
from trainer.preflight import IGNORE

if TYPE_CHECKING:
    from trl import SFTConfig


class PackedTrainer(Trainer):
    """Trainer for one padding-free packed row per forward (see ``trainer.packing.collate``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # our loss is already normalised per token of the whole step

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        targets = inputs["labels"][0, 1:]
        positions = (targets != IGNORE).nonzero().squeeze(-1)
        outputs = model(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            use_cache=False,
            logits_to_keep=positions,
        )
        loss = F.cross_entropy(outputs.logits[0].float(), targets[positions], reduction="sum")
        if model.training:
            self.state.num_input_tokens_seen += inputs["input_ids"].numel()
        if num_items_in_batch is not None and model.training:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:  # DDP averages gradients over processes: undo that
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss / max(1, positions.numel())
        return (loss, outputs) if return_outputs else loss


def sft_config(
    training_args: dict[str, Any], strategy: Strategy, output_dir: str, *, has_eval: bool, world_size: int
) -> SFTConfig:
    """SFTConfig from the TrainingArguments section, with the keys this trainer decides overridden."""
    from trl import SFTConfig

    values = dict(training_args)
    values.pop("gradient_checkpointing", None)  # enabled on the model in trainer.model (non-reentrant)
    values.update(
        output_dir=output_dir,
        per_device_train_batch_size=strategy.rows_per_micro_step,
        per_device_eval_batch_size=strategy.rows_per_micro_step,
        gradient_accumulation_steps=strategy.gradient_accumulation_steps,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        disable_tqdm=True,
        report_to="none",
        torch_empty_cache_steps=None,  # flushing the allocator cache every step only costs time
        prediction_loss_only=True,
        use_liger_kernel=strategy.use_liger_kernel,
    )
    values.setdefault("save_total_limit", 2)
    if has_eval:
        values.setdefault("eval_strategy", "epoch")
    else:
        values["eval_strategy"] = "no"
        values.pop("eval_on_start", None)
    if strategy.device == "cpu":
        values.update(use_cpu=True, bf16=False, fp16=False)
        if world_size > 1:
            values["ddp_backend"] = "gloo"
    else:
        values.setdefault("bf16", torch.cuda.is_bf16_supported())
    return SFTConfig(**values)
