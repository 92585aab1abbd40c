"""The option names, types, choices and defaults of the library classes a training config feeds.

The controller must stay slim (no torch), yet check every key of ``training_config.yaml`` against the
real option sets: BitsAndBytesConfig (QuantizationConfig), peft LoraConfig (LoraConfig) and TRL
SFTConfig (TrainingArguments). So they are introspected once into ``training_options.json`` by
``python -m hack.training_options --write``; a test introspects the installed libraries again and
asserts equality, so a library bump cannot drift silently.

Each option is ``{"types": [...], "default": ..., "choices": [...]?}`` with types from
bool, int, float, str, list, dict, null, object (anything else: not checked further).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).resolve().with_name("training_options.json")


@functools.cache
def load() -> dict[str, Any]:
    """The snapshot: {"versions": {...}, "sections": {section: {option: {types, default, choices?}}}}."""
    loaded: dict[str, Any] = json.loads(SNAPSHOT.read_text())
    return loaded
