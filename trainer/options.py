"""The trainer's options, typed: what ``python -m trainer.qlora`` was told, read by every step.

The defaults are the pod's paths (``contract.pod``), so the controller passes only what varies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.pod import CONFIG_DIR, CONFIG_KEY, DATA_DIR, RESULTS_DIR
from contract.training_config import Method


@dataclass(frozen=True)
class TrainerOptions:
    preset: str  # catalog name or model directory
    config: Path = Path(CONFIG_DIR) / CONFIG_KEY
    data: Path = Path(DATA_DIR)
    output: Path = Path(RESULTS_DIR)
    weights: Path | None = None  # the preset's model directory (what fetch-model filled)
    method: Method | None = None  # None: from QuantizationConfig
    checkpoint_minutes: float = 15.0  # also save every M minutes
    progress_file: Path | None = None  # JSON-lines progress here instead of stdout
    progress_interval: float = 5.0  # seconds between step events
