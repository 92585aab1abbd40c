"""Introspect the installed training libraries into ``contract/training_options.json`` (imports torch).

    python -m hack.training_options --write   # regenerate after bumping a pin
    python -m hack.training_options --check   # exit 1 if the snapshot is stale

The snapshot's format is described in ``contract.training_options``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import json
import sys
import types
import typing
from typing import Any

from contract.training_options import SNAPSHOT

LIBRARIES = ("transformers", "peft", "trl", "bitsandbytes")

# BitsAndBytesConfig.__init__ has no annotations; these are its documented types.
_BNB_TYPES: dict[str, list[str]] = {
    "load_in_8bit": ["bool", "null"],
    "load_in_4bit": ["bool", "null"],
    "llm_int8_threshold": ["float"],
    "llm_int8_skip_modules": ["list", "null"],
    "llm_int8_enable_fp32_cpu_offload": ["bool"],
    "llm_int8_has_fp16_weight": ["bool"],
    "bnb_4bit_compute_dtype": ["str", "null"],
    "bnb_4bit_quant_type": ["str"],
    "bnb_4bit_use_double_quant": ["bool"],
    "bnb_4bit_quant_storage": ["str", "null"],
}
_SIMPLE = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    type(None): "null",
    list: "list",
    dict: "dict",
}


# One order for type names: typing caches Unions by equality, so Union[str, list] may come back as
# Union[list, str] depending on which one some imported module built first.
_TYPE_ORDER = ("bool", "int", "float", "str", "list", "dict", "object", "null")


def _type_info(tp: Any) -> tuple[list[str], list[Any] | None]:
    """Flatten an annotation into simple type names (in _TYPE_ORDER) and, for Literal/Enum members, the
    allowed values."""
    names: list[str] = []
    choices: list[Any] = []
    origin = typing.get_origin(tp)
    if origin is typing.Union or isinstance(tp, types.UnionType):
        for arg in typing.get_args(tp):
            sub_names, sub_choices = _type_info(arg)
            names += [n for n in sub_names if n not in names]
            choices += sub_choices or []
    elif origin is typing.Literal:
        for value in typing.get_args(tp):
            kind = _SIMPLE.get(type(value), "object")
            if kind not in names:
                names.append(kind)
            choices.append(value)
    elif origin in (list, tuple, set) or tp in (list, tuple, set):
        names.append("list")
    elif origin is dict or tp is dict:
        names.append("dict")
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        names.append("str")
        choices += [member.value for member in tp]
    elif tp in _SIMPLE:
        names.append(_SIMPLE[tp])
    else:
        names.append("object")
    return sorted(names, key=_TYPE_ORDER.index), (choices or None)


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    try:
        json.dumps(value)
    except TypeError:
        return None
    return value


def _dataclass_options(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        names, choices = _type_info(hints[f.name])
        choices = choices or f.metadata.get("choices")  # TRL lists them in the field's metadata
        option: dict[str, Any] = {"types": names, "default": _json_default(default)}
        if choices and all(isinstance(c, str) for c in choices):  # choices constrain string values only
            option["choices"] = sorted(set(choices))
        out[f.name] = option
    return out


def _bnb_options() -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    out: dict[str, Any] = {}
    for name, param in inspect.signature(BitsAndBytesConfig.__init__).parameters.items():
        if name in ("self", "kwargs"):
            continue
        option: dict[str, Any] = {
            "types": _BNB_TYPES.get(name, ["object"]),
            "default": _json_default(param.default),
        }
        if name == "bnb_4bit_quant_type":
            option["choices"] = ["fp4", "nf4"]
        out[name] = option
    return out


def introspect() -> dict[str, Any]:
    """Read the option sets from the installed libraries (imports torch; never called by the controller)."""
    from importlib.metadata import version

    from peft import LoraConfig
    from trl import SFTConfig

    return {
        "versions": {name: version(name) for name in LIBRARIES},
        "sections": {
            "QuantizationConfig": _bnb_options(),
            "LoraConfig": _dataclass_options(LoraConfig),
            "TrainingArguments": _dataclass_options(SFTConfig),
        },
    }


def render(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"regenerate {SNAPSHOT.name}")
    group.add_argument(
        "--check", action="store_true", help="exit 1 if the snapshot differs from the libraries"
    )
    args = parser.parse_args(argv)
    current = render(introspect())
    if args.write:
        SNAPSHOT.write_text(current)
        print(f"wrote {SNAPSHOT}")
        return 0
    if SNAPSHOT.read_text() != current:
        print(f"{SNAPSHOT} is stale: run python -m hack.training_options --write", file=sys.stderr)
        return 1
    print(f"{SNAPSHOT.name} matches the installed libraries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
