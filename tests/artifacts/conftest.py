"""Fixtures for the artifact tests: a small adapter-like directory and client options for the registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from artifacts.registry import ClientOptions


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """An adapter as the trainer leaves it: weights, config, tokenizer bits, a subdirectory, metadata."""
    root = tmp_path / "adapter"
    (root / "checkpoint").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(os.urandom(300_000))
    (root / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (root / "README.md").write_text("# tiny adapter\n")
    (root / "checkpoint" / "trainer_state.json").write_text('{"global_step": 3}')
    (root / "metadata.json").write_text(
        json.dumps(
            {
                "preset": "phi-3-mini-4k-instruct",
                "model_revision": "0a67737cc96d2554230f90338b163bc6380a2a85",
                "method": "qlora",
                "config_sha256": "ab" * 32,
                "data_sha256": "cd" * 32,
                "metrics": {"train_loss": 1.25, "eval_loss": 1.5},
            }
        )
    )
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, to compare trees byte for byte."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def options(docker_config: Path) -> ClientOptions:
    """Credentials for the htpasswd registry, small chunks (multi-chunk uploads) and quick retries."""
    return ClientOptions(docker_config=docker_config, chunk_bytes=64 * 1024, backoff_s=0.1, backoff_max_s=1.0)
