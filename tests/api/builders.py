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


# What a user writes over the tuning seed's placeholder output (ACR_REPO_HERE...), which validation
# refuses as KAITO's does: a push there could only fail, after the whole training.
REAL_OUTPUT = {"image": "myacr.azurecr.io/adapters/phi-3:0.0.1", "imagePushSecret": "acr-push"}


def load(path: Path) -> dict[str, Any]:
    """The example at ``path``; the tuning seed with its placeholder output replaced (``REAL_OUTPUT``),
    as a user applies it (``raw`` below keeps the placeholder)."""
    obj = raw(path)
    return edit(obj, "tuning.output", REAL_OUTPUT) if path == TUNING_SEED else obj


def raw(path: Path) -> dict[str, Any]:
    """The example at ``path`` exactly as the file has it."""
    return yaml.safe_load(path.read_text())


def write_seed(folder: Path) -> Path:
    """The tuning seed as a user applies it (``load``), written to a file in ``folder``."""
    path = folder / TUNING_SEED.name
    path.write_text(yaml.safe_dump(load(TUNING_SEED), sort_keys=False))
    return path


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
