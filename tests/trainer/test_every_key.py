"""Every key validation accepts is honoured, or validation refuses it with the reason.

One table row per key of ``docs/training-config.md`` (the tests fail when the libraries add a key nobody
has placed). The other sections' rows are further down; TrainingArguments':
- REFUSED: validation names the key, says "must not be set here" and why (nothing in the pod acts on it);
- PREFLIGHT: the pre-flight's tokens, masks or lengths change (TRL's own handling of them, see
  ``test_trl_parity``);
- LAYOUT: the step's layout the trainer derives from it changes (``trainer.strategy``);
- every other key reaches SFTConfig as given, with a value other than SFTConfig's default, so TRL and
  transformers act on it (on a CPU for all but the GPU precision flags, which a CPU cannot honour).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest

from contract.training_config import (
    FORBIDDEN,
    FORBIDDEN_ALLOWS,
    default_training_config,
    option_sets,
    validate_training_config,
)
from trainer.sft import GPU_PRECISION, sft_values
from trainer.strategy import choose_strategy

KEYS = option_sets()["TrainingArguments"]
REFUSED = {key for section, key in FORBIDDEN if section == "TrainingArguments"}
PREFLIGHT = {
    "completion_only_loss",
    "assistant_only_loss",
    "dataset_text_field",
    "truncation_mode",
    "max_length",
    "eos_token",
    "pad_token",
}
LAYOUT = {
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "activation_checkpointing",
    "packing",
    "packing_strategy",
    "padding_free",
    "output_dir",
}
# A value other than the library's default for each key that reaches SFTConfig; a dict row adds the
# keys the value needs (transformers checks them together).
SAMPLES: dict[str, Any] = {
    "accelerator_config": {"split_batches": True},
    "activation_checkpointing_kwargs": {"use_reentrant": True},
    "activation_offloading": True,
    "adam_beta1": 0.8,
    "adam_beta2": 0.99,
    "adam_epsilon": 1e-6,
    "average_tokens_across_devices": False,
    "bf16": True,
    "bf16_full_eval": True,
    "data_seed": 7,
    "dataloader_drop_last": True,
    "dataloader_in_order": False,
    "dataloader_multiprocessing_context": ("spawn", {"dataloader_num_workers": 1}),
    "dataloader_num_workers": 2,
    "dataloader_persistent_workers": (True, {"dataloader_num_workers": 1}),
    "dataloader_pin_memory": False,
    "dataloader_prefetch_factor": (4, {"dataloader_num_workers": 1}),
    "dataset_num_proc": 2,
    "ddp_backend": "gloo",
    "ddp_broadcast_buffers": True,
    "ddp_bucket_cap_mb": 50,
    "ddp_find_unused_parameters": True,
    "ddp_static_graph": True,
    "ddp_timeout": 600,
    "debug": "underflow_overflow",
    "disable_tqdm": False,
    "enable_jit_checkpoint": True,
    "eval_accumulation_steps": 2,
    "eval_delay": 1.0,
    "eval_on_start": True,
    "eval_packing": False,
    "eval_steps": (5, {"eval_strategy": "steps"}),
    "eval_strategy": "steps",
    "fp16": True,
    "fp16_full_eval": True,
    "full_determinism": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": True},
    "greater_is_better": (False, {"metric_for_best_model": "eval_loss"}),
    "ignore_data_skip": True,
    "label_smoothing_factor": 0.1,
    "learning_rate": 1e-4,
    "load_best_model_at_end": (True, {"eval_strategy": "epoch", "save_strategy": "epoch"}),
    "log_level": "info",
    "log_level_replica": "error",
    "log_on_each_node": False,
    "logging_first_step": True,
    "logging_nan_inf_filter": False,
    "logging_steps": 3,
    "logging_strategy": "epoch",
    "loss_type": "dft",
    "lr_scheduler_kwargs": ({"num_cycles": 2}, {"lr_scheduler_type": "cosine_with_restarts"}),
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 0.5,
    "max_steps": 10,
    "metric_for_best_model": "eval_loss",
    "neftune_noise_alpha": 5.0,
    "num_train_epochs": 2.0,
    "optim": "adamw_torch",
    "optim_args": "amsgrad=True",
    "pad_to_multiple_of": 8,
    "per_device_eval_batch_size": 4,
    "prediction_loss_only": False,
    "restore_callback_states_from_checkpoint": True,
    "router_aux_loss_coef": 0.01,
    "save_on_each_node": True,
    "save_only_model": True,
    "save_steps": 50,
    "save_strategy": "epoch",
    "save_total_limit": 3,
    "seed": 7,
    "shuffle_dataset": True,
    "skip_memory_metrics": False,
    "tf32": True,
    "torch_compile": True,
    "torch_compile_backend": "inductor",
    "torch_compile_mode": "reduce-overhead",
    "torch_empty_cache_steps": 10,
    "train_sampling_strategy": "sequential",
    "warmup_steps": 5,
    "weight_decay": 0.01,
}
PASSED = sorted(set(KEYS) - REFUSED - PREFLIGHT - LAYOUT)


def test_every_key_has_a_row():
    assert set(PASSED) == set(SAMPLES), "place the new keys in a table above"
    assert not (REFUSED & (PREFLIGHT | LAYOUT))


def _sample(key: str) -> tuple[Any, dict[str, Any]]:
    found = SAMPLES[key]
    return found if isinstance(found, tuple) else (found, {})


def _plain(value: Any) -> Any:
    """SFTConfig's parsed forms (enums, lists of options) as the YAML wrote them."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list) and len(value) == 1:
        return _plain(value[0])
    return value


def _valid(args: dict[str, Any]) -> list[Any]:
    doc = default_training_config("qlora")
    doc["training_config"]["TrainingArguments"].update(args)
    doc["training_config"]["DatasetConfig"]["train_test_split"] = 0.9  # some keys evaluate
    return validate_training_config(doc, "qlora")


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_keys_name_the_reason(key):
    allowed = FORBIDDEN_ALLOWS.get(("TrainingArguments", key), (None, False, ""))
    kinds = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    value = next(
        v
        for v in (True, False, 3, 0.5, "x", ["x"], {"x": 1})
        if kinds[type(v)] in KEYS[key]["types"] + ["str"] * ("object" in KEYS[key]["types"])
        and not any(type(v) is type(a) and v == a for a in allowed)
    )
    problems = [p for p in _valid({key: value}) if p.path.endswith(f"TrainingArguments.{key}")]
    [problem] = [p for p in problems if "must not be set here" in p.message]
    assert problem.hint == FORBIDDEN[("TrainingArguments", key)]


@pytest.mark.parametrize("key", PASSED)
def test_passed_keys_reach_sftconfig_with_a_non_default_value(key):
    from trl import SFTConfig

    value, needs = _sample(key)
    args = {key: value, **needs}
    assert _valid(args) == [], "the sample must be a value validation accepts"
    gpu = choose_strategy(args, 256, cuda=True, varlen=False)
    cpu = choose_strategy(args, 256, cuda=False)
    on_gpu = sft_values(args, gpu, "out", has_eval=True, world_size=1)
    name = key.replace("gradient_checkpointing", "activation_checkpointing")
    assert on_gpu[name] == value
    unset = sft_values({}, gpu, "out", has_eval=True, world_size=1)  # the trainer's own defaults
    assert _plain(value) != unset.get(name, SFTConfig.__dataclass_fields__[name].default)
    if key in GPU_PRECISION:  # a CPU computes in float32
        assert sft_values(args, cpu, "out", has_eval=True, world_size=1)[key] is False
        return
    if key == "ddp_backend":  # SFTConfig would start a process group
        return
    config = SFTConfig(**sft_values(args, cpu, "out", has_eval=True, world_size=1))
    got = getattr(config, name)
    if isinstance(value, dict) and not isinstance(got, dict):  # parsed into an object
        assert all(getattr(got, k) == v for k, v in value.items())
    else:
        assert _plain(got) == value


def test_layout_keys_shape_the_step():
    packed = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3, "packing": True}
    strategy = choose_strategy(packed, 256, cuda=False)
    values = sft_values(packed, strategy, "/mnt/results/checkpoints", has_eval=False, world_size=1)
    assert values["per_device_train_batch_size"] * values["gradient_accumulation_steps"] == 12
    assert values["max_length"] == 256 and values["packing"] is True
    unpacked = {**packed, "packing": False, "padding_free": True}
    strategy = choose_strategy(unpacked, 256, cuda=False)
    values = sft_values(unpacked, strategy, "out", has_eval=False, world_size=1)
    assert (values["per_device_train_batch_size"], values["gradient_accumulation_steps"]) == (
        1,
        12,
    )  # flattened
    assert values["max_length"] is None and values["padding_free"] is True  # the pre-flight truncated
    for key in ("gradient_checkpointing", "activation_checkpointing"):
        strategy = choose_strategy({key: True}, 256, cuda=False)
        assert sft_values({key: True}, strategy, "out", has_eval=False, world_size=1)[
            "activation_checkpointing"
        ]
    wrapped = choose_strategy(
        {"packing": True, "packing_strategy": "wrapped", "per_device_train_batch_size": 2}, 256, cuda=False
    )
    assert wrapped.micro_batch == 2  # wrapped rows are padded-free full rows, not flattened


ROWS = {
    "prompt": [{"prompt": "Q: what is two plus two? A:", "completion": " four, said the teacher"}] * 3,
    "messages": [
        {
            "messages": [
                {"role": "user", "content": "say hello"},
                {"role": "assistant", "content": "hello there"},
            ]
        }
    ]
    * 3,
    "text": [{"text": "short words"}, {"text": "a long line of plain words to learn from, " * 4}],
    "body": [{"body": "plain words under another column name"}] * 3,
}
# key -> (value, data, what the pre-flight hands the trainer: with the key, then without it)
PREFLIGHT_CASES: dict[str, tuple[Any, str]] = {
    "completion_only_loss": (False, "prompt"),
    "assistant_only_loss": (False, "messages"),
    "dataset_text_field": ("body", "body"),
    "truncation_mode": ("keep_end", "text"),
    "max_length": (16, "text"),
    "eos_token": ("</s>", "text"),
    "pad_token": ("<unk>", "text"),
}


def _check(tmp_path, name: str, args: dict[str, Any], data: str):
    import json

    import yaml

    from trainer.inputs import check_data, load_setup
    from trainer.options import TrainerOptions

    doc = default_training_config("qlora")
    doc["training_config"]["TrainingArguments"].update(args)
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(doc))
    folder = tmp_path / f"data-{data}"
    folder.mkdir(exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[data]))
    options = TrainerOptions(preset="tiny-llama", config=config, data=folder, output=tmp_path / "out")
    return check_data(options, load_setup(options))


def test_preflight_cases_cover_the_preflight_keys():
    assert set(PREFLIGHT_CASES) == PREFLIGHT


@pytest.mark.parametrize("key", sorted(PREFLIGHT))
def test_preflight_keys_change_what_the_trainer_is_given(tmp_path, tiny_preset, key):
    from trainer.data import DataError

    value, data = PREFLIGHT_CASES[key]
    base = {"max_length": 24} if key == "truncation_mode" else {}
    if key == "dataset_text_field":  # without it, the column is not found at all
        with pytest.raises(DataError, match="no usable columns"):
            _check(tmp_path, "without", base, data)
        assert _check(tmp_path, "with", {key: value}, data).prepared.ok
        return
    given = _check(tmp_path, "with", {**base, key: value}, data)
    unset = _check(tmp_path, "without", base, data)
    first, before = (max(c.prepared.train, key=lambda e: e.full_length) for c in (given, unset))
    if key == "pad_token":
        assert given.tokenizer.pad_token == value != unset.tokenizer.pad_token
    elif key == "eos_token":
        assert first.input_ids[-1] == given.tokenizer.convert_tokens_to_ids(value) != before.input_ids[-1]
    elif key == "max_length":
        assert len(first.input_ids) == value < len(before.input_ids)
    elif key == "truncation_mode":  # the end is kept: the text's last token, not its first
        eos = given.tokenizer.eos_token_id
        assert len(first.input_ids) == len(before.input_ids) == 24
        assert (
            first.input_ids[-1] == eos != before.input_ids[-1] and first.input_ids[0] != before.input_ids[0]
        )
    else:
        trained = [sum(label != -100 for label in e.labels) for e in (first, before)]
        assert trained[0] > trained[1]


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_packing_false_trains_one_example_per_sequence(tmp_path, tiny_preset, packing):
    """KAITO's meaning without packing: a step of per_device_train_batch_size examples; with packing,
    TRL's rows of whole examples up to max_length, so fewer steps for the same epoch."""
    import json

    from tests.trainer.conftest import run_trainer
    from tests.trainer.synthetic import code_word_rows, kaito_config, write_jsonl

    rows = code_word_rows()[:24]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    config = kaito_config(tmp_path / "c.yaml", num_train_epochs=1, max_length=128, packing=packing)
    result = run_trainer("--config", config, "--data", tmp_path / "data", "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    done = [json.loads(line) for line in result.stdout.splitlines() if '"done"' in line][-1]
    if packing:
        assert done["total_steps"] < len(rows) / 4 and "packing: bfd" in result.stderr
    else:
        assert done["total_steps"] == len(rows) and "packing: off" in result.stderr


# The other sections: every key refused with its reason, or passed to its library object (peft's
# LoraConfig, applied to the tiny preset's 4-bit base; transformers' BitsAndBytesConfig; from_pretrained's
# keyword arguments; this project's DatasetOptions and CollatorOptions, which the pre-flight reads).
SECTION_SAMPLES: dict[str, dict[str, Any]] = {
    "LoraConfig": {
        "alpha_pattern": {"q_proj": 32},
        "bias": "lora_only",
        "ensure_weight_tying": True,
        "exclude_modules": ["v_proj"],
        "init_lora_weights": "gaussian",
        "layer_replication": [[0, 2], [1, 2]],
        "layers_pattern": ("layers", {"layers_to_transform": [1]}),
        "layers_to_transform": [1],
        "lora_alpha": 32,
        "lora_bias": True,
        "lora_dropout": 0.1,
        "modules_to_save": ["lm_head"],
        "r": 4,
        "rank_pattern": {"q_proj": 4},
        "target_modules": ["q_proj"],
        "target_parameters": ["mlp.gate_proj.weight"],
        "trainable_token_indices": [1, 2],
        "use_dora": True,
        "use_rslora": True,
    },
    "QuantizationConfig": {
        "bnb_4bit_compute_dtype": "float16",
        "bnb_4bit_quant_storage": "bfloat16",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "llm_int8_skip_modules": ["lm_head"],
        "llm_int8_threshold": 4.0,
        "load_in_4bit": True,
        "load_in_8bit": (True, {"load_in_4bit": False}),
    },
    "ModelConfig": {
        "attn_implementation": "eager",
        "chat_template": "{{ messages[0]['content'] }}",
        "dtype": "float16",
        "torch_dtype": "float16",
    },
    "DatasetConfig": {
        "messages_column": "conversation",
        "prompt_column": "question",
        "completion_column": "answer",
        "text_column": "body",
        "shuffle_dataset": False,
        "shuffle_seed": 7,
        "train_test_split": 0.9,
        "eval_files": ["eval-*.jsonl"],
        "max_length": 64,
        "skip_bad_rows": True,
    },
    "DataCollator": {"completion_only_loss": False, "assistant_only_loss": False},
    "EvaluationConfig": {
        "min_improvement": 0.05,
        "checks": [{"prompt": "Code word for Paris?", "exact": "River"}],
        "check_max_new_tokens": 8,
    },
}
# Accepted and documented as doing nothing: KAITO's templates set it, and causal LMs have no masked-LM mode.
ACCEPTED_FOR_KAITO = {("DataCollator", "mlm")}
OTHER_SECTIONS = [s for s in SECTION_SAMPLES]


def _refused(section: str) -> set[str]:
    return {key for sec, key in FORBIDDEN if sec == section}


@pytest.mark.parametrize("section", OTHER_SECTIONS)
def test_every_key_of_the_other_sections_has_a_row(section):
    keys = set(option_sets()[section])
    placed = (
        _refused(section) | set(SECTION_SAMPLES[section]) | {k for s, k in ACCEPTED_FOR_KAITO if s == section}
    )
    assert keys == placed, f"place {sorted(keys ^ placed)}"


@pytest.mark.parametrize(("section", "key"), [(s, k) for s in OTHER_SECTIONS for k in sorted(_refused(s))])
def test_other_refused_keys_name_the_reason(section, key):
    allowed = FORBIDDEN_ALLOWS.get((section, key), (None, False, ""))
    kinds = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    types = option_sets()[section][key]["types"]
    value = next(
        v
        for v in (True, 3, 0.5, "x", ["x"], {"x": 1}, False)
        if (kinds[type(v)] in types or "object" in types)
        and not any(type(v) is type(a) and v == a for a in allowed)
    )
    doc = default_training_config("qlora")
    doc["training_config"].setdefault(section, {})[key] = value
    problems = [p for p in validate_training_config(doc, "qlora") if p.path.endswith(f"{section}.{key}")]
    assert [p.hint for p in problems if "must not be set here" in p.message] == [FORBIDDEN[(section, key)]]


@pytest.fixture(scope="module")
def four_bit_base(tiny_preset):
    """The tiny preset on bitsandbytes' 4-bit CPU kernels, as the trainer loads it for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    return lambda: AutoModelForCausalLM.from_pretrained(tiny_preset, quantization_config=quant)


@pytest.mark.parametrize("key", sorted(SECTION_SAMPLES["LoraConfig"]))
def test_lora_keys_reach_peft_and_build_an_adapter_on_a_4bit_base(four_bit_base, key):
    from peft import LoraConfig, get_peft_model

    from trainer.config import lora_config

    value, needs = _sample_of("LoraConfig", key)
    doc = default_training_config("qlora")
    doc["training_config"]["LoraConfig"].update({key: value, **needs})
    assert validate_training_config(doc, "qlora") == []
    config = lora_config({key: value, **needs}, ["q_proj", "v_proj"])
    got = getattr(config, key)
    assert (sorted(got) if isinstance(got, set) else got) == value  # PEFT keeps module names as a set
    assert value != LoraConfig.__dataclass_fields__[key].default
    get_peft_model(four_bit_base(), config)  # PEFT accepts it on the quantised base


def _sample_of(section: str, key: str) -> tuple[Any, dict[str, Any]]:
    found = SECTION_SAMPLES[section][key]
    return found if isinstance(found, tuple) else (found, {})


@pytest.mark.parametrize("key", sorted(SECTION_SAMPLES["QuantizationConfig"]))
def test_quantization_keys_reach_bitsandbytesconfig(key):
    from trainer.config import quantization_config

    value, needs = _sample_of("QuantizationConfig", key)
    section = {"load_in_4bit": True, key: value, **needs}
    built = quantization_config(section, on_cpu=False)
    got = getattr(built, key)
    assert (
        str(got).removeprefix("torch.") if key.endswith("dtype") or key.endswith("storage") else got
    ) == value


@pytest.mark.parametrize("key", sorted(SECTION_SAMPLES["ModelConfig"]))
def test_model_keys_reach_from_pretrained_or_the_tokenizer(tmp_path, tiny_preset, key):
    import torch

    from trainer.config import model_kwargs

    value, _ = _sample_of("ModelConfig", key)
    if key == "chat_template":
        from presets.resolve import resolve_preset
        from trainer.config import parse
        from trainer.model import load_tokenizer

        doc = default_training_config("qlora")
        doc["training_config"]["ModelConfig"][key] = value
        assert load_tokenizer(resolve_preset("tiny-llama", None), parse(doc)).chat_template == value
        return
    kwargs = model_kwargs({key: value}, on_cpu=False)
    want = torch.float16 if key in ("dtype", "torch_dtype") else value
    assert kwargs["dtype" if key == "torch_dtype" else key] == want


@pytest.mark.parametrize(
    ("section", "key"), [(s, k) for s in ("DatasetConfig", "DataCollator") for k in SECTION_SAMPLES[s]]
)
def test_dataset_and_collator_keys_reach_the_preflight_options(section, key):
    from trainer.config import parse

    value, _ = _sample_of(section, key)
    doc = default_training_config("qlora")
    doc["training_config"].setdefault(section, {})[key] = value
    config = parse(doc, "qlora")
    options = config.dataset if section == "DatasetConfig" else config.collator
    assert getattr(options, key) == (tuple(value) if isinstance(value, list) else value)


def test_eval_files_choose_the_preflights_held_out_rows(tmp_path, tiny_preset):
    """DatasetConfig.eval_files, from the YAML to the pre-flight: the matching files' rows are held out."""
    import json

    import yaml

    from trainer.inputs import check_data, load_setup
    from trainer.options import TrainerOptions

    folder = tmp_path / "data"
    folder.mkdir()
    for name, rows in (("train.jsonl", ROWS["prompt"]), ("eval-1.jsonl", ROWS["messages"][:2])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def held_out(dataset: dict[str, Any]) -> tuple[list[int], list[str]]:
        doc = default_training_config("qlora")
        doc["training_config"]["DatasetConfig"].update(dataset)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(doc))
        options = TrainerOptions(preset="tiny-llama", config=config, data=folder, output=tmp_path / "out")
        prepared = check_data(options, load_setup(options)).prepared
        return [e.index for e in prepared.eval], prepared.report["eval_files"]

    assert held_out({}) == ([], [])
    assert held_out({"eval_files": SECTION_SAMPLES["DatasetConfig"]["eval_files"]}) == (
        [0, 1],
        ["eval-1.jsonl"],
    )


def test_evaluation_keys_reach_the_trainers_gate_and_checks():
    """min_improvement becomes the trainer's gate, checks and check_max_new_tokens its task checks (what
    they do with them: test_training.py, test_checks.py)."""
    from trainer.config import parse

    doc = default_training_config("qlora")
    doc["training_config"]["DatasetConfig"]["train_test_split"] = 0.9
    sample = SECTION_SAMPLES["EvaluationConfig"]
    doc["training_config"]["EvaluationConfig"] = dict(sample)
    config = parse(doc, "qlora")
    assert config.min_improvement == sample["min_improvement"] and config.checks == sample["checks"]
    assert config.check_max_new_tokens == sample["check_max_new_tokens"]
    unset = parse(default_training_config("qlora"), "qlora")
    assert (unset.min_improvement, unset.checks, unset.check_max_new_tokens) == (None, [], 32)


@pytest.mark.parametrize(
    ("method", "init", "refused"),
    [
        ("qlora", "eva", "initialisation the trainer does not run"),
        ("lora", "loftq", "initialisation the trainer does not run"),
        ("qlora", "pissa_niter_4", "full-precision weights"),  # PEFT raises on a 4-bit base
        ("lora", "pissa", None),
        ("qlora", "olora", None),  # PEFT builds it on a 4-bit base
    ],
)
def test_lora_initialisations_the_trainer_cannot_run_are_refused(method, init, refused):
    doc = default_training_config(method)
    doc["training_config"]["LoraConfig"]["init_lora_weights"] = init
    messages = [p.message for p in validate_training_config(doc, method)]
    assert any(refused in m for m in messages) if refused else messages == []
