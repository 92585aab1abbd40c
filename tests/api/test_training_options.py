"""The option snapshot equals what the installed libraries declare, so a pin bump cannot drift silently."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

from contract import training_options
from contract.training_config import SECTIONS, option_sets
from hack import training_options as introspection
from trainer import config as trainer_config


def test_snapshot_matches_the_installed_libraries() -> None:
    current = introspection.introspect()
    assert current == training_options.load(), (
        "training_options.json is stale: run python -m hack.training_options --write"
    )


def test_snapshot_holds_the_options_kaito_templates_use() -> None:
    sets = option_sets()
    assert set(sets) == set(SECTIONS)
    assert {"load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype"} <= set(
        sets["QuantizationConfig"]
    )
    assert {"r", "lora_alpha", "lora_dropout", "target_modules"} <= set(sets["LoraConfig"])
    assert {"output_dir", "per_device_train_batch_size", "learning_rate", "max_length"} <= set(
        sets["TrainingArguments"]
    )
    assert sets["LoraConfig"]["bias"]["choices"] == ["all", "lora_only", "none"]


def test_the_controller_side_does_not_import_torch() -> None:
    """Validation runs in the slim controller image: loading the snapshot and validating needs no torch."""
    code = (
        "import sys; from tuning_controller.validation import validate_workspace; "
        "from contract.training_config import option_sets; option_sets(); "
        "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_project_sections_match_what_the_trainer_reads() -> None:
    """The trainer types DatasetConfig and DataCollator itself: the names must be the same sets, or a
    config that validates here would fail in the pod (or the reverse)."""
    sets = option_sets()
    assert set(sets["DatasetConfig"]) == {f.name for f in dataclasses.fields(trainer_config.DatasetOptions)}
    assert set(sets["DataCollator"]) == {f.name for f in dataclasses.fields(trainer_config.CollatorOptions)}
    for field in dataclasses.fields(trainer_config.DatasetOptions):
        assert sets["DatasetConfig"][field.name]["default"] == field.default, field.name
    for field in dataclasses.fields(trainer_config.CollatorOptions):
        assert sets["DataCollator"][field.name]["default"] == field.default, field.name


def test_type_names_do_not_depend_on_which_union_was_built_first() -> None:
    """typing caches Unions by equality: Union[str, list] can come back as Union[list, str] when some
    imported module built that one first (seen in CI); the snapshot must not depend on import order."""
    first = introspection._type_info(typing.Optional[typing.Union[list[str], str]])  # noqa: UP007, UP045
    second = introspection._type_info(typing.Optional[typing.Union[str, list[str]]])  # noqa: UP007, UP045
    assert first == second == (["str", "list", "null"], None)
