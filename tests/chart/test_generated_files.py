"""The chart's CRD and templates and the training-config reference are generated from their single
sources; a stale copy fails here with the command that refreshes it."""

from __future__ import annotations

import yaml

from contract.training_config import default_training_config, option_sets
from hack import generate_files as generate
from tuning_controller.crd import build_crd


def test_generated_files_are_fresh():
    assert generate.stale_files() == [], "run: python hack/generate_files.py"


def test_chart_crd_is_the_generated_crd():
    path = generate.CHART / "crds" / "workspaces.kaito.sh.yaml"
    assert yaml.safe_load(path.read_text()) == build_crd()


def test_chart_templates_are_kaitos_defaults():
    for method in ("lora", "qlora"):
        path = generate.CHART / "files" / f"{method}-params-template.yaml"
        assert yaml.safe_load(path.read_text()) == default_training_config(method)


def test_reference_lists_every_key_of_every_section():
    text = (generate.ROOT / "docs" / "training-config.md").read_text()
    for section, options in option_sets().items():
        assert f"## {section}" in text
        for key in options:
            assert f"| `{key}` |" in text, f"{section}.{key} missing from docs/training-config.md"
