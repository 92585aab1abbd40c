"""The typed model (parse, round trip, both API versions) and KAITO's update rules given old and new."""

from __future__ import annotations

from typing import Any

import pytest

from contract.problems import errors
from contract.workspace import Workspace, parse_workspace, to_dict
from tests.api.builders import edit
from tuning_controller.validation import validate_workspace


def test_parse_round_trips_the_seed(tuning_ws: dict[str, Any]) -> None:
    ws, problems = parse_workspace(tuning_ws)
    assert problems == []
    assert isinstance(ws, Workspace)
    assert ws.tuning is not None and ws.tuning.method == "qlora"
    assert ws.resource is not None and ws.resource.label_selector is not None
    assert ws.resource.label_selector.match_labels == {"app": "phi-3-adapter"}
    assert to_dict(ws) == edit(tuning_ws, "resource.count", 1)  # the model fills defaults in


@pytest.mark.parametrize("version", ["kaito.sh/v1alpha1", "kaito.sh/v1beta1"])
def test_both_api_versions_have_the_same_shape(tuning_ws: dict[str, Any], version: str) -> None:
    assert errors(validate_workspace(edit(tuning_ws, "apiVersion", version))) == []


def test_unknown_fields_are_all_reported_with_the_nearest_name(tuning_ws: dict[str, Any]) -> None:
    ws = edit(edit(tuning_ws, "tuning.presett", {"name": "x"}), "resource.instanceTyp", "x")
    _, problems = parse_workspace(ws)
    hints = {p.path: p.hint for p in problems}
    assert "did you mean 'preset'" in hints["tuning.presett"]
    assert "did you mean 'instanceType'" in hints["resource.instanceTyp"]


def test_loopback_urls_are_allowed_only_when_asked(tuning_ws: dict[str, Any]) -> None:
    ws = edit(tuning_ws, "tuning.input.urls", ["http://127.0.0.1:8080/train.jsonl"])
    assert [p.path for p in errors(validate_workspace(ws))] == ["tuning.input.urls[0]"]
    assert errors(validate_workspace(ws, allowed_url_networks=("127.0.0.0/8",))) == []


def test_method_in_upper_case_is_accepted_like_kaito_with_a_warning(tuning_ws: dict[str, Any]) -> None:
    problems = validate_workspace(edit(tuning_ws, "tuning.method", "QLoRA"))
    assert errors(problems) == []
    assert any(p.path == "tuning.method" and "lower case" in p.message for p in problems)


UPDATE_CASES = [
    ("tuning.preset.name", "phi-3.5-mini-instruct", "tuning.preset"),
    ("tuning.method", "lora", "tuning.method"),
    ("tuning.input.urls", ["https://example.com/other.parquet"], "tuning.input"),
    ("tuning.output.image", "myacr.azurecr.io/other:1", "tuning.output"),
    ("resource.instanceType", "Standard_NC24ads_A100_v4", "resource.instanceType"),
    ("resource.labelSelector.matchLabels", {"app": "other"}, "resource.labelSelector"),
]


@pytest.mark.parametrize(("path", "value", "reported"), UPDATE_CASES, ids=[c[2] for c in UPDATE_CASES])
def test_immutable_fields_cannot_change(
    tuning_ws: dict[str, Any], path: str, value: Any, reported: str
) -> None:
    problems = errors(validate_workspace(edit(tuning_ws, path, value), old=tuning_ws))
    assert reported in [p.path for p in problems], "\n".join(map(str, problems))
    assert any("cannot be changed" in p.message for p in problems)


def test_tuning_cannot_become_inference(tuning_ws: dict[str, Any], inference_ws: dict[str, Any]) -> None:
    new = edit(inference_ws, "metadata.name", tuning_ws["metadata"]["name"])
    problems = errors(validate_workspace(new, old=tuning_ws))
    assert any("cannot be switched" in p.message for p in problems)


def test_reordered_urls_and_unchanged_updates_are_fine(tuning_ws: dict[str, Any]) -> None:
    two = edit(
        tuning_ws, "tuning.input.urls", ["https://example.com/a.parquet", "https://example.com/b.parquet"]
    )
    swapped = edit(
        two, "tuning.input.urls", ["https://example.com/b.parquet", "https://example.com/a.parquet"]
    )
    assert errors(validate_workspace(swapped, old=two)) == []
    assert errors(validate_workspace(tuning_ws, old=tuning_ws)) == []


def test_adapters_may_change_but_the_served_preset_may_not(adapters_ws: dict[str, Any]) -> None:
    more = edit(adapters_ws, "inference.adapters[0].strength", "0.5")
    assert errors(validate_workspace(more, old=adapters_ws)) == []
    other = edit(adapters_ws, "inference.preset.name", "phi-3-mini-4k-instruct")
    assert "inference.preset" in [p.path for p in errors(validate_workspace(other, old=adapters_ws))]
