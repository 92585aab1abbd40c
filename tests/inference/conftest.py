"""Inference test fixtures: the tiny preset, adapters trained here, and the server as a child process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.operators import running_inference_server
from tests.inference.adapters import train_adapter


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


def running_server(root: Path, *args: str, preset: str = "tiny-llama"):
    """The inference server on `root` (an ``/mnt/adapter`` layout), logging beside it."""
    return running_inference_server(root, root.parent / "server.log", *args, preset=preset)


@pytest.fixture(scope="module")
def server(code_word_adapter, tmp_path_factory) -> Iterator[str]:
    """The tiny preset with the code-word adapter at strength 1.0 (the default model)."""
    root = adapter_root(tmp_path_factory.mktemp("server"), {"code-word": code_word_adapter})
    with running_server(root, "--max-new-tokens", "64") as url:
        yield url


# The controller area's operator fixture (a child process against the local control plane), reused as is.
from tests.controller.conftest import no_operator_unless_asked, run_operator  # noqa: E402, F401
