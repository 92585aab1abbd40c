"""Builders for Workspace test objects: the seed examples as fresh dicts, and a path-based editor."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TUNING_SEED = EXAMPLES / "tuning" / "kaito_workspace_tuning_phi_3.yaml"
INFERENCE_SEED = EXAMPLES / "inference" / "kaito_workspace_phi_3.yaml"
ADAPTERS_SEED = EXAMPLES / "inference" / "kaito_workspace_phi_3_with_adapters.yaml"

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def edit(obj: dict[str, Any], path: str, value: Any = ..., *, delete: bool = False) -> dict[str, Any]:
    """A deep copy of ``obj`` with the dotted ``path`` (a.b[0].c) set to ``value`` or deleted."""
    out = copy.deepcopy(obj)
    steps = [name if name else int(index) for name, index in _STEP.findall(path)]
    node: Any = out
    for step in steps[:-1]:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    if delete:
        del node[steps[-1]]
    else:
        node[steps[-1]] = copy.deepcopy(value)
    return out
