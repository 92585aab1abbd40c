"""Data for the trainer tests: the code-word task of presets/tiny_task.py as JSON lines; KAITO config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from contract.training_config import SECTIONS, default_training_config
from presets.tiny_task import CITIES, TEMPLATES, code_words, row


def code_word_rows() -> list[dict[str, Any]]:
    """Every phrasing of every city (the trainer tests hold out by their own split)."""
    mapping = code_words()
    return [row(city, template, mapping) for city in CITIES for template in TEMPLATES]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def kaito_config(path: Path, **training_arguments: Any) -> Path:
    """KAITO's qlora-params-template, with overrides to TrainingArguments (and other sections by name)."""
    sections = default_training_config("qlora")["training_config"]
    for name in list(training_arguments):
        if name in SECTIONS:
            sections.setdefault(name, {}).update(training_arguments.pop(name))
    sections["TrainingArguments"].update(training_arguments)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"training_config": sections}, sort_keys=False))
    return path


def held_out_checks(rows: list[dict[str, Any]], train_test_split: float = 0.75) -> list[dict[str, str]]:
    """Task checks of the rows the trainer holds out of ``rows`` (the pre-flight's own shuffle and split,
    so these prompts are never trained on): the user turn, and the assistant's answer exactly."""
    from trainer.config import DatasetOptions
    from trainer.preflight import _split

    _, held_out = _split(list(range(len(rows))), DatasetOptions(train_test_split=train_test_split))
    return [
        {"prompt": rows[i]["messages"][0]["content"], "exact": rows[i]["messages"][1]["content"]}
        for i in held_out
    ]
