"""One shape for every problem found in a Workspace, a training config or a data set.

Validators collect problems instead of raising at the first one, so a user sees everything that is
wrong in one pass; the CLI, the controller's status conditions and the trainer's pre-flight all print
the same ``Problem``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """A single finding: where (dotted field path), what was there, why it is wrong, and how to fix it."""

    path: str
    message: str
    value: Any = None
    hint: str = ""
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        shown = "" if self.value is None else f" (got {self.value!r})"
        fix = f"; {self.hint}" if self.hint else ""
        return f"{self.severity}: {self.path}: {self.message}{shown}{fix}"


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity is Severity.ERROR]


class InvalidSpec(ValueError):
    """Raised by callers that need an exception; carries every problem, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
