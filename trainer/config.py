"""KAITO's ``training_config.yaml`` as typed settings, and the translators to the libraries' objects.

The seven sections and what they become:

    ModelConfig          -> ``from_pretrained`` kwargs (+ ``chat_template``)
    QuantizationConfig   -> ``transformers.BitsAndBytesConfig`` (None for plain LoRA)
    LoraConfig           -> ``peft.LoraConfig``
    TrainingArguments    -> ``trl.SFTConfig`` kwargs (the trainer overrides the keys it owns)
    DatasetConfig        -> ``DatasetOptions``
    DataCollator         -> ``CollatorOptions``
    EvaluationConfig     -> ``min_improvement`` (the gate on the push), ``checks`` (this project's)

Keys, types and KAITO's rules are checked by ``contract.training_config`` (one implementation,
shared with the controller, which runs it when a Workspace is applied), so a typo fails before a model
loads, with the section, the key and the close matches. ``DatasetOptions`` and ``CollatorOptions``
are what this trainer reads; a test keeps them equal to the controller's option sets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from contract.problems import InvalidSpec, Problem, errors
from contract.training_config import (
    EVALUATION_CONFIG_OPTIONS,
    MODEL_CONFIG_OPTIONS,
    Method,
    validate_training_config,
)

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

# TRL packing strategies that split examples longer than max_length instead of truncating them.
SPLITTING_STRATEGIES = ("bfd_split", "wrapped")


def packing_strategy(training_args: Mapping[str, Any]) -> str:
    """TRL's packing strategy when ``packing`` is on (its default, bfd, when unnamed), else "off"."""
    if not training_args.get("packing"):
        return "off"
    return str(training_args.get("packing_strategy") or "bfd")


# from_pretrained kwargs a config may set (the controller's option set: one list for both sides).
MODEL_KEYS = frozenset(MODEL_CONFIG_OPTIONS)


@dataclass(frozen=True)
class DatasetOptions:
    """DatasetConfig: which columns hold the examples, shuffling, the train/eval split and length limits."""

    messages_column: str | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    text_column: str | None = None
    shuffle_dataset: bool = True
    shuffle_seed: int = 42
    train_test_split: float = 1.0  # share of rows used for training; the rest is the eval set
    eval_files: tuple[str, ...] | None = None  # or: the files (paths, globs) whose rows are the eval set
    max_length: int | None = None  # falls back to TrainingArguments.max_length, then 1024
    skip_bad_rows: bool = False  # False: refuse to train when a row is unusable; True: skip and count


@dataclass(frozen=True)
class CollatorOptions:
    """DataCollator: what the loss is computed on. ``mlm`` is accepted for KAITO compatibility only."""

    mlm: bool | None = None
    completion_only_loss: bool = True
    assistant_only_loss: bool = True


@dataclass(frozen=True)
class TrainingConfig:
    """The parsed file: raw sections (kept for hashing and metadata) plus the typed options."""

    sections: dict[str, dict[str, Any]]
    dataset: DatasetOptions = field(default_factory=DatasetOptions)
    collator: CollatorOptions = field(default_factory=CollatorOptions)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.sections.get(name) or {})

    @property
    def method(self) -> Method:
        """``qlora`` when the file asks for 4- or 8-bit weights, else ``lora`` (KAITO's rule)."""
        quant = self.section("QuantizationConfig")
        return Method.QLORA if quant.get("load_in_4bit") or quant.get("load_in_8bit") else Method.LORA

    def sha256(self) -> str:
        canonical = json.dumps(self.sections, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def min_improvement(self) -> float | None:
        """EvaluationConfig.min_improvement: how much lower than the base's the adapter's held-out loss
        must be for the push to run (``contract.reports.improvement_gate``); None: no gate."""
        value = self.section("EvaluationConfig").get("min_improvement")
        return None if value is None else float(value)

    @property
    def checks(self) -> list[dict[str, str]]:
        """EvaluationConfig.checks (``contract.checks``): [] without any."""
        return list(self.section("EvaluationConfig").get("checks") or [])

    @property
    def check_max_new_tokens(self) -> int:
        given = self.section("EvaluationConfig").get("check_max_new_tokens")
        return int(given or EVALUATION_CONFIG_OPTIONS["check_max_new_tokens"]["default"])

    @property
    def max_length(self) -> int:
        args_len = self.section("TrainingArguments").get("max_length")
        return int(self.dataset.max_length or args_len or 1024)

    @property
    def packing(self) -> str:
        """``packing_strategy`` of the TrainingArguments (the status and the logs show it)."""
        return packing_strategy(self.section("TrainingArguments"))

    @property
    def truncation(self) -> str | None:
        """TRL's ``truncation_mode`` for the pre-flight, or None where packing splits long examples."""
        args = self.section("TrainingArguments")
        if self.packing in SPLITTING_STRATEGIES:
            return None
        return str(args.get("truncation_mode") or "keep_start")


class ConfigError(InvalidSpec):
    """The training config cannot be used; carries every problem found."""


def _set(section: dict[str, Any]) -> dict[str, Any]:
    """The options given a value (null means unset, so the other section's name for it counts)."""
    return {k: v for k, v in section.items() if v is not None}


def parse(doc: dict[str, Any], method: str | None = None) -> TrainingConfig:
    """Validate and type a loaded YAML document (by the rules the controller applies); raises ConfigError
    listing every problem."""
    problems = errors(validate_training_config(doc, method))
    if problems:
        raise ConfigError(problems)
    sections = {name: dict(values or {}) for name, values in doc["training_config"].items()}
    args = sections.get("TrainingArguments", {})
    # TRL's names for the same settings (validation refuses the two disagreeing)
    losses = {k: args[k] for k in ("completion_only_loss", "assistant_only_loss") if args.get(k) is not None}
    text = {"text_column": args["dataset_text_field"]} if args.get("dataset_text_field") is not None else {}
    try:
        given = _set(sections.get("DatasetConfig", {}))
        eval_files = {"eval_files": tuple(given["eval_files"])} if "eval_files" in given else {}
        dataset = DatasetOptions(**{**text, **given, **eval_files})
        collator = CollatorOptions(**{**losses, **_set(sections.get("DataCollator", {}))})
    except TypeError as exc:  # pragma: no cover - keys were checked above
        raise ConfigError([Problem("training_config", str(exc))]) from exc
    if not 0 < float(dataset.train_test_split) <= 1:
        raise ConfigError(
            [
                Problem(
                    "training_config.DatasetConfig.train_test_split",
                    "must be in (0, 1]: the share of rows used for training",
                    dataset.train_test_split,
                )
            ]
        )
    return TrainingConfig(sections=sections, dataset=dataset, collator=collator)


def load(path: Path, method: str | None = None) -> TrainingConfig:
    """Read and check a training_config.yaml (the Workspace's ConfigMap, mounted by the Job)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            [
                Problem(
                    str(path), "training config file not found", None, "pass --config or mount the ConfigMap"
                )
            ]
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(str(path), f"not valid YAML: {exc}")]) from exc
    return parse(doc, method)


def torch_dtype(name: str | None, *, on_cpu: bool) -> torch.dtype:
    """The dtype to compute in. CPUs get float32: bf16 autocast on CPU is slow or unsupported."""
    import torch

    if on_cpu or name in (None, "auto"):
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[str(name)]


def quantization_config(section: dict[str, Any], *, on_cpu: bool) -> BitsAndBytesConfig | None:
    """BitsAndBytesConfig for QLoRA (4-bit NF4 / 8-bit), or None for plain LoRA."""
    if not (section.get("load_in_4bit") or section.get("load_in_8bit")):
        return None
    from transformers import BitsAndBytesConfig

    values = dict(section)
    values["bnb_4bit_compute_dtype"] = torch_dtype(values.get("bnb_4bit_compute_dtype"), on_cpu=on_cpu)
    return BitsAndBytesConfig(**values)


def lora_config(section: dict[str, Any], target_modules: list[str] | str) -> LoraConfig:
    """peft.LoraConfig for a causal LM; the preset's target modules unless the config names them."""
    from peft import LoraConfig

    values = {"task_type": "CAUSAL_LM", "target_modules": target_modules, **section}
    return LoraConfig(**values)


def model_kwargs(section: dict[str, Any], *, on_cpu: bool) -> dict[str, Any]:
    """from_pretrained kwargs; device placement and dtype are decided for the hardware found."""
    passed = MODEL_KEYS - {"chat_template", "device_map", "torch_dtype", "dtype"}
    values = {k: v for k, v in section.items() if k in passed}
    values["dtype"] = torch_dtype(section.get("dtype", section.get("torch_dtype")), on_cpu=on_cpu)
    return values
