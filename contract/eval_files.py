"""``DatasetConfig.eval_files``: data files whose rows are the held-out set, instead of a random split.

    DatasetConfig:
      eval_files: [eval.parquet, "holdout/*.jsonl"]

Each entry names a file as the pre-flight does (``trainer.data.DataFile.relpath``: its path inside the
input data, ``/``-separated) or is an ``fnmatch`` glob of such paths (``*`` also crosses ``/``). A fixed
evaluation set keeps held-out losses comparable across runs and data versions; the random split of
``train_test_split`` changes whenever rows are added. Validation and matching live here, so the controller
(at apply time, against the names ``tuning.input.urls`` are saved under) and the pre-flight (against the
files it reads) read a pattern the same way.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from contract.problems import Problem

MAX_EVAL_FILES = 100  # a glob names many files; a longer list is a file list pasted in
NAMES_SHOWN = 20  # file names listed in a message before "and N more"
_WHAT = "a data file's path inside the input, or a glob such as eval*.parquet"


def _entry_problems(item: Any, where: str) -> list[Problem]:
    if not isinstance(item, str) or not item.strip():
        return [Problem(where, f"must be a non-empty string: {_WHAT}", item)]
    if item.startswith("/"):
        return [Problem(where, "must be relative to the input data (no leading /)", item, _WHAT)]
    segments = item.split("/")
    if ".." in segments:
        return [Problem(where, "must stay inside the input data (no .. segment)", item, _WHAT)]
    if any(s in ("", ".") for s in segments):
        return [
            Problem(
                where,
                "never matches: the pre-flight names files without . or empty path segments",
                item,
                f"write {posixpath.normpath(item)!r}",
            )
        ]
    return []


def eval_file_problems(items: Any, path: str) -> list[Problem]:
    """Every problem of ``DatasetConfig.eval_files`` (a list; its type is checked with the other options),
    each entry at its index."""
    if not isinstance(items, list):
        return []
    problems = [p for index, item in enumerate(items) for p in _entry_problems(item, f"{path}[{index}]")]
    if len(items) > MAX_EVAL_FILES:
        problems.append(
            Problem(
                path,
                f"holds {len(items)} entries, more than {MAX_EVAL_FILES}",
                None,
                "name them with a glob such as eval/*.parquet, or put them in one folder",
            )
        )
    return problems


def held_out_names(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    """The ``names`` any pattern matches, in their order (case-sensitive, as file systems are)."""
    return [name for name in names if any(fnmatchcase(name, p) for p in patterns)]


def unmatched_patterns(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    """The patterns that match none of ``names``: a typo, or a file missing from this data version."""
    return [p for p in patterns if not any(fnmatchcase(name, p) for name in names)]


def names_listing(names: Sequence[str], shown: int = NAMES_SHOWN) -> str:
    """``a.jsonl, b.jsonl and 3 more``: the files a message lists, so a person sees what does exist."""
    listed = ", ".join(names[:shown]) or "none"
    return f"{listed} and {len(names) - shown} more" if len(names) > shown else listed
