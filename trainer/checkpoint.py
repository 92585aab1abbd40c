"""Checkpoints a retried pod can continue from: every N steps (``save_steps``) or M minutes, and on SIGTERM.

The Trainer writes ``<output>/checkpoints/checkpoint-<step>/`` (adapter, optimizer, scheduler, RNG states,
trainer state with the step, which fixes the data position). Only after it has finished does
``CheckpointCallback`` write the marker ``checkpoint-complete`` into it (temp file + rename), so a
checkpoint cut short by a kill has no marker and ``newest_complete`` passes it over.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.distributed import any_rank

MARKER = "checkpoint-complete"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def newest_complete(directory: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and (p / MARKER).is_file()
    ]
    return max(found)[1] if found else None


def write_marker(path: Path, text: str = "") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stop_on_sigterm() -> threading.Event:
    """An event set by SIGTERM (Kubernetes' eviction/deletion notice) instead of dying mid-step."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


class CheckpointCallback(TrainerCallback):
    """Asks for a save every ``every_minutes`` and on ``stop``; marks each finished checkpoint complete."""

    def __init__(self, every_minutes: float, stop: threading.Event) -> None:
        self.every_s = every_minutes * 60
        self.stop = stop
        self.last_save = time.monotonic()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self.every_s > 0 and time.monotonic() - self.last_save >= self.every_s:
            control.should_save = True
        # on the device the backend takes (NCCL: this process's GPU), or NCCL fails on the first step
        if any_rank(self.stop.is_set(), args.world_size, args.local_process_index):
            control.should_save = True
            control.should_training_stop = True
            # Another pod's SIGTERM stops this process too (multi-node: the signal reaches one pod): it
            # must also end as stopped, not write the adapter of an unfinished training as complete.
            self.stop.set()
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.last_save = time.monotonic()
        if state.is_world_process_zero:
            path = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"  # set by sft_config
            write_marker(path / MARKER, f"{state.global_step}\n")
        return control
