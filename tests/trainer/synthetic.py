"""Generated data for the trainer tests: a code-word task no base model can know, and KAITO's config."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from tuning_controller.training_config import default_training_config

CITIES = tuple(
    [
        "Paris",
        "Tokyo",
        "Lima",
        "Oslo",
        "Cairo",
        "Delhi",
        "Quito",
        "Rome",
        "Berlin",
        "Madrid",
        "Vienna",
        "Seoul",
        "Dublin",
        "Prague",
        "Nairobi",
        "Lagos",
        "Havana",
        "Dakar",
        "Hanoi",
        "Manila",
        "Riga",
        "Tunis",
        "Accra",
        "Bogota",
    ]
)
# Capitalised words are single tokens of the tiny tokenizer, so an answer is one token plus <|end|>.
CODE_WORDS = [
    "River",
    "Mountain",
    "Apple",
    "Orange",
    "Table",
    "Window",
    "Garden",
    "Music",
    "Story",
    "Travel",
    "History",
    "Science",
    "Market",
    "Bright",
    "Quiet",
    "Summer",
    "Winter",
    "Blue",
    "Red",
    "Green",
    "Color",
    "Name",
    "Number",
    "Question",
]
TEMPLATES = (
    "code word for {}?",
    "What is the code word for {}?",
    "Tell me the code word of {}.",
    "{}: which code word?",
)


def code_words(seed: int = 7) -> dict[str, str]:
    """A fixed random city -> word mapping."""
    words = list(CODE_WORDS)
    random.Random(seed).shuffle(words)
    return dict(zip(CITIES, words, strict=True))


def code_word_rows() -> list[dict[str, Any]]:
    mapping = code_words()
    return [
        {
            "messages": [
                {"role": "user", "content": template.format(city)},
                {"role": "assistant", "content": mapping[city]},
            ]
        }
        for city in CITIES
        for template in TEMPLATES
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def kaito_config(path: Path, **training_arguments: Any) -> Path:
    """KAITO's qlora-params-template, with overrides to TrainingArguments (and other sections by name)."""
    sections = default_training_config("qlora")["training_config"]
    for name in list(training_arguments):
        if name in sections:
            sections[name].update(training_arguments.pop(name))
    sections["TrainingArguments"].update(training_arguments)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"training_config": sections}, sort_keys=False))
    return path
