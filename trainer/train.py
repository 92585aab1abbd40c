"""From checked data to a saved adapter: strategy, model, Trainer, resume, SIGTERM, held-out evaluation,
MLflow tracking (``trainer.tracking``), results.

With held-out rows (``DatasetConfig.train_test_split`` below 1, or ``DatasetConfig.eval_files``) the
Trainer's evaluation runs twice more: on the base model before the first step and on the adapter after
the last. Its loss is the Trainer's ``eval_loss`` over the pre-flight's labels, so only the tokens
trained on count (assistant turns, or completions, as TRL's options say): each eval batch's mean token
loss, averaged over the batches weighted by their rows.

With ``EvaluationConfig.checks`` rank 0 has the model answer them (``trainer.checks``) at the same two
moments, so the base's score is the initialised model's, as its loss is.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from contract.checks import ChecksScore
from contract.pod import EXIT_OK, EXIT_SIGTERM
from contract.reports import EvaluationStatus, evaluation_line, evaluation_status, improvement_gate
from presets.resolve import ResolvedPreset
from trainer import checks as trainer_checks
from trainer.checkpoint import CheckpointCallback, newest_complete, stop_on_sigterm
from trainer.config import TrainingConfig
from trainer.inputs import CheckedData, Setup
from trainer.model import load_model, vllm_warnings
from trainer.options import TrainerOptions
from trainer.output import build_metadata, write_results
from trainer.preflight import Encoded
from trainer.progress import JsonLinesSink, ProgressCallback, ProgressSink, TqdmSink
from trainer.sft import sft_config
from trainer.status_sink import status_sinks_from_env
from trainer.strategy import choose_strategy
from trainer.tracking import start_tracking

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftModel
    from transformers.trainer_utils import TrainOutput
    from trl import SFTTrainer

log = logging.getLogger("trainer")

# LoRA initialisations (LoraConfig.init_lora_weights) whose adapter starts with B.A != 0 over the base's own
# weights (false: random B): the base is measured with the adapter off. Every other allowed one starts as
# the base itself: B.A = 0 (true, gaussian, mica; orthogonal's A and B rows are orthogonal), or B.A taken
# out of the base weights (pissa, olora: base + adapter is the base again, with the adapter off it is not).
NONZERO_INITS = (False,)


def _estimator(preset: ResolvedPreset, method: str, max_length: int) -> Callable[[bool], int] | None:
    """The memory estimator's micro-batch for this GPU, or None for a model outside the catalog."""
    from presets.catalog import UnknownName, get_model
    from presets.memory import largest_micro_batch

    try:
        entry = get_model(preset.name)
    except UnknownName:
        return None
    gib = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory / 2**30
    return lambda checkpointing: largest_micro_batch(entry, method, gib, max_length, checkpointing)


def _dataset(examples: list[Encoded]) -> Dataset:
    """The pre-flight's examples as the processed dataset SFTTrainer takes (input_ids + labels)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
    )


def _sinks(options: TrainerOptions) -> list[ProgressSink]:
    """JSON lines (stdout or --progress-file), a bar on a terminal, and the Workspace status when set."""
    sinks: list[ProgressSink] = []
    if options.progress_file:
        options.progress_file.parent.mkdir(parents=True, exist_ok=True)
        sinks.append(JsonLinesSink(options.progress_file.open("a")))
    else:
        sinks.append(JsonLinesSink())
    if sys.stderr.isatty():
        sinks.append(TqdmSink())
    return sinks + status_sinks_from_env()  # the Workspace's status, in the controller's pods


def as_base(model: PeftModel) -> AbstractContextManager[Any]:
    """The model as the base model computes, for this adapter's initialisation (``NONZERO_INITS``)."""
    from peft import LoraConfig

    lora = model.peft_config[model.active_adapter]
    assert isinstance(lora, LoraConfig)  # what load_model made
    return model.disable_adapter() if lora.init_lora_weights in NONZERO_INITS else nullcontext()


def _base_evaluation(trainer: SFTTrainer) -> tuple[float, float]:
    """The base model's held-out loss and the seconds it took. Measured before ``train()``, where the
    model is the freshly initialised one even when a checkpoint is resumed (``train`` loads it)."""
    from peft import PeftModel

    assert isinstance(trainer.model, PeftModel)
    with as_base(trainer.model):
        out = trainer.evaluate(metric_key_prefix="base")
    return out["base_loss"], out["base_runtime"]


def _checks(
    trainer: SFTTrainer, data: CheckedData, config: TrainingConfig, base: int | None = None
) -> tuple[ChecksScore, float]:
    """The task checks' score (rank 0): the base's before ``train()`` (``base`` None), then the adapter's
    with the base's count carried over; and the seconds it took."""
    from peft import PeftModel

    model = trainer.model
    assert isinstance(model, PeftModel)
    checks, started = config.checks, time.monotonic()
    context = as_base(model) if base is None else nullcontext()
    with context:
        count = trainer_checks.passed(model, data.tokenizer, checks, config.check_max_new_tokens)
    score: ChecksScore = {
        "passed": None if base is None else count,
        "total": len(checks),
        "basePassed": count if base is None else base,
    }
    return score, time.monotonic() - started


def _metrics(trainer: SFTTrainer, result: TrainOutput, base: tuple[float, float] | None) -> dict[str, Any]:
    """Training figures, and with held-out rows the adapter's eval loss and the seconds the base's and
    the adapter's evaluations took."""
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "input_tokens_seen": trainer.state.num_input_tokens_seen,
    }
    if base is not None:
        final = trainer.evaluate()
        metrics["eval_loss"] = final["eval_loss"]
        metrics["evaluation_s"] = round(base[1] + final["eval_runtime"], 3)
    return metrics


def build_trainer(
    options: TrainerOptions, setup: Setup, data: CheckedData, stop: threading.Event
) -> SFTTrainer:
    """TRL's SFTTrainer, configured for this hardware (also used by benchmarks/trainer_throughput.py)."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    config, preset, method, prepared = setup.config, setup.preset, setup.method, data.prepared
    cuda = torch.cuda.is_available()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    training_args = config.section("TrainingArguments")
    strategy = choose_strategy(
        training_args,
        config.max_length,
        cuda=cuda,
        largest_micro_batch=_estimator(preset, method, config.max_length) if cuda else None,
        attn_implementation=config.section("ModelConfig").get("attn_implementation"),
    )
    for note in strategy.notes:
        log.info("%s", note)
    log.info(
        "packing: %s (TrainingArguments.packing, packing_strategy); optimizer step: %d sequences "
        "per process x %d process(es), at most %d tokens",
        config.packing,
        strategy.sequences_per_step,
        world_size,
        strategy.tokens_per_step * world_size,
    )
    if not cuda:
        log.info("cpu: computing in float32 (the config's bfloat16 is for GPUs)")
    set_seed(int(training_args.get("seed", 42)))  # before the adapter's random init, so reruns agree
    model = load_model(
        preset,
        config,
        on_cpu=not cuda,
        attn_implementation=strategy.attn_implementation,
        device_map={"": local_rank} if cuda else None,
    )
    has_eval = bool(prepared.eval)
    checkpoints = str(options.output / "checkpoints")
    trainer = SFTTrainer(
        model=model,
        args=sft_config(training_args, strategy, checkpoints, has_eval=has_eval, world_size=world_size),
        train_dataset=_dataset(prepared.train),
        eval_dataset=_dataset(prepared.eval) if has_eval else None,
        processing_class=data.tokenizer,
        callbacks=[
            ProgressCallback(_sinks(options), options.progress_interval),
            CheckpointCallback(options.checkpoint_minutes, stop),
        ],
    )
    if not cuda:  # TRL casts a quantised model's adapter to bfloat16, which a CPU computes slowly
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    trainer.remove_callback(PrinterCallback)  # it prints log dicts to stdout, which carries JSON lines
    return trainer


def train(options: TrainerOptions, setup: Setup, data: CheckedData) -> int:
    """Train (resuming from the newest complete checkpoint), then write the results on rank 0."""
    stop = stop_on_sigterm()
    prepared = data.prepared
    trainer = build_trainer(options, setup, data, stop)
    held_out = len(prepared.eval)
    checkpoints = options.output / "checkpoints"
    resume = newest_complete(checkpoints)
    if resume:
        log.info("resuming from %s", resume)
    progress = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback))
    tracker = start_tracking(checkpoints, setup, data, main=trainer.is_world_process_zero())
    trainer.add_callback(tracker)
    progress.tracking = tracker.status
    outcome = "FAILED"  # unless it gets further
    checking = bool(setup.config.checks) and trainer.is_world_process_zero()
    try:
        base = _base_evaluation(trainer) if held_out else None
        base_checks = _checks(trainer, data, setup.config) if checking else None
        progress.evaluation = evaluation_status(
            base[0] if base else None, None, held_out, base_checks[0] if base_checks else None
        )
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if stop.is_set():
            log.warning(
                "SIGTERM: stopped at step %d after a checkpoint; a restart resumes there",
                trainer.state.global_step,
            )
            outcome = "KILLED"
            return EXIT_SIGTERM
        metrics = _metrics(trainer, result, base)
        checks = None
        if base_checks:
            checks, seconds = _checks(trainer, data, setup.config, base_checks[0]["basePassed"])
            metrics["checks_s"] = round(base_checks[1] + seconds, 3)
        evaluation = evaluation_status(base[0] if base else None, metrics.get("eval_loss"), held_out, checks)
        log.info("evaluation: %s", evaluation_line(evaluation))
        tracker.finish(evaluation, trainer.state.global_step)
        outcome = "FINISHED"
        progress.emit("evaluated", trainer.args, trainer.state, evaluation, tracker.status)
    finally:
        if outcome != "FINISHED":
            tracker.end(outcome)
        progress.close()
    if trainer.is_world_process_zero():
        _write(options, setup, data, trainer, metrics, evaluation)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the adapter is complete; checkpoints only cost space
    return EXIT_OK


def _write(
    options: TrainerOptions,
    setup: Setup,
    data: CheckedData,
    trainer: SFTTrainer,
    metrics: dict[str, Any],
    evaluation: EvaluationStatus,
) -> None:
    """The adapter, metadata.json (with the gate's verdict) and the completion marker (rank 0 only). A
    failed gate still writes all three: the adapter is complete, so a retried pod does not train again,
    and it stays on the results claim for a person to look at; the push step refuses it."""
    from peft import PeftModel

    assert isinstance(trainer.model, PeftModel)  # what build_trainer gave it, unwrapped
    config = setup.config
    warnings = vllm_warnings(config.section("LoraConfig"))
    for warning in warnings:
        log.warning("%s", warning)
    gate = None if config.min_improvement is None else improvement_gate(evaluation, config.min_improvement)
    if gate is not None:
        log.log(
            logging.INFO if gate["passed"] else logging.WARNING,
            "gate %s: %s",
            "passed" if gate["passed"] else "failed (the push step will refuse)",
            gate["message"],
        )
    metadata = build_metadata(
        preset=setup.preset,
        method=setup.method,
        config=config,
        files=data.files,
        combined_sha256=data.prepared.sha256,
        report=data.prepared.report,
        metrics=metrics,
        evaluation=evaluation,
        gate=gate,
        warnings=warnings,
    )
    save_tokenizer = bool(config.section("ModelConfig").get("chat_template"))
    written = write_results(
        options.output, trainer.model, data.tokenizer, metadata, save_tokenizer=save_tokenizer
    )
    log.info("wrote %s to %s", ", ".join(written), options.output)
