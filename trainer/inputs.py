"""What a step reads before any model loads: the training config, the preset, the tokenizer and the data.

Both steps start here; the pre-flight stops after ``check_data`` (no torch is imported on the way). Every
failure is an ``InvalidSpec`` listing its problems: retrying cannot help (exit ``EXIT_UNUSABLE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.problems import InvalidSpec, Problem
from contract.training_config import Method
from presets.resolve import ResolvedPreset, resolve_preset
from trainer import config as cfg
from trainer.data import DataFile, read_rows
from trainer.model import load_tokenizer
from trainer.options import TrainerOptions
from trainer.preflight import Prepared, prepare

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Setup:
    """The checked training config, the preset's weights and the method they decide."""

    config: cfg.TrainingConfig
    preset: ResolvedPreset
    method: Method


@dataclass(frozen=True)
class CheckedData:
    """Every row rendered and tokenized: the examples, the report (with the data's sha256), the files."""

    tokenizer: PreTrainedTokenizerBase
    prepared: Prepared
    files: list[DataFile]


def load_setup(options: TrainerOptions) -> Setup:
    config = cfg.load(options.config, options.method)
    preset = resolve_preset(options.preset, options.weights)
    return Setup(config, preset, options.method or config.method)


def check_data(options: TrainerOptions, setup: Setup) -> CheckedData:
    """Load the tokenizer (no download: the image or the fetched weights hold it) and check the data."""
    config, preset = setup.config, setup.preset
    try:
        tokenizer = load_tokenizer(preset, config)
    except InvalidSpec:
        raise
    except (OSError, ValueError) as exc:  # not in the image/cache (no download allowed), or no tokenizer
        raise InvalidSpec(
            [Problem("--preset", f"cannot load {preset.name!r} from {preset.source}: {exc}")]
        ) from exc
    rows, files = read_rows(options.data)
    prepared = prepare(
        rows, files, tokenizer, config.dataset, config.collator, config.max_length, config.truncation
    )
    prepared.report["packing"] = config.packing  # TRL packs when training; the status shows it
    return CheckedData(tokenizer, prepared, files)
