"""Checks for ``training_config.yaml`` (the tuning ConfigMap's key) and KAITO's default templates.

KAITO never looks inside the sections, so a typo such as ``learning_rat`` fails hours later inside the
pod, or worse, is ignored. Here every key of every section is checked up front against the real option
sets: BitsAndBytesConfig, peft LoraConfig and TRL SFTConfig (snapshotted in ``training_options.json``,
so the controller needs no torch) and this project's ModelConfig, DatasetConfig and DataCollator
(defined below; the trainer reads exactly these). Then types, ranges, choices, KAITO's own rules
(load_in_4bit/8bit vs method, output_dir under /mnt). The rules that need the preset and GPU catalogs
(target modules, bfloat16 support) are the operator's: ``tuning_controller.training_targets``. Every
problem is collected; nothing stops at the first.
"""

from __future__ import annotations

import copy
import functools
import posixpath
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from contract import training_options
from contract.checks import MAX_CHECKS, MAX_NEW_TOKENS, check_problems
from contract.eval_files import MAX_EVAL_FILES, eval_file_problems
from contract.problems import Problem
from contract.suggest import did_you_mean

ROOT = "training_config"
SECTIONS = (
    "ModelConfig",
    "QuantizationConfig",
    "LoraConfig",
    "TrainingArguments",
    "DatasetConfig",
    "DataCollator",
    "EvaluationConfig",
)


class Method(StrEnum):
    """KAITO's tuning methods; ``tuning.method`` is matched case-insensitively (``Method.parse``)."""

    LORA = "lora"
    QLORA = "qlora"

    @classmethod
    def parse(cls, value: str | None) -> Method | None:
        """The method ``value`` names (any case), or None when it names none."""
        try:
            return cls(str(value or "").strip().lower())
        except ValueError:
            return None

    @classmethod
    def require(cls, value: str | None) -> Method:
        """The method ``value`` names (any case); ValueError for code that only valid Workspaces reach."""
        method = cls.parse(value)
        if method is None:
            raise ValueError(f"method must be lora or qlora, got {value!r}")
        return method


METHODS = tuple(m.value for m in Method)
TORCH_DTYPES = ["auto", "bfloat16", "float16", "float32"]
COMPUTE_DTYPES = ["bfloat16", "float16", "float32", "float", "half"]
STORAGE_DTYPES = ["uint8", "bfloat16", "float16", "float32"]


def _opt(types: list[str], default: Any, help_: str, choices: list[str] | None = None) -> dict[str, Any]:
    option: dict[str, Any] = {"types": types, "default": default, "help": help_}
    if choices:
        option["choices"] = choices
    return option


# This project's sections (the trainer consumes exactly these names).
MODEL_CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "torch_dtype": _opt(["str", "null"], "bfloat16", "weights dtype (KAITO's name)", TORCH_DTYPES),
    "dtype": _opt(["str", "null"], None, "weights dtype (transformers 5's name)", TORCH_DTYPES),
    "local_files_only": _opt(["bool"], True, "never reach a model hub from the pod"),
    "device_map": _opt(
        ["str", "dict", "null"],
        "auto",
        "layer placement",
        ["auto", "balanced", "balanced_low_0", "sequential"],
    ),
    "trust_remote_code": _opt(["bool"], False, "run code shipped with the weights"),
    "revision": _opt(["str", "null"], None, "the weights' revision"),
    "attn_implementation": _opt(
        ["str", "null"],
        None,
        "attention kernel",
        ["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"],
    ),
    "low_cpu_mem_usage": _opt(["bool"], True, "load weights without a full CPU copy"),
    "use_cache": _opt(["bool"], False, "KV cache"),
    "chat_template": _opt(["str", "null"], None, "Jinja chat template overriding the tokenizer's"),
}
DATASET_CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "messages_column": _opt(
        ["str", "null"], None, "conversational column [{role, content}] (default: detected)"
    ),
    "prompt_column": _opt(
        ["str", "null"], None, "prompt column of prompt/completion data (default: detected)"
    ),
    "completion_column": _opt(["str", "null"], None, "completion column (default: detected)"),
    "text_column": _opt(["str", "null"], None, "plain-text column (default: detected)"),
    "shuffle_dataset": _opt(["bool"], True, "shuffle rows before splitting"),
    "shuffle_seed": _opt(["int"], 42, "seed of the shuffle"),
    "train_test_split": _opt(["float"], 1.0, "fraction of rows used for training, in (0, 1]"),
    "eval_files": _opt(
        ["list", "null"],
        None,
        f"the held-out set instead of a random split, at most {MAX_EVAL_FILES}: data files (paths inside "
        "the input, fnmatch globs such as eval*.parquet) whose rows are all held out, in file order; every "
        "other file trains. Not with train_test_split below 1",
    ),
    "max_length": _opt(["int", "null"], None, "tokens per row (default: TrainingArguments.max_length)"),
    "skip_bad_rows": _opt(["bool"], False, "drop malformed rows (counted) instead of failing"),
}
DATA_COLLATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "mlm": _opt(["bool", "null"], None, "accepted for KAITO compatibility; causal LM training ignores it"),
    "completion_only_loss": _opt(["bool"], True, "loss on completions only (prompt/completion data)"),
    "assistant_only_loss": _opt(["bool"], True, "loss on assistant turns only (conversational data)"),
}
EVALUATION_CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "min_improvement": _opt(
        ["float", "null"],
        None,
        "push the adapter only when its held-out loss is at least this fraction below the base model's "
        "(0.05: 5% lower; 0: no higher); otherwise the push is skipped, the Workspace fails with both "
        "losses and the adapter stays on the results claim. Needs held-out rows: "
        "DatasetConfig.train_test_split below 1 or DatasetConfig.eval_files",
    ),
    "checks": _opt(
        ["list", "null"],
        None,
        f"task checks, at most {MAX_CHECKS}: each {{prompt, and one of exact, contains, regex}}; after "
        "training the base and the adapter answer every prompt (greedy decoding) and "
        "status.tuning.evaluation.checks counts who passed (contract/checks.py)",
    ),
    "check_max_new_tokens": _opt(["int"], 32, "tokens each answer to a check may have"),
}

# KAITO's lora-params-template / qlora-params-template: one unpacked example per optimizer step. No
# packing: at this batch of 1 it makes a step one row of up to max_length tokens (about 6 dolly-like
# conversations), 6x fewer updates per epoch, and at the same learning rate reaching the same held-out loss
# then took about 5x as long on a CPU (benchmarks/RESULTS.md, trainer_throughput).
_QLORA_TEMPLATE: dict[str, Any] = {
    ROOT: {
        "ModelConfig": {"torch_dtype": "bfloat16", "local_files_only": True, "device_map": "auto"},
        "QuantizationConfig": {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_use_double_quant": True,
        },
        "LoraConfig": {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0},
        "TrainingArguments": {
            "output_dir": "/mnt/results",
            "ddp_find_unused_parameters": False,
            "save_strategy": "no",
            "per_device_train_batch_size": 1,
        },
        "DataCollator": {"mlm": True},
        "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 1},
    }
}


def default_training_config(method: str) -> dict[str, Any]:
    """KAITO's default template for ``method`` (lora or qlora, any case), as the parsed YAML document."""
    known = Method.parse(method)
    if known is None:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    doc = copy.deepcopy(_QLORA_TEMPLATE)
    if known is Method.LORA:
        doc[ROOT]["QuantizationConfig"] = {"load_in_4bit": False}
    return doc


# TrainingArguments whose meaning in this trainer differs from the library's default (the reference's
# notes): the config fixes the optimizer step, memory may only split it (trainer.strategy).
TRAINER_NOTES = {
    "per_device_train_batch_size": (
        "sequences per process per optimizer step (times gradient_accumulation_steps): with packing, "
        "packed rows of up to max_length tokens (TRL's meaning), without it examples (KAITO's); unset: "
        "1, KAITO's template. Where a GPU cannot hold them at once, the trainer splits the step into "
        "smaller micro-batches with more accumulation, never changing the step"
    ),
    "gradient_accumulation_steps": "unset: 1; see per_device_train_batch_size",
    "packing": (
        "off in the built-in templates (KAITO's step: one example); on, a step is packed rows of up to "
        "max_length tokens, so fewer updates per epoch; the status's data summary shows the strategy"
    ),
    "gradient_checkpointing": "unset: on only where the memory estimator says the micro-batch needs it",
}


@functools.cache
def _training_arguments() -> dict[str, dict[str, Any]]:
    """TrainingArguments' options with this trainer's notes, built once (validation asks per section)."""
    library = training_options.load()["sections"]["TrainingArguments"]
    return {
        key: {**spec, "help": TRAINER_NOTES[key]} if key in TRAINER_NOTES else spec
        for key, spec in library.items()
    }


def option_sets() -> dict[str, dict[str, dict[str, Any]]]:
    """Every section's options: {section: {option: {types, default, choices?, help?}}}."""
    library = training_options.load()["sections"]
    return {
        "ModelConfig": MODEL_CONFIG_OPTIONS,
        "QuantizationConfig": library["QuantizationConfig"],
        "LoraConfig": library["LoraConfig"],
        "TrainingArguments": _training_arguments(),
        "DatasetConfig": DATASET_CONFIG_OPTIONS,
        "DataCollator": DATA_COLLATOR_OPTIONS,
        "EvaluationConfig": EVALUATION_CONFIG_OPTIONS,
    }


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


# (section, option) -> (holds, what is allowed). Checked only on values of the right type.
RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("LoraConfig", "r"): (_positive, "a positive integer such as 8 or 16"),
    ("LoraConfig", "lora_alpha"): (_positive, "a positive number (often r or 2·r)"),
    ("LoraConfig", "lora_dropout"): (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("QuantizationConfig", "llm_int8_threshold"): (_positive, "a positive number"),
    ("TrainingArguments", "learning_rate"): (_positive, "a positive number such as 2.0e-4"),
    ("TrainingArguments", "num_train_epochs"): (_positive, "a positive number"),
    ("TrainingArguments", "max_steps"): (lambda v: v == -1 or v > 0, "-1 (use epochs) or a positive integer"),
    ("TrainingArguments", "per_device_train_batch_size"): (_positive, "a positive integer"),
    ("TrainingArguments", "per_device_eval_batch_size"): (_positive, "a positive integer"),
    ("TrainingArguments", "gradient_accumulation_steps"): (_positive, "a positive integer"),
    ("TrainingArguments", "weight_decay"): (_non_negative, "a number >= 0"),
    ("TrainingArguments", "warmup_steps"): (
        _non_negative,
        "a number >= 0 (below 1: a fraction of the steps)",
    ),
    ("TrainingArguments", "max_grad_norm"): (_non_negative, "a number >= 0"),
    ("TrainingArguments", "adam_beta1"): (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("TrainingArguments", "adam_beta2"): (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("TrainingArguments", "adam_epsilon"): (_positive, "a small positive number such as 1.0e-8"),
    ("TrainingArguments", "logging_steps"): (_positive, "a positive number"),
    ("TrainingArguments", "save_steps"): (_positive, "a positive number"),
    ("TrainingArguments", "save_total_limit"): (_positive, "a positive integer or null"),
    ("TrainingArguments", "max_length"): (_positive, "a positive integer (tokens) or null"),
    ("TrainingArguments", "seed"): (_non_negative, "an integer >= 0"),
    ("TrainingArguments", "dataloader_num_workers"): (_non_negative, "an integer >= 0"),
    ("DatasetConfig", "train_test_split"): (
        lambda v: 0 < v <= 1,
        "a fraction in (0, 1]: 1 trains on every row",
    ),
    ("DatasetConfig", "shuffle_seed"): (_non_negative, "an integer >= 0"),
    ("EvaluationConfig", "check_max_new_tokens"): (
        lambda v: 1 <= v <= MAX_NEW_TOKENS,
        f"an integer from 1 to {MAX_NEW_TOKENS}: a check wants a short answer",
    ),
    ("EvaluationConfig", "min_improvement"): (
        lambda v: 0 <= v < 1,
        "a fraction in [0, 1): 0.05 asks for a held-out loss 5% below the base's, 0 for one no higher",
    ),
    ("DatasetConfig", "max_length"): (_positive, "a positive integer (tokens) or null"),
}
# String options whose values name a torch dtype.
DTYPE_OPTIONS = {
    ("QuantizationConfig", "bnb_4bit_compute_dtype"): COMPUTE_DTYPES,
    ("QuantizationConfig", "bnb_4bit_quant_storage"): STORAGE_DTYPES,
}
# Options that must not be set in a ConfigMap: the platform owns them, they carry secrets, or nothing in
# the training pod would act on them. Each is refused with the reason, unless its value is unset, false
# or empty, or one of FORBIDDEN_ALLOWS where listed (the library's default, or what the trainer does).
_TRAINING = "TrainingArguments"
_NO_HUB = "nothing is pushed to a model hub: the adapter goes to tuning.output as an OCI artifact"
_NO_TRACKER = (
    "the trainer reports to the Workspace status and, where the operator's mlflow.trackingUri is set, to "
    "MLflow in a run named after the Workspace: the cluster's admin turns tracking on, not a training config"
)
_NO_METRICS = (
    "only a compute_metrics function reads it, and a Workspace has none: evaluation reports the loss"
)
FORBIDDEN = {
    (_TRAINING, "hub_token"): "secrets do not belong in a ConfigMap; the pod never talks to a hub",
    (_TRAINING, "push_to_hub"): "the adapter is pushed to tuning.output as an OCI artifact instead",
    **{(_TRAINING, key): _NO_HUB for key in ("hub_model_id", "hub_private_repo", "hub_revision")},
    **{(_TRAINING, key): _NO_HUB for key in ("hub_strategy", "hub_always_push")},
    **{(_TRAINING, key): _NO_TRACKER for key in ("report_to", "run_name", "project")},
    **{(_TRAINING, key): _NO_TRACKER for key in ("trackio_space_id", "trackio_bucket_id")},
    (_TRAINING, "trackio_static_space_id"): _NO_TRACKER,
    **{(_TRAINING, key): _NO_METRICS for key in ("batch_eval_metrics", "include_for_metrics")},
    **{(_TRAINING, key): _NO_METRICS for key in ("eval_do_concat_batches", "eval_use_gather_object")},
    (_TRAINING, "trust_remote_code"): "code shipped with the weights would run in the training pod",
    (
        _TRAINING,
        "model_init_kwargs",
    ): "the trainer loads the model: set from_pretrained options in ModelConfig",
    (_TRAINING, "chat_template_path"): "the pod holds no files of yours: set ModelConfig.chat_template",
    (_TRAINING, "dataset_kwargs"): (
        "the pre-flight prepares the dataset (skip_prepare_dataset would also skip TRL's packing)"
    ),
    (_TRAINING, "resume_from_checkpoint"): (
        "the trainer resumes by itself from its newest complete checkpoint when the pod restarts"
    ),
    **{
        (_TRAINING, key): "the Trainer does not read it (a flag for scripts): evaluation runs when "
        "DatasetConfig holds rows out (train_test_split below 1, or eval_files)"
        for key in ("do_train", "do_eval", "do_predict")
    },
    (_TRAINING, "local_rank"): "torchrun sets each process's rank",
    (_TRAINING, "deepspeed"): "DeepSpeed is not in the training image: the GPUs of a node train with DDP",
    **{
        (_TRAINING, key): "each GPU holds the whole (4-bit) model and trains with DDP; FSDP and model "
        "parallelism are not supported"
        for key in ("fsdp", "fsdp_config", "parallelism_config")
    },
    (_TRAINING, "auto_find_batch_size"): (
        "it halves the batch after an out-of-memory error, which changes the optimizer step; the trainer "
        "instead splits the configured step into micro-batches that fit"
    ),
    (_TRAINING, "use_cpu"): "the trainer uses the GPUs it finds, and the CPU only where there is none",
    (_TRAINING, "label_names"): "the dataset's labels are in 'labels'; another name would train on nothing",
    (_TRAINING, "length_column_name"): "the dataset has no length column; group_by_length measures input_ids",
    (_TRAINING, "remove_unused_columns"): "the dataset holds only the model's inputs",
    (_TRAINING, "include_num_input_tokens_seen"): "the progress events count non-padding input tokens",
    (_TRAINING, "use_cache"): "training never uses the KV cache",
    (
        _TRAINING,
        "optim_target_modules",
    ): "only GaLore and APOLLO optimizers read it, and the image has neither",
    (_TRAINING, "use_liger_kernel"): "liger-kernel is not in the training image",
    (_TRAINING, "liger_kernel_config"): "liger-kernel is not in the training image",
    ("ModelConfig", "local_files_only"): "the pod never reaches a model hub: fetch-model brings the weights",
    ("ModelConfig", "low_cpu_mem_usage"): "transformers 5 always loads without a full CPU copy",
    ("QuantizationConfig", "llm_int8_enable_fp32_cpu_offload"): (
        "only for a model split between GPU and CPU; each process keeps its whole model on its GPU"
    ),
    ("QuantizationConfig", "llm_int8_has_fp16_weight"): (
        "keeps fp16 weights beside the int8 ones (full fine-tuning memory): use method lora instead"
    ),
    **{
        ("LoraConfig", key): "set by PEFT when it saves the adapter"
        for key in ("peft_type", "peft_version", "base_model_name_or_path", "revision", "auto_mapping")
    },
    ("LoraConfig", "task_type"): "the trainer fine-tunes causal language models (CAUSAL_LM)",
    ("LoraConfig", "inference_mode"): "it freezes the adapter: nothing would train",
    (
        "LoraConfig",
        "fan_in_fan_out",
    ): "only for Conv1D layers (GPT-2); PEFT turns it off for every preset's Linear",
    **{
        ("LoraConfig", key): "Megatron-LM is not in the training image"
        for key in ("megatron_config", "megatron_core")
    },
    **{
        ("LoraConfig", key): "QALoRA needs GPTQ weights; QLoRA here quantises with bitsandbytes"
        for key in ("use_qalora", "qalora_group_size")
    },
    **{
        ("LoraConfig", key): "its initialisation needs a pass over data or full-precision weights that the "
        "trainer does not run"
        for key in ("eva_config", "corda_config", "lora_ga_config", "loftq_config")
    },
    **{
        ("LoraConfig", key): "a LoRA variant this trainer has not been tested with"
        for key in (
            "arrow_config",
            "kasa_config",
            "monteclora_config",
            "velora_config",
            "use_bdlora",
            "runtime_config",
            "alora_invocation_tokens",
        )
    },
    ("ModelConfig", "trust_remote_code"): (
        "code shipped with the weights would run in the training pod; every preset's architecture is "
        "built into transformers"
    ),
    ("ModelConfig", "revision"): (
        "the preset pins the weights' revision (status.tuning.model shows the digest fetched); other "
        "weights come from the preset's presetOptions.image"
    ),
    ("ModelConfig", "device_map"): (
        "each process holds the whole model on its own GPU (DDP across the node's GPUs)"
    ),
    ("ModelConfig", "use_cache"): "training never uses the KV cache",
}
FORBIDDEN_ALLOWS: dict[tuple[str, str], tuple[Any, ...]] = {
    (_TRAINING, "hub_strategy"): (None, "every_save"),
    (_TRAINING, "report_to"): (None, "none", ["none"], []),
    (_TRAINING, "project"): (None, "huggingface"),
    (_TRAINING, "eval_do_concat_batches"): (None, True),
    (_TRAINING, "remove_unused_columns"): (None, True),
    (_TRAINING, "include_num_input_tokens_seen"): (None, False, "no", "non_padding"),
    (_TRAINING, "local_rank"): (None, -1),
    ("ModelConfig", "device_map"): (None, "auto"),
    ("ModelConfig", "local_files_only"): (None, True),
    ("ModelConfig", "low_cpu_mem_usage"): (None, True),
    ("LoraConfig", "task_type"): (None, "CAUSAL_LM"),
    ("LoraConfig", "peft_type"): (None, "LORA"),
    ("LoraConfig", "megatron_core"): (None, "megatron.core"),
    ("LoraConfig", "qalora_group_size"): (None, 16),
    ("LoraConfig", "loftq_config"): (None, {}),
}
# LoraConfig.init_lora_weights values whose initialisation the trainer does not run, and the one PEFT
# computes only from full-precision weights (it raises on a 4-bit base; OLoRA builds there).
UNRUN_INITS = ("eva", "corda", "loftq", "lora_ga")
FULL_PRECISION_INITS = ("pissa",)
# Optimizers whose library is not in the training image (transformers imports it when training starts).
MISSING_OPTIMIZERS = (
    "adalomo",
    "lomo",
    "adamw_anyprecision",
    "adamw_torch_npu_fused",
    "adamw_torch_xla",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "grokadamw",
    "schedule_free_adamw",
    "schedule_free_radam",
    "schedule_free_sgd",
    "stable_adamw",
    "apollo_adamw",
    "apollo_adamw_layerwise",
    "galore_adafactor",
    "galore_adafactor_layerwise",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adamw_8bit_layerwise",
    "galore_adamw_layerwise",
)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list")):
        if isinstance(value, kind):
            return name
    return "dict" if isinstance(value, Mapping) else "object"


def _type_ok(value: Any, types: list[str]) -> bool:
    name = _type_name(value)
    return name in types or "object" in types or (name == "int" and "float" in types)


_TYPE_WORDS = {
    "bool": "true/false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "list": "a list",
    "dict": "a mapping",
    "null": "null",
}


def _type_hint(value: Any, types: list[str]) -> str:
    if isinstance(value, str) and ("float" in types or "int" in types):
        try:
            float(value)
        except ValueError:
            return ""
        if "e" in value.lower() and "." not in value:
            return "remove the quotes; YAML 1.1 reads 2e-4 as a string: write 2.0e-4 or 0.0002"
        return "remove the quotes"
    if isinstance(value, str) and "bool" in types and value.lower() in ("true", "false", "yes", "no"):
        return f"write {'true' if value.lower() in ('true', 'yes') else 'false'} without quotes"
    return ""


def _same(value: Any, allowed: Any) -> bool:
    """Equal and of the same kind (0 is not false, 1 is not true)."""
    return type(value) is type(allowed) and value == allowed


def _check_option(section: str, key: str, value: Any, spec: Mapping[str, Any], path: str) -> list[Problem]:
    types = spec["types"]
    if not _type_ok(value, types):
        allowed = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return [Problem(path, f"must be {allowed}", value, _type_hint(value, types))]
    problems: list[Problem] = []
    choices = DTYPE_OPTIONS.get((section, key)) or spec.get("choices")
    pissa_niter = key == "init_lora_weights" and isinstance(value, str) and value.startswith("pissa_niter_")
    if isinstance(value, str) and choices and value not in choices and not pissa_niter:
        guess = did_you_mean(value, choices)
        hint = f"{guess} " if guess else ""
        problems.append(
            Problem(path, "is not an allowed value", value, f"{hint}allowed: {', '.join(choices)}")
        )
    rule = RANGES.get((section, key))
    if rule and isinstance(value, int | float) and not isinstance(value, bool) and not rule[0](value):
        problems.append(Problem(path, f"is out of range: must be {rule[1]}", value))
    accepted = FORBIDDEN_ALLOWS.get((section, key), (None, False, ""))
    if (section, key) in FORBIDDEN and not any(_same(value, a) for a in accepted):
        problems.append(Problem(path, "must not be set here", value, FORBIDDEN[(section, key)]))
    if (section, key) == ("LoraConfig", "init_lora_weights") and value in UNRUN_INITS:
        problems.append(
            Problem(path, "needs an initialisation the trainer does not run", value, "use true or gaussian")
        )
    if (section, key) == (_TRAINING, "optim") and value in MISSING_OPTIMIZERS:
        problems.append(
            Problem(
                path,
                "needs a library the training image lacks",
                value,
                "use adamw_torch_fused or paged_adamw_8bit",
            )
        )
    return problems


def _check_section(name: str, body: Any, options: dict[str, dict[str, Any]], path: str) -> list[Problem]:
    if body is None:
        return []
    if not isinstance(body, Mapping):
        return [Problem(path, "must be a mapping of option: value", body)]
    problems: list[Problem] = []
    all_sets = option_sets()
    for key, value in body.items():
        key_path = f"{path}.{key}"
        spec = options.get(str(key))
        if spec is None:
            elsewhere = [s for s, opts in all_sets.items() if s != name and key in opts]
            if elsewhere:
                hint = f"{key} is an option of {elsewhere[0]}: move it there"
            else:
                hint = did_you_mean(str(key), options) or f"see the {name} options"
            problems.append(Problem(key_path, f"unknown option of {name}", None, hint))
            continue
        problems += _check_option(name, str(key), value, spec, key_path)
    return problems


def _flag(value: Any) -> bool:
    return value is True


def _kaito_rules(sections: Mapping[str, Any], method: str | None, path: str) -> list[Problem]:
    """KAITO's own rules: quantisation flags vs method, output_dir under /mnt."""
    problems: list[Problem] = []
    quant = sections.get("QuantizationConfig") or {}
    qpath = f"{path}.QuantizationConfig"
    if isinstance(quant, Mapping):
        four, eight = _flag(quant.get("load_in_4bit")), _flag(quant.get("load_in_8bit"))
        if four and eight:
            problems.append(
                Problem(
                    f"{qpath}.load_in_4bit",
                    "load_in_4bit and load_in_8bit cannot both be true",
                    True,
                    "pick one",
                )
            )
        if method == "lora" and (four or eight):
            key = "load_in_4bit" if four else "load_in_8bit"
            problems.append(
                Problem(
                    f"{qpath}.{key}", "method lora loads full-precision weights", True, "use method qlora"
                )
            )
        if method == "qlora" and not (four or eight):
            problems.append(
                Problem(
                    f"{qpath}.load_in_4bit",
                    "method qlora needs quantised weights",
                    quant.get("load_in_4bit"),
                    "set load_in_4bit: true (or load_in_8bit: true), or use method lora",
                )
            )
    args = sections.get("TrainingArguments") or {}
    output_dir = args.get("output_dir") if isinstance(args, Mapping) else None
    if isinstance(output_dir, str):
        normal = posixpath.normpath(output_dir)
        if not normal.startswith("/mnt/"):
            problems.append(
                Problem(
                    f"{path}.TrainingArguments.output_dir",
                    "must be a folder under /mnt (not /mnt itself): the push step reads the adapter there",
                    output_dir,
                    "use /mnt/results",
                )
            )
    return problems


def _initialisation_rules(sections: Mapping[str, Any], path: str) -> list[Problem]:
    """LoRA initialisations PEFT computes from full-precision weights cannot start from a quantised base."""
    lora, quant = sections.get("LoraConfig"), sections.get("QuantizationConfig")
    if not (isinstance(lora, Mapping) and isinstance(quant, Mapping)):
        return []
    init = lora.get("init_lora_weights")
    if not (isinstance(init, str) and init.startswith(FULL_PRECISION_INITS)):
        return []
    if not (_flag(quant.get("load_in_4bit")) or _flag(quant.get("load_in_8bit"))):
        return []
    return [
        Problem(
            f"{path}.LoraConfig.init_lora_weights",
            "computes the adapter from full-precision weights, and this base is quantised",
            init,
            "use method lora, or init_lora_weights: true",
        )
    ]


def _split_below_one(dataset: Mapping[str, Any]) -> bool:
    split = dataset.get("train_test_split", 1)
    return isinstance(split, int | float) and not isinstance(split, bool) and split < 1


def _names_eval_files(dataset: Mapping[str, Any]) -> bool:
    files = dataset.get("eval_files")
    return isinstance(files, list) and bool(files)


def _dataset_rules(sections: Mapping[str, Any], path: str) -> list[Problem]:
    """DatasetConfig.eval_files' entries, and the one way of holding rows out: eval_files or the split."""
    dataset = sections.get("DatasetConfig")
    if not isinstance(dataset, Mapping):
        return []
    where = f"{path}.DatasetConfig.eval_files"
    problems = eval_file_problems(dataset.get("eval_files"), where)
    if _names_eval_files(dataset) and _split_below_one(dataset):
        problems.append(
            Problem(
                where,
                "cannot be used with DatasetConfig.train_test_split below 1 "
                f"({dataset['train_test_split']}): both choose the held-out rows; choose one",
                dataset["eval_files"],
                "keep eval_files for a fixed evaluation set (and unset train_test_split), or remove "
                "eval_files for a random share",
            )
        )
    return problems


def _evaluation_rules(sections: Mapping[str, Any], path: str) -> list[Problem]:
    """Evaluation needs held-out rows: DatasetConfig.train_test_split below 1 or DatasetConfig.eval_files
    sets them aside; the gate (EvaluationConfig.min_improvement) compares the base's and the adapter's
    loss on them."""
    dataset = sections.get("DatasetConfig") or {}
    if not isinstance(dataset, Mapping):
        return []
    split = dataset.get("train_test_split", 1)
    if not isinstance(split, int | float) or _split_below_one(dataset) or _names_eval_files(dataset):
        return []
    args, evaluation = sections.get("TrainingArguments") or {}, sections.get("EvaluationConfig") or {}
    asks: dict[tuple[str, str], bool] = {}
    if isinstance(args, Mapping):
        asks["TrainingArguments", "eval_strategy"] = args.get("eval_strategy") not in (None, "no")
        asks["TrainingArguments", "eval_on_start"] = args.get("eval_on_start") is True
        asks["TrainingArguments", "load_best_model_at_end"] = args.get("load_best_model_at_end") is True
    if isinstance(evaluation, Mapping):
        asks["EvaluationConfig", "min_improvement"] = evaluation.get("min_improvement") is not None
    return [
        Problem(
            f"{path}.{section}.{key}",
            "evaluates, but DatasetConfig holds no rows out (train_test_split is 1, eval_files names none)",
            sections[section][key],
            "set DatasetConfig.train_test_split below 1 (e.g. 0.9) for a random share, or name a fixed "
            "evaluation set in DatasetConfig.eval_files; or unset it",
        )
        for (section, key), asked in asks.items()
        if asked
    ]


def _check_rules(sections: Mapping[str, Any], path: str) -> list[Problem]:
    """Each of EvaluationConfig.checks, at its index and field (``contract.checks``)."""
    evaluation = sections.get("EvaluationConfig")
    if not isinstance(evaluation, Mapping):
        return []
    return check_problems(evaluation.get("checks"), f"{path}.EvaluationConfig.checks")


# The same setting reachable from two sections: both are accepted, but they must agree.
SHARED_OPTIONS = (
    ("ModelConfig", "torch_dtype", "ModelConfig", "dtype"),
    ("DataCollator", "completion_only_loss", "TrainingArguments", "completion_only_loss"),
    ("DataCollator", "assistant_only_loss", "TrainingArguments", "assistant_only_loss"),
    ("DatasetConfig", "max_length", "TrainingArguments", "max_length"),
    ("DatasetConfig", "text_column", "TrainingArguments", "dataset_text_field"),
    ("TrainingArguments", "gradient_checkpointing", "TrainingArguments", "activation_checkpointing"),
    (
        "TrainingArguments",
        "gradient_checkpointing_kwargs",
        "TrainingArguments",
        "activation_checkpointing_kwargs",
    ),
)


def _conflicts(sections: Mapping[str, Any], path: str) -> list[Problem]:
    problems = []
    for first, key, second, other in SHARED_OPTIONS:
        a, b = sections.get(first), sections.get(second)
        if (
            not (isinstance(a, Mapping) and isinstance(b, Mapping))
            or a.get(key) is None
            or b.get(other) is None
        ):
            continue  # null means unset
        if a[key] != b[other]:
            problems.append(
                Problem(
                    f"{path}.{first}.{key}",
                    f"contradicts {second}.{other} ({b[other]!r})",
                    a[key],
                    "set it in one place only",
                )
            )
    return problems


def validate_training_config(
    doc: Mapping[str, Any],
    method: str | None = None,
    *,
    path: str = ROOT,
) -> list[Problem]:
    """Every problem in a parsed ``training_config.yaml``; ``path`` is where its root sits in the file.

    ``method`` enables KAITO's method rules. The trainer runs exactly this; the operator adds the preset
    and GPU rules of ``tuning_controller.training_targets``.
    """
    base = path.rsplit(".", 1)[0] if path.endswith(f".{ROOT}") else ""
    if not isinstance(doc, Mapping):
        return [Problem(base or "<document>", f"must be a mapping with the key {ROOT}", doc)]
    problems: list[Problem] = []
    for key in doc:
        if key != ROOT:
            hint = did_you_mean(str(key), [ROOT]) or f"the only top-level key is {ROOT}"
            problems.append(
                Problem(f"{base}.{key}" if base else str(key), "unknown top-level key", None, hint)
            )
    sections = doc.get(ROOT)
    if sections is None:
        return [*problems, Problem(path, "is required", None, f"start the file with `{ROOT}:`")]
    if not isinstance(sections, Mapping):
        return [*problems, Problem(path, "must be a mapping of section: options", sections)]
    all_sets = option_sets()
    for name, body in sections.items():
        if name not in all_sets:
            guess = did_you_mean(str(name), SECTIONS)
            hint = f"{guess} " if guess else ""
            problems.append(
                Problem(f"{path}.{name}", "unknown section", None, f"{hint}sections: {', '.join(SECTIONS)}")
            )
            continue
        problems += _check_section(name, body, all_sets[name], f"{path}.{name}")
    if method is not None and method not in METHODS:
        problems.append(Problem("method", "must be lora or qlora", method))
        method = None
    problems += _kaito_rules(sections, method, path)
    problems += _initialisation_rules(sections, path)
    problems += _dataset_rules(sections, path)
    problems += _evaluation_rules(sections, path)
    problems += _check_rules(sections, path)
    problems += _conflicts(sections, path)
    return problems


def effective_options(doc: Mapping[str, Any] | None, method: str) -> dict[str, dict[str, Any]]:
    """The section options the trainer will see: the user's values over library defaults.

    A document without a section gets the method template's section (KAITO's behaviour for a missing
    ConfigMap); malformed sections count as empty (their problems are reported by validation).
    """
    template = default_training_config(method)[ROOT]
    sections = (doc or {}).get(ROOT) if isinstance(doc, Mapping) else None
    sections = sections if isinstance(sections, Mapping) else template
    out: dict[str, dict[str, Any]] = {}
    for name, options in option_sets().items():
        merged = {key: spec["default"] for key, spec in options.items()}
        body = sections.get(name)
        if isinstance(body, Mapping):
            merged.update(body)
        out[name] = merged
    return out
