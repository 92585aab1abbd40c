"""Trainer test fixtures: the tiny preset (built once per machine, cached) and a way to run the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_preset() -> Path:
    from presets.tiny import ensure_tiny_preset

    return ensure_tiny_preset()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_preset):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_preset)


def trainer_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "trainer.qlora", "--preset", "tiny-llama", *map(str, args)]


def run_trainer(
    *args: str | Path, timeout: float = 300, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The trainer as the pod runs it: a child process, JSON lines on stdout, logs on stderr; ``env``
    adds to this process's environment."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        trainer_command(*args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
