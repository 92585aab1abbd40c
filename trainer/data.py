"""Reading the input directory into rows, and each row into one of three example shapes.

Every data file under the input directory is read (sorted by path, so row numbers are stable) and the
rows are concatenated; a row's index is its position in that concatenation, which is what pre-flight
reports. A file whose columns fit none of the shapes fails as a whole, naming its columns.

Shapes:  ``messages`` [{role, content}, ...]  |  ``prompt`` + ``completion``  |  ``text``
(column names from DatasetConfig when set).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.problems import InvalidSpec, Problem
from trainer.config import DatasetOptions

SUFFIXES = (".parquet", ".json", ".jsonl", ".csv", ".arrow")
ROLES = ("system", "user", "assistant")


class DataError(InvalidSpec):
    """The input cannot be used at all (no files, unreadable file, unknown columns)."""


class BadRow(ValueError):
    """One row cannot become a training example; the message says why, in a person's words."""

    def __init__(self, reason: str, *, too_long: bool = False):
        self.too_long = too_long
        super().__init__(reason)


@dataclass(frozen=True)
class DataFile:
    path: Path
    relpath: str
    sha256: str
    first_row: int
    rows: int


@dataclass(frozen=True)
class Example:
    """A normalised row: exactly one of messages, prompt/completion or text is set."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None


def find_files(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            [Problem(str(root), "input directory not found", None, "pass --data or mount the input")]
        )
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise DataError(
            [
                Problem(
                    str(root),
                    "no data files in the input directory",
                    None,
                    f"put one or more {', '.join(SUFFIXES)} files there",
                )
            ]
        )
    return files


def _read_arrow(path: Path) -> list[dict[str, Any]]:
    """datasets' save_to_disk writes the stream format, pyarrow's default is the file one."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_stream(source).read_all()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def _read_table(path: Path) -> list[dict[str, Any]]:
    import pyarrow.csv
    import pyarrow.parquet

    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".parquet":
        rows = pyarrow.parquet.read_table(path).to_pylist()
    elif suffix == ".csv":
        rows = pyarrow.csv.read_csv(path).to_pylist()
    elif suffix == ".arrow":
        rows = _read_arrow(path)
    else:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError("every record must be a JSON object")
    return rows


def read_rows(root: Path) -> tuple[list[dict[str, Any]], list[DataFile]]:
    """All rows of all data files, concatenated in path order, and a record of each file."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    files: list[DataFile] = []
    problems = []
    for path in find_files(root):
        rel = str(path.relative_to(root))
        try:
            table = _read_table(path)
        except Exception as exc:  # pyarrow, json and unicode errors all mean the same to the user
            kind = path.suffix.lower().lstrip(".")
            problems.append(
                Problem(rel, f"cannot read this {kind} file: {exc}", None, "re-export or remove it")
            )
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(DataFile(path, rel, digest, len(rows), len(table)))
        rows.extend(table)
    if problems:
        raise DataError(problems)
    return rows, files


def combined_sha256(files: list[DataFile]) -> str:
    """The data's identity: the pre-flight reports it and the training checks it against that."""
    joined = "\n".join(f"{f.relpath}:{f.sha256}" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()


def column_mapping(columns: set[str], options: DatasetOptions, where: str) -> dict[str, str]:
    """Which column plays which part; configured names win, then the conventional ones."""
    if options.messages_column:
        wanted = {"messages": options.messages_column}
    elif options.prompt_column or options.completion_column:
        wanted = {
            "prompt": options.prompt_column or "prompt",
            "completion": options.completion_column or "completion",
        }
    elif options.text_column:
        wanted = {"text": options.text_column}
    elif "messages" in columns:
        wanted = {"messages": "messages"}
    elif {"prompt", "completion"} <= columns:
        wanted = {"prompt": "prompt", "completion": "completion"}
    elif "text" in columns:
        wanted = {"text": "text"}
    else:
        raise DataError(
            [
                Problem(
                    where,
                    f"no usable columns; found {sorted(columns)}",
                    None,
                    "expected 'messages', 'prompt' + 'completion' or 'text', or name yours with "
                    "DatasetConfig.messages_column / prompt_column + completion_column / text_column",
                )
            ]
        )
    missing = sorted(c for c in wanted.values() if c not in columns)
    if missing:
        raise DataError(
            [
                Problem(
                    where,
                    f"missing column(s) {missing}; found {sorted(columns)}",
                    None,
                    "fix the DatasetConfig column names or the data",
                )
            ]
        )
    return wanted


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(f"{what} is empty")
    return value


def to_example(row: dict[str, Any], mapping: dict[str, str]) -> Example:
    """Normalise one row; raises BadRow with the reason when it cannot be trained on."""
    if "messages" in mapping:
        messages = row.get(mapping["messages"])
        if not isinstance(messages, list) or not messages:
            raise BadRow(f"'{mapping['messages']}' must be a non-empty list of {{role, content}}")
        turns = []
        for i, turn in enumerate(messages):
            if not isinstance(turn, dict):
                raise BadRow(f"message {i} is not a {{role, content}} object")
            role = turn.get("role")
            if role not in ROLES:
                shown = repr(role) if len(repr(role)) <= 40 else f"{repr(role)[:37]}..."  # data, not status
                raise BadRow(f"message {i} has unknown role {shown}; allowed: {', '.join(ROLES)}")
            turns.append({"role": role, "content": _text(turn.get("content"), f"message {i} content")})
        if not any(t["role"] == "assistant" for t in turns):
            raise BadRow("conversation has no assistant turn: nothing to learn from")
        return Example(messages=turns)
    if "prompt" in mapping:
        return Example(
            prompt=_text(row.get(mapping["prompt"]), mapping["prompt"]),
            completion=_text(row.get(mapping["completion"]), mapping["completion"]),
        )
    return Example(text=_text(row.get(mapping["text"]), mapping["text"]))
