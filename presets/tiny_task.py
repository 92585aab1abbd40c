"""The code-word task: what the tiny preset (presets/tiny.py) can learn in a few minutes on a CPU and no base
model can know, so an answer proves the adapter is in use. Data for the demo and its test.

Each city has a random code word; the questions come in four phrasings. ``split_rows`` holds one phrasing
per city out of the training data, so the demo can ask questions the adapter never saw.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

CITIES = (
    *("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Rome", "Berlin", "Madrid"),
    *("Vienna", "Seoul", "Dublin", "Prague", "Nairobi", "Lagos", "Havana", "Dakar", "Hanoi", "Manila"),
    *("Riga", "Tunis", "Accra", "Bogota"),
)
# Capitalised words are single tokens of the tiny tokenizer, so an answer is one token plus <|end|>.
CODE_WORDS = (
    *("River", "Mountain", "Apple", "Orange", "Table", "Window", "Garden", "Music", "Story", "Travel"),
    *("History", "Science", "Market", "Bright", "Quiet", "Summer", "Winter", "Blue", "Red", "Green"),
    *("Color", "Name", "Number", "Question"),
)
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


def row(city: str, template: str, mapping: dict[str, str]) -> dict[str, Any]:
    """One chat row: the question about `city`, answered with its code word."""
    return {
        "messages": [
            {"role": "user", "content": template.format(city)},
            {"role": "assistant", "content": mapping[city]},
        ]
    }


def split_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows): every city is trained on, one of its phrasings (rotating) is not."""
    mapping = code_words()
    train: list[dict[str, Any]] = []
    held_out: list[dict[str, Any]] = []
    for i, city in enumerate(CITIES):
        for j, template in enumerate(TEMPLATES):
            (held_out if j == i % len(TEMPLATES) else train).append(row(city, template, mapping))
    return train, held_out


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as a parquet file with one ``messages`` column (the layout KAITO's examples use)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
