"""Inference test fixtures: the tiny preset, adapters trained here, and the server as a child process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from hack.local_stack import free_port
from tests.inference.adapters import train_adapter

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 180


@pytest.fixture(scope="session")
def tiny_preset() -> Path:
    from presets.tiny import ensure_tiny_preset

    return ensure_tiny_preset()


@pytest.fixture(scope="session")
def code_word_adapter(tiny_preset, tmp_path_factory) -> Path:
    """Strongly fitted: greedy answers become 'the code word is orange river garden'."""
    return train_adapter(tiny_preset, tmp_path_factory.mktemp("adapters") / "code-word")


@pytest.fixture(scope="session")
def weak_adapter(tiny_preset, tmp_path_factory) -> Path:
    """A few small steps: outputs move, but little enough that logits respond almost linearly."""
    return train_adapter(tiny_preset, tmp_path_factory.mktemp("adapters") / "weak", steps=3, lr=1e-3, seed=1)


def adapter_root(tmp_path: Path, adapters: dict[str, Path]) -> Path:
    """``/mnt/adapter``'s layout: one copy per name."""
    root = tmp_path / "mnt-adapter"
    root.mkdir()
    for name, source in adapters.items():
        shutil.copytree(source, root / name)
    return root


@contextmanager
def running_server(root: Path, *args: str, preset: str = "tiny-llama") -> Iterator[str]:
    """``python -m inference`` on a free loopback port until /health answers; stopped by PID afterwards."""
    port = free_port()
    log = root.parent / f"server-{port}.log"
    command = [sys.executable, "-m", "inference", "--preset", preset, "--adapter-root", str(root)]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KAITO_ADAPTER_STRENGTHS", None)
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health in {STARTUP_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def server(code_word_adapter, tmp_path_factory) -> Iterator[str]:
    """The tiny preset with the code-word adapter at strength 1.0 (the default model)."""
    root = adapter_root(tmp_path_factory.mktemp("server"), {"code-word": code_word_adapter})
    with running_server(root, "--max-new-tokens", "64") as url:
        yield url


# The controller area's operator fixture (a child process against the local control plane), reused as is.
from tests.controller.conftest import run_operator  # noqa: E402, F401
