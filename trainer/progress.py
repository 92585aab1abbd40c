"""Training progress as events, sent at a bounded rate to pluggable sinks.

One event per emission (``contract.reports.ProgressEvent``): step, total steps, epoch, loss, eval loss,
learning rate, tokens per second and ETA; the held-out evaluation rides on "start" (the base's loss) and
on the last event, "evaluated" (base and adapter), and so does the MLflow run when one is tracked
(``trainer.tracking``). Local runs get JSON lines (stdout or a file) and a tqdm bar; in the controller's
pods ``trainer.status_sink`` patches the Workspace status. A sink only needs ``emit(event)`` and
``close()``.

    {"event": "progress", "step": 40, "total_steps": 120, "epoch": 0.33, "loss": 2.31, "eval_loss": null,
     "learning_rate": 0.0002, "tokens_per_s": 2450.0, "eta_s": 95.0, "time": 1764412345.1,
     "evaluation": null, "tracking": null}
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from typing import IO, TYPE_CHECKING, Any, Protocol

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.reports import EvaluationStatus, ProgressEvent, TrackingStatus

if TYPE_CHECKING:
    from tqdm.auto import tqdm


class ProgressSink(Protocol):
    def emit(self, event: ProgressEvent) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line, flushed at once so a tailing reader sees each event."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, event: ProgressEvent) -> None:
        self.stream.write(json.dumps(asdict(event)) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream not in (sys.stdout, sys.stderr):
            self.stream.close()


class TqdmSink:
    """A progress bar on stderr for people watching a local run."""

    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None

    def emit(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=event.total_steps, initial=event.step, unit="step", file=sys.stderr)
        self.bar.update(event.step - self.bar.n)
        shown = {"loss": event.loss, "eval_loss": event.eval_loss, "tok/s": event.tokens_per_s}
        self.bar.set_postfix({k: round(v, 3) for k, v in shown.items() if v is not None}, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressCallback(TrainerCallback):
    """Turns the Trainer's step and log hooks into events; regular steps at most every ``min_interval_s``."""

    def __init__(self, sinks: list[ProgressSink], min_interval_s: float = 5.0) -> None:
        self.sinks = sinks
        self.min_interval_s = min_interval_s
        self.last_emit = 0.0
        self.started = 0.0
        self.first_step = 0
        self.first_tokens = 0
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.learning_rate: float | None = None
        self.evaluation: EvaluationStatus | None = None  # the base's, measured before training: on "start"
        self.tracking: TrackingStatus | None = None  # the MLflow run, started before training: on "start"

    def _event(self, kind: str, args: TrainingArguments, state: TrainerState) -> ProgressEvent:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        done = state.global_step - self.first_step
        tokens = state.num_input_tokens_seen - self.first_tokens  # every process's (the Trainer gathers them)
        eta = (state.max_steps - state.global_step) * elapsed / done if done else None
        return ProgressEvent(
            event=kind,
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=round(state.epoch, 4) if state.epoch is not None else None,
            loss=self.loss,
            eval_loss=self.eval_loss,
            learning_rate=self.learning_rate,
            tokens_per_s=round(tokens / elapsed, 1) if done else None,
            eta_s=round(eta, 1) if eta is not None else None,
            time=time.time(),
        )

    def emit(
        self,
        kind: str,
        args: TrainingArguments,
        state: TrainerState,
        evaluation: EvaluationStatus | None = None,
        tracking: TrackingStatus | None = None,
    ) -> None:
        if not state.is_world_process_zero:
            return
        self.last_emit = time.monotonic()
        event = replace(self._event(kind, args, state), evaluation=evaluation, tracking=tracking)
        for sink in self.sinks:
            sink.emit(event)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()
        self.first_step = state.global_step
        self.first_tokens = state.num_input_tokens_seen
        self.emit("start", args, state, self.evaluation, self.tracking)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if time.monotonic() - self.last_emit >= self.min_interval_s:
            self.emit("progress", args, state)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        self.loss = logs.get("loss", self.loss)
        self.learning_rate = logs.get("learning_rate", self.learning_rate)
        if "eval_loss" in logs:
            self.eval_loss = logs["eval_loss"]
            self.emit("eval", args, state)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.emit("checkpoint", args, state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.emit("done" if state.global_step >= state.max_steps else "stopped", args, state)

    def close(self) -> None:
        """After the final evaluation, whose result is the last event."""
        for sink in self.sinks:
            sink.close()
