"""Every Workspace in examples/ validates without errors, and only the warnings it has earned.

KAITO's seed examples carry placeholders (ACR_REPO_HERE...) that no registry or Secret can have, and
the tuning one asks for bfloat16 on a V100. Placeholders are warnings, except the tuning seed's output
image: a push there could only fail after the whole training, so it is refused, as KAITO's validation
refuses it; with it replaced (``builders.load``) the seed has only warnings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.problems import Severity, errors
from hack.operators import LOCAL_MODEL_REGISTRY
from tests.api.builders import EXAMPLES, TUNING_SEED, load, raw
from tuning_controller.validation import validate_workspace

EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def test_the_seed_examples_are_present() -> None:
    names = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLE_FILES}
    assert {
        "inference/kaito_workspace_phi_3.yaml",
        "inference/kaito_workspace_phi_3_with_adapters.yaml",
        "tuning/kaito_workspace_tuning_phi_3.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_validates_without_errors(path: Path) -> None:
    docs = [load(path)] if path == TUNING_SEED else yaml.safe_load_all(path.read_text())
    for doc in docs:
        if doc and doc.get("kind") == "Workspace":
            # the demo's examples: data from the loopback server the demo starts, weights from its mirror
            local = path.stem.startswith("tiny-llama")
            problems = validate_workspace(
                doc,
                allowed_url_networks=("127.0.0.0/8",) if local else (),
                model_registry=LOCAL_MODEL_REGISTRY if local else "",
            )
            assert errors(problems) == [], "\n".join(map(str, problems))


def test_tuning_seed_as_written_is_refused_only_for_its_placeholder_output_image() -> None:
    problems = validate_workspace(raw(TUNING_SEED))
    assert [p.path for p in errors(problems)] == ["tuning.output.image"]
    (refused,) = errors(problems)
    assert "lowercase" in str(refused) and "ACR_REPO_HERE" in str(refused)
    by_path = {p.path: str(p) for p in problems if p.severity is Severity.WARNING}
    assert set(by_path) == {
        "qlora-params-template.training_config.ModelConfig.torch_dtype",
        "qlora-params-template.training_config.QuantizationConfig.bnb_4bit_compute_dtype",
        "tuning.output.imagePushSecret",
    }
    assert "V100" in by_path["qlora-params-template.training_config.ModelConfig.torch_dtype"]
    # with the output replaced, as a user applies it, only warnings remain (the push Secret is real too)
    assert errors(validate_workspace(load(TUNING_SEED))) == []


def test_tuning_seed_is_clean_on_an_ampere_sku_with_real_names() -> None:
    """Replace the placeholders and move to an A100: nothing left to say."""
    ws = raw(TUNING_SEED)
    ws["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    ws["tuning"]["output"] = {"image": "myacr.azurecr.io/adapters/phi-3:0.0.1", "imagePushSecret": "acr-push"}
    assert validate_workspace(ws) == []
