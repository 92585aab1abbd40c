"""Finding adapters under /mnt/adapter and reading their strengths (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.pod import StrengthError, parse_strengths
from inference.adapters import AdapterError, discover


def make_adapter(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return directory


def test_pulled_and_kaito_image_layouts_with_strengths(tmp_path):
    make_adapter(tmp_path / "pulled")
    make_adapter(tmp_path / "mounted" / "data")  # a KAITO adapter image mounted as an image volume

    adapters = discover(tmp_path, parse_strengths(["pulled=0.25"]))

    assert [(a.name, a.path, a.strength) for a in adapters] == [
        ("mounted", tmp_path / "mounted" / "data", 1.0),
        ("pulled", tmp_path / "pulled", 0.25),
    ]


def test_strengths_from_env_style_and_flags_merge():
    assert parse_strengths(["a=0.5,b=1", "c=0"]) == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert parse_strengths(["", " "]) == {}


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("a", "NAME=VALUE"),
        ("a=strong", "not a number"),
        ("a=1.5", "outside 0.0..1.0"),
        ("=0.5", "NAME=VALUE"),
    ],
)
def test_bad_strengths_say_what_is_allowed(item, words):
    with pytest.raises(StrengthError, match=words):
        parse_strengths([item])


def test_missing_files_unknown_names_and_clashes_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"adapter 'empty': no adapter_config\.json"):
        discover(tmp_path, {})
    (tmp_path / "empty").rmdir()
    make_adapter(tmp_path / "ok")
    with pytest.raises(AdapterError, match=r"strengths given for \['typo'\].*found: \['ok'\]"):
        discover(tmp_path, {"typo": 0.5})
    with pytest.raises(AdapterError, match="clash"):
        discover(tmp_path, {}, reserved=("ok",))
    assert discover(tmp_path / "absent", {}) == []
