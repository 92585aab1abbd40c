"""Task checks: prompts with the answer expected of them, in the training config's
``EvaluationConfig.checks``; after training the base model and the adapter each answer every prompt
(greedy decoding), and ``status.tuning.evaluation.checks`` counts who passed.

    EvaluationConfig:
      check_max_new_tokens: 16
      checks:
        - {prompt: "What is the code word for Paris?", exact: "River"}
        - {prompt: "Name a primary colour.", contains: "red"}
        - {prompt: "Give the order number.", regex: "^ORD-[0-9]{6}$"}

``exact`` compares the whole answer (both stripped of surrounding white space), ``contains`` looks for the
text anywhere in it, ``regex`` searches it with Python's ``re``. Validation and matching live here, so
the controller (at apply time) and the trainer (in the pod) read an item the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypedDict

from contract.problems import Problem
from contract.suggest import did_you_mean

MAX_CHECKS = 100  # each costs two generations (base and adapter): seconds, not minutes
MAX_NEW_TOKENS = 64
MATCHES = ("exact", "contains", "regex")
FIELDS = ("prompt", *MATCHES)


class ChecksScore(TypedDict):
    """``status.tuning.evaluation.checks``: how many of ``total`` checks the adapter and the base passed
    (``passed`` is None until the adapter has answered, after the last step)."""

    passed: int | None
    total: int
    basePassed: int


def _item_problems(item: Any, where: str) -> list[Problem]:
    if not isinstance(item, Mapping):
        return [Problem(where, "must be a mapping {prompt, and one of exact, contains, regex}", item)]
    problems = [
        Problem(
            f"{where}.{key}",
            "unknown field of a check",
            None,
            did_you_mean(str(key), FIELDS) or f"fields: {', '.join(FIELDS)}",
        )
        for key in item
        if key not in FIELDS
    ]
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(Problem(f"{where}.prompt", "must be a non-empty string: the question asked", prompt))
    given = [key for key in MATCHES if key in item]
    if len(given) != 1:
        have = ", ".join(given) or "none"
        problems.append(
            Problem(where, f"needs exactly one of exact, contains or regex (has {have})", None, "keep one")
        )
    for key in given:
        value = item[key]
        if not isinstance(value, str) or not value:
            problems.append(Problem(f"{where}.{key}", "must be a non-empty string", value, "quote it"))
        elif key == "regex":
            try:
                re.compile(value)
            except re.error as exc:
                problems.append(
                    Problem(
                        f"{where}.regex",
                        f"is not a regular expression ({exc})",
                        value,
                        "Python's re syntax, searched for anywhere in the answer",
                    )
                )
    return problems


def check_problems(items: Any, path: str) -> list[Problem]:
    """Every problem of ``EvaluationConfig.checks`` (a list; its type is checked with the other options),
    each at its item's index and field."""
    if not isinstance(items, list):
        return []
    problems: list[Problem] = []
    if len(items) > MAX_CHECKS:
        problems.append(
            Problem(
                path,
                f"holds {len(items)} checks, more than {MAX_CHECKS}",
                None,
                "keep the ones that tell most: each costs a generation by the base and by the adapter",
            )
        )
    for index, item in enumerate(items):
        problems += _item_problems(item, f"{path}[{index}]")
    return problems


def passes(item: Mapping[str, str], answer: str) -> bool:
    """Whether ``answer`` (the decoded new tokens) passes the check ``item`` (a valid one)."""
    if "exact" in item:
        return answer.strip() == item["exact"].strip()
    if "contains" in item:
        return item["contains"] in answer
    return re.search(item["regex"], answer) is not None


def checks_line(score: Mapping[str, Any]) -> str:
    """The score for people: ``checks: adapter 20/24, base 3/24``."""
    total, adapter = score.get("total"), score.get("passed")
    answered = "not yet answered" if adapter is None else f"{adapter}/{total}"
    return f"checks: adapter {answered}, base {score.get('basePassed')}/{total}"
