"""Table of bad Workspaces and training configs: each must be rejected, naming the field path.

Every case starts from a seed example (or KAITO's default training config), applies one or two edits,
and asserts an error whose path is the expected field and whose text says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from contract.problems import Problem, Severity, errors
from contract.training_config import default_training_config, validate_training_config
from tests.api.builders import ADAPTERS_SEED, INFERENCE_SEED, TUNING_SEED, edit, load
from tuning_controller.training_targets import target_problems
from tuning_controller.validation import validate_workspace

DELETE = object()
BASES = {"tuning": TUNING_SEED, "inference": INFERENCE_SEED, "adapters": ADAPTERS_SEED}


@dataclass(frozen=True)
class Case:
    id: str
    base: str  # tuning | inference | adapters (Workspaces) or lora | qlora (training configs)
    edits: tuple[tuple[str, Any], ...]
    path: str  # the problem's path must equal this
    says: str  # and its text must contain this (case-insensitive)
    options: dict[str, Any] = field(default_factory=dict)


def ws_case(id_: str, base: str, edits: list[tuple[str, Any]], path: str, says: str, **options: Any) -> Case:
    return Case(id_, base, tuple(edits), path, says, options)


ADAPTER = {"source": {"name": "a", "image": "myacr.azurecr.io/adapters/a:1"}, "strength": "0.5"}

WORKSPACE_CASES = [
    ws_case(
        "neither-inference-nor-tuning",
        "tuning",
        [("tuning", DELETE)],
        "inference",
        "exactly one of inference",
    ),
    ws_case(
        "both-inference-and-tuning",
        "tuning",
        [("inference.preset.name", "phi-4")],
        "inference",
        "exactly one",
    ),
    ws_case("wrong-api-version", "tuning", [("apiVersion", "kaito.sh/v1")], "apiVersion", "v1beta1"),
    ws_case("wrong-kind", "tuning", [("kind", "Workspaces")], "kind", "must be Workspace"),
    ws_case("name-not-dns1123", "tuning", [("metadata.name", "work space!")], "metadata.name", "DNS-1123"),
    ws_case("name-uppercase", "tuning", [("metadata.name", "Tuning_WS")], "metadata.name", "DNS-1123"),
    ws_case("name-missing", "tuning", [("metadata.name", DELETE)], "metadata.name", "is required"),
    # KAITO's validation refuses these too: a placeholder repository would fail only at the push
    ws_case(
        "input-image-placeholder",
        "tuning",
        [("tuning.input", {"image": "ACR_REPO_HERE.azurecr.io/DATA_HERE:0.0.1"})],
        "tuning.input.image",
        "lowercase",
    ),
    ws_case(
        "output-image-placeholder",
        "tuning",
        [("tuning.output.image", "myacr.azurecr.io/Adapters/Phi3:1")],
        "tuning.output.image",
        "lowercase",
    ),
    ws_case(
        "match-label-of-the-controller",
        "tuning",
        [("resource.labelSelector.matchLabels", {"kaito.sh/workspace": "other"})],
        "resource.labelSelector.matchLabels.kaito.sh/workspace",
        "label the controller sets",
    ),
    ws_case(
        "match-label-key-invalid",
        "tuning",
        [("resource.labelSelector.matchLabels", {"Bad Key/x": "v"})],
        "resource.labelSelector.matchLabels.Bad Key/x",
        "not a valid label key",
    ),
    ws_case(
        "node-image-family-unknown",
        "tuning",
        [("metadata.annotations", {"kaito.sh/node-image-family": "windows"})],
        "metadata.annotations[kaito.sh/node-image-family]",
        "ubuntu, azurelinux",
    ),
    ws_case("name-too-long", "tuning", [("metadata.name", "w" * 64)], "metadata.name", "at most 63"),
    ws_case("unknown-top-level-field", "tuning", [("resourse", {})], "resourse", "did you mean 'resource'"),
    ws_case("spec-wrapper", "tuning", [("spec", {})], "spec", "unknown field"),
    ws_case("resource-missing", "tuning", [("resource", DELETE)], "resource", "is required"),
    ws_case(
        "label-selector-missing",
        "tuning",
        [("resource.labelSelector", DELETE)],
        "resource.labelSelector",
        "is required",
    ),
    ws_case(
        "label-selector-empty",
        "tuning",
        [("resource.labelSelector", {})],
        "resource.labelSelector",
        "every node",
    ),
    ws_case(
        "label-value-not-string",
        "tuning",
        [("resource.labelSelector.matchLabels.app", 3)],
        "resource.labelSelector.matchLabels.app",
        "must be a string",
    ),
    ws_case(
        "unknown-instance-type",
        "tuning",
        [("resource.instanceType", "Standard_NC6s_v9")],
        "resource.instanceType",
        "Standard_NC6s_v3",
    ),
    ws_case("count-zero", "tuning", [("resource.count", 0)], "resource.count", "at least 1"),
    ws_case("count-as-string", "tuning", [("resource.count", "1")], "resource.count", "must be an integer"),
    ws_case(
        "tuning-unknown-field", "tuning", [("tuning.outptu", {})], "tuning.outptu", "did you mean 'output'"
    ),
    ws_case("method-unknown", "tuning", [("tuning.method", "dora")], "tuning.method", "lora or qlora"),
    ws_case("method-missing", "tuning", [("tuning.method", DELETE)], "tuning.method", "is required"),
    ws_case(
        "preset-unknown",
        "tuning",
        [("tuning.preset.name", "phi-3-mini")],
        "tuning.preset.name",
        "phi-3-mini-4k-instruct",
    ),
    ws_case("preset-missing", "tuning", [("tuning.preset", DELETE)], "tuning.preset", "is required"),
    ws_case("input-missing", "tuning", [("tuning.input", DELETE)], "tuning.input", "is required"),
    ws_case(
        "input-urls-and-image",
        "tuning",
        [("tuning.input.image", "myacr.azurecr.io/data/dolly:1")],
        "tuning.input",
        "exactly one of urls, image, volumeSource",
    ),
    ws_case("input-empty", "tuning", [("tuning.input", {"name": "x"})], "tuning.input", "exactly one"),
    ws_case(
        "input-url-ftp",
        "tuning",
        [("tuning.input.urls", ["ftp://example.com/d.parquet"])],
        "tuning.input.urls[0]",
        "http(s)",
    ),
    ws_case(
        "input-url-localhost",
        "tuning",
        [("tuning.input.urls", ["https://localhost/d.parquet"])],
        "tuning.input.urls[0]",
        "localhost",
    ),
    ws_case(
        "input-url-loopback",
        "tuning",
        [("tuning.input.urls", ["http://127.0.0.1:8080/d.jsonl"])],
        "tuning.input.urls[0]",
        "loopback",
    ),
    ws_case(
        "input-url-metadata-ip",
        "tuning",
        [("tuning.input.urls", ["http://169.254.169.254/latest/meta-data/"])],
        "tuning.input.urls[0]",
        "link-local",
    ),
    ws_case(
        "input-url-metadata-name",
        "tuning",
        [("tuning.input.urls", ["https://metadata.google.internal/x"])],
        "tuning.input.urls[0]",
        "metadata",
    ),
    ws_case(
        "input-url-private",
        "tuning",
        [("tuning.input.urls", ["https://10.1.2.3/d.csv"])],
        "tuning.input.urls[0]",
        "private",
    ),
    ws_case(
        "input-url-ipv6-loopback",
        "tuning",
        [("tuning.input.urls", ["https://[::1]/d.csv"])],
        "tuning.input.urls[0]",
        "loopback",
    ),
    ws_case(
        "input-url-credentials",
        "tuning",
        [("tuning.input.urls", ["https://user:secret@example.com/d.csv"])],
        "tuning.input.urls[0]",
        "credentials",
    ),
    ws_case(
        "input-urls-not-a-list",
        "tuning",
        [("tuning.input.urls", "https://example.com/d.csv")],
        "tuning.input.urls",
        "must be a list",
    ),
    ws_case(
        "input-image-unparsable",
        "tuning",
        [("tuning.input.urls", DELETE), ("tuning.input.image", "not a reference")],
        "tuning.input.image",
        "registry",
    ),
    ws_case(
        "input-pull-secret-name",
        "tuning",
        [("tuning.input.imagePullSecrets", ["bad secret!"])],
        "tuning.input.imagePullSecrets[0]",
        "DNS-1123 subdomain",
    ),
    ws_case(
        "input-volume-two-types",
        "tuning",
        [
            ("tuning.input.urls", DELETE),
            ("tuning.input.volumeSource", {"emptyDir": {}, "hostPath": {"path": "/d"}}),
        ],
        "tuning.input.volumeSource",
        "exactly one volume type",
    ),
    ws_case(
        "input-volume-hostpath",
        "tuning",
        [
            ("tuning.input.urls", DELETE),
            ("tuning.input.volumeSource", {"hostPath": {"path": "/var/lib/kubelet"}}),
        ],
        "tuning.input.volumeSource.hostPath",
        "not an allowed volume type",
    ),
    ws_case(
        "output-volume-hostpath",
        "tuning",
        [
            ("tuning.output.image", DELETE),
            ("tuning.output.imagePushSecret", DELETE),
            ("tuning.output.volumeSource", {"hostPath": {"path": "/etc/cron.d"}}),
        ],
        "tuning.output.volumeSource.hostPath",
        "not an allowed volume type",
    ),
    ws_case(
        "input-volume-not-a-mapping",
        "tuning",
        [("tuning.input.urls", DELETE), ("tuning.input.volumeSource", {"persistentVolumeClaim": "data"})],
        "tuning.input.volumeSource.persistentVolumeClaim",
        "must be a mapping",
    ),
    ws_case("output-missing", "tuning", [("tuning.output", DELETE)], "tuning.output", "is required"),
    ws_case(
        "output-image-without-secret",
        "tuning",
        [("tuning.output.imagePushSecret", DELETE)],
        "tuning.output.imagePushSecret",
        "required with tuning.output.image",
    ),
    ws_case(
        "output-image-and-volume",
        "tuning",
        [("tuning.output.volumeSource", {"persistentVolumeClaim": {"claimName": "out"}})],
        "tuning.output",
        "exactly one of image",
    ),
    ws_case(
        "output-image-on-a-metadata-address",
        "tuning",
        [("tuning.output.image", "169.254.169.254/latest/meta-data:v1")],
        "tuning.output.image",
        "link-local",
    ),
    ws_case(
        "output-image-with-scheme",
        "tuning",
        [("tuning.output.image", "https://myacr.azurecr.io/a:1")],
        "tuning.output.image",
        "scheme",
    ),
    ws_case("config-name-invalid", "tuning", [("tuning.config", "My Config")], "tuning.config", "DNS-1123"),
    ws_case(
        "lora-does-not-fit",
        "tuning",
        [("tuning.preset.name", "phi-4"), ("tuning.method", "lora")],
        "resource.instanceType",
        "method: qlora",
    ),
    ws_case(
        "qlora-32b-does-not-fit-v100",
        "tuning",
        [("tuning.preset.name", "qwen2.5-coder-32b-instruct")],
        "resource.instanceType",
        "a larger instance type: Standard_",
    ),
    ws_case(
        "inference-preset-and-template",
        "inference",
        [("inference.template", {"spec": {"containers": []}})],
        "inference",
        "exactly one of preset or template",
    ),
    ws_case(
        "inference-template-alone",
        "inference",
        [("inference.preset", DELETE), ("inference.template", {"spec": {"containers": []}})],
        "inference.template",
        "not supported",
    ),
    ws_case(
        "inference-preset-unknown",
        "inference",
        [("inference.preset.name", "falcon-7b")],
        "inference.preset.name",
        "not a known model preset",
    ),
    ws_case(
        "inference-model-image-unparsable",
        "inference",
        [("inference.preset.presetOptions.image", "http://myacr.azurecr.io/phi:1")],
        "inference.preset.presetOptions.image",
        "scheme",
    ),
    ws_case(
        "inference-does-not-fit",
        "inference",
        [("inference.preset.name", "qwen2.5-coder-32b-instruct")],
        "resource.instanceType",
        "does not fit",
    ),
    ws_case(
        "adapters-eleven",
        "adapters",
        [("inference.adapters", [edit(ADAPTER, "source.name", f"a{i}") for i in range(11)])],
        "inference.adapters",
        "at most 10",
    ),
    ws_case(
        "adapters-duplicate-name",
        "adapters",
        [("inference.adapters", [ADAPTER, ADAPTER])],
        "inference.adapters[1].source.name",
        "duplicates inference.adapters[0]",
    ),
    ws_case(
        "adapter-name-invalid",
        "adapters",
        [("inference.adapters[0].source.name", "phi 3/adapter")],
        "inference.adapters[0].source.name",
        "DNS-1123 label",
    ),
    ws_case(
        "adapter-name-missing",
        "adapters",
        [("inference.adapters[0].source.name", DELETE)],
        "inference.adapters[0].source.name",
        "is required",
    ),
    ws_case(
        "adapter-source-missing",
        "adapters",
        [("inference.adapters[0].source", DELETE)],
        "inference.adapters[0].source",
        "is required",
    ),
    ws_case(
        "adapter-from-urls",
        "adapters",
        [("inference.adapters[0].source.urls", ["https://example.com/a.tar"])],
        "inference.adapters[0].source.urls",
        "not fetched from URLs",
    ),
    ws_case(
        "adapter-strength-above-one",
        "adapters",
        [("inference.adapters[0].strength", "1.5")],
        "inference.adapters[0].strength",
        '"0.0" to "1.0"',
    ),
    ws_case(
        "adapter-strength-not-number",
        "adapters",
        [("inference.adapters[0].strength", "strong")],
        "inference.adapters[0].strength",
        '"0.0" to "1.0"',
    ),
    ws_case(
        "adapter-strength-unquoted",
        "adapters",
        [("inference.adapters[0].strength", 1.0)],
        "inference.adapters[0].strength",
        "must be a string",
    ),
]


def cfg_case(
    id_: str, method: str, edits: list[tuple[str, Any]], path: str, says: str, **options: Any
) -> Case:
    return Case(id_, method, tuple(edits), path, says, options)


T = "training_config"
CONFIG_CASES = [
    cfg_case(
        "learning-rat-typo",
        "qlora",
        [(f"{T}.TrainingArguments.learning_rat", 2.0e-4)],
        f"{T}.TrainingArguments.learning_rat",
        "did you mean 'learning_rate'",
    ),
    cfg_case("unknown-section", "qlora", [(f"{T}.Optimizer", {})], f"{T}.Optimizer", "unknown section"),
    cfg_case(
        "section-typo",
        "qlora",
        [(f"{T}.DataColator", {"mlm": True})],
        f"{T}.DataColator",
        "did you mean 'DataCollator'",
    ),
    cfg_case(
        "option-in-wrong-section",
        "qlora",
        [(f"{T}.LoraConfig.learning_rate", 1.0e-4)],
        f"{T}.LoraConfig.learning_rate",
        "option of TrainingArguments",
    ),
    cfg_case(
        "lora-dropout-one",
        "qlora",
        [(f"{T}.LoraConfig.lora_dropout", 1.0)],
        f"{T}.LoraConfig.lora_dropout",
        "[0, 1)",
    ),
    cfg_case("lora-r-zero", "qlora", [(f"{T}.LoraConfig.r", 0)], f"{T}.LoraConfig.r", "positive integer"),
    cfg_case(
        "lora-r-string", "qlora", [(f"{T}.LoraConfig.r", "8")], f"{T}.LoraConfig.r", "remove the quotes"
    ),
    cfg_case(
        "lora-r-float", "qlora", [(f"{T}.LoraConfig.r", 8.5)], f"{T}.LoraConfig.r", "must be an integer"
    ),
    cfg_case(
        "lora-bias-choice",
        "qlora",
        [(f"{T}.LoraConfig.bias", "some")],
        f"{T}.LoraConfig.bias",
        "allowed: all, lora_only, none",
    ),
    cfg_case(
        "quant-type",
        "qlora",
        [(f"{T}.QuantizationConfig.bnb_4bit_quant_type", "nf3")],
        f"{T}.QuantizationConfig.bnb_4bit_quant_type",
        "did you mean 'nf4'",
    ),
    cfg_case(
        "compute-dtype",
        "qlora",
        [(f"{T}.QuantizationConfig.bnb_4bit_compute_dtype", "bfloat")],
        f"{T}.QuantizationConfig.bnb_4bit_compute_dtype",
        "bfloat16",
    ),
    cfg_case(
        "both-4bit-and-8bit",
        "qlora",
        [(f"{T}.QuantizationConfig.load_in_8bit", True)],
        f"{T}.QuantizationConfig.load_in_4bit",
        "cannot both be true",
    ),
    cfg_case(
        "lora-with-4bit",
        "lora",
        [(f"{T}.QuantizationConfig.load_in_4bit", True)],
        f"{T}.QuantizationConfig.load_in_4bit",
        "use method qlora",
    ),
    cfg_case(
        "qlora-without-quantisation",
        "qlora",
        [(f"{T}.QuantizationConfig.load_in_4bit", False)],
        f"{T}.QuantizationConfig.load_in_4bit",
        "needs quantised weights",
    ),
    cfg_case(
        "load-in-4bit-as-string",
        "qlora",
        [(f"{T}.QuantizationConfig.load_in_4bit", "yes")],
        f"{T}.QuantizationConfig.load_in_4bit",
        "true/false",
    ),
    cfg_case(
        "output-dir-is-mnt",
        "qlora",
        [(f"{T}.TrainingArguments.output_dir", "/mnt")],
        f"{T}.TrainingArguments.output_dir",
        "under /mnt",
    ),
    cfg_case(
        "output-dir-outside-mnt",
        "qlora",
        [(f"{T}.TrainingArguments.output_dir", "/mnt/../tmp/out")],
        f"{T}.TrainingArguments.output_dir",
        "under /mnt",
    ),
    cfg_case(
        "learning-rate-quoted-exponent",
        "qlora",
        [(f"{T}.TrainingArguments.learning_rate", "2e-4")],
        f"{T}.TrainingArguments.learning_rate",
        "2.0e-4",
    ),
    cfg_case(
        "learning-rate-negative",
        "qlora",
        [(f"{T}.TrainingArguments.learning_rate", -1.0e-4)],
        f"{T}.TrainingArguments.learning_rate",
        "positive",
    ),
    cfg_case(
        "epochs-zero",
        "qlora",
        [(f"{T}.TrainingArguments.num_train_epochs", 0)],
        f"{T}.TrainingArguments.num_train_epochs",
        "positive",
    ),
    cfg_case(
        "optim-unknown",
        "qlora",
        [(f"{T}.TrainingArguments.optim", "adamw")],
        f"{T}.TrainingArguments.optim",
        "did you mean 'adamw_",
    ),
    cfg_case(
        "scheduler-unknown",
        "qlora",
        [(f"{T}.TrainingArguments.lr_scheduler_type", "cosin")],
        f"{T}.TrainingArguments.lr_scheduler_type",
        "did you mean 'cosine'",
    ),
    cfg_case(
        "warmup-ratio-removed",
        "qlora",
        [(f"{T}.TrainingArguments.warmup_ratio", 0.1)],
        f"{T}.TrainingArguments.warmup_ratio",
        "unknown option",
    ),
    cfg_case(
        "hub-token",
        "qlora",
        [(f"{T}.TrainingArguments.hub_token", "hf_xxx")],
        f"{T}.TrainingArguments.hub_token",
        "secrets",
    ),
    cfg_case(
        "trust-remote-code",
        "qlora",
        [(f"{T}.ModelConfig.trust_remote_code", True)],
        f"{T}.ModelConfig.trust_remote_code",
        "would run in the training pod",
    ),
    cfg_case(
        "model-revision",
        "qlora",
        [(f"{T}.ModelConfig.revision", "main")],
        f"{T}.ModelConfig.revision",
        "the preset pins the weights' revision",
    ),
    cfg_case(
        "split-zero",
        "qlora",
        [(f"{T}.DatasetConfig.train_test_split", 0)],
        f"{T}.DatasetConfig.train_test_split",
        "(0, 1]",
    ),
    cfg_case(
        "split-above-one",
        "qlora",
        [(f"{T}.DatasetConfig.train_test_split", 1.5)],
        f"{T}.DatasetConfig.train_test_split",
        "(0, 1]",
    ),
    cfg_case(
        "dataset-option-typo",
        "qlora",
        [(f"{T}.DatasetConfig.shuffle", True)],
        f"{T}.DatasetConfig.shuffle",
        "'shuffle_dataset'",
    ),
    cfg_case(
        "model-dtype-typo",
        "qlora",
        [(f"{T}.ModelConfig.torch_dtype", "bfloat17")],
        f"{T}.ModelConfig.torch_dtype",
        "did you mean 'bfloat16'",
    ),
    cfg_case(
        "dataset-max-length-zero",
        "qlora",
        [(f"{T}.DatasetConfig.max_length", 0)],
        f"{T}.DatasetConfig.max_length",
        "positive",
    ),
    cfg_case(
        "collator-contradicts-arguments",
        "qlora",
        [
            (f"{T}.DataCollator.assistant_only_loss", True),
            (f"{T}.TrainingArguments.assistant_only_loss", False),
        ],
        f"{T}.DataCollator.assistant_only_loss",
        "contradicts TrainingArguments.assistant_only_loss",
    ),
    cfg_case("section-not-mapping", "qlora", [(f"{T}.LoraConfig", [8, 8])], f"{T}.LoraConfig", "mapping"),
    cfg_case(
        "gate-without-held-out-rows",
        "qlora",
        [(f"{T}.EvaluationConfig", {"min_improvement": 0.05})],
        f"{T}.EvaluationConfig.min_improvement",
        "holds no rows out",
    ),
    cfg_case(
        "eval-files-and-split",
        "qlora",
        [(f"{T}.DatasetConfig.train_test_split", 0.9), (f"{T}.DatasetConfig.eval_files", ["eval.jsonl"])],
        f"{T}.DatasetConfig.eval_files",
        "cannot be used with DatasetConfig.train_test_split below 1 (0.9): both choose the held-out rows; "
        "choose one",
    ),
    *(
        cfg_case(
            f"eval-files-{name}",
            "qlora",
            [(f"{T}.DatasetConfig.eval_files", ["eval.jsonl", entry])],
            f"{T}.DatasetConfig.eval_files[1]",
            says,
        )
        for name, entry, says in (
            ("parent", "../secret.jsonl", "must stay inside the input data (no .. segment) (got '../secret"),
            ("parent-inside", "a/../../x.jsonl", "no .. segment"),
            ("absolute", "/mnt/data/eval.jsonl", "must be relative to the input data (no leading /)"),
            ("empty", "", "must be a non-empty string: a data file's path inside the input, or a glob"),
            ("blank", "  ", "must be a non-empty string"),
            ("not-a-string", 3, "must be a non-empty string: a data file's path inside the input"),
            ("dot-segment", "./eval.jsonl", "never matches: the pre-flight names files without . or empty"),
            ("empty-segment", "held//eval.jsonl", "write 'held/eval.jsonl'"),
        )
    ),
    cfg_case(
        "eval-files-too-many",
        "qlora",
        [(f"{T}.DatasetConfig.eval_files", [f"eval-{i}.jsonl" for i in range(101)])],
        f"{T}.DatasetConfig.eval_files",
        "holds 101 entries, more than 100",
    ),
    cfg_case(
        "eval-files-not-a-list",
        "qlora",
        [(f"{T}.DatasetConfig.eval_files", "eval.jsonl")],
        f"{T}.DatasetConfig.eval_files",
        "must be a list or null",
    ),
    cfg_case(
        "gate-above-one",
        "qlora",
        [(f"{T}.DatasetConfig.train_test_split", 0.9), (f"{T}.EvaluationConfig", {"min_improvement": 5})],
        f"{T}.EvaluationConfig.min_improvement",
        "a fraction in [0, 1)",
    ),
    cfg_case(
        "gate-negative",
        "qlora",
        [(f"{T}.DatasetConfig.train_test_split", 0.9), (f"{T}.EvaluationConfig", {"min_improvement": -0.1})],
        f"{T}.EvaluationConfig.min_improvement",
        "a fraction in [0, 1)",
    ),
    cfg_case(
        "gate-percent-string",
        "qlora",
        [(f"{T}.DatasetConfig.train_test_split", 0.9), (f"{T}.EvaluationConfig", {"min_improvement": "5%"})],
        f"{T}.EvaluationConfig.min_improvement",
        "must be a number or null",
    ),
    *(
        cfg_case(
            f"check-{name}",
            "qlora",
            [(f"{T}.EvaluationConfig", {"checks": [{"prompt": "Hi?", "exact": "Hello"}, item]})],
            f"{T}.EvaluationConfig.checks[1]{field}",
            says,
        )
        for name, item, field, says in (
            ("not-a-mapping", "What is 2+2? 4", "", "must be a mapping {prompt"),
            ("no-prompt", {"exact": "4"}, ".prompt", "must be a non-empty string"),
            ("blank-prompt", {"prompt": "  ", "exact": "4"}, ".prompt", "must be a non-empty string"),
            ("no-answer", {"prompt": "2+2?"}, "", "exactly one of exact, contains or regex (has none)"),
            ("two-answers", {"prompt": "2+2?", "exact": "4", "contains": "4"}, "", "(has exact, contains)"),
            ("answer-not-text", {"prompt": "2+2?", "exact": 4}, ".exact", "must be a non-empty string"),
            ("bad-regex", {"prompt": "2+2?", "regex": "4("}, ".regex", "is not a regular expression"),
            ("field-typo", {"prompt": "2+2?", "exacts": "4"}, ".exacts", "did you mean 'exact'"),
        )
    ),
    cfg_case(
        "too-many-checks",
        "qlora",
        [(f"{T}.EvaluationConfig", {"checks": [{"prompt": f"q{i}", "exact": "a"} for i in range(101)]})],
        f"{T}.EvaluationConfig.checks",
        "holds 101 checks, more than 100",
    ),
    cfg_case(
        "check-tokens-too-many",
        "qlora",
        [(f"{T}.EvaluationConfig", {"check_max_new_tokens": 65})],
        f"{T}.EvaluationConfig.check_max_new_tokens",
        "from 1 to 64",
    ),
    cfg_case(
        "checks-not-a-list",
        "qlora",
        [(f"{T}.EvaluationConfig", {"checks": {"prompt": "2+2?", "exact": "4"}})],
        f"{T}.EvaluationConfig.checks",
        "must be a list or null",
    ),
    cfg_case(
        "gate-option-typo",
        "qlora",
        [(f"{T}.EvaluationConfig", {"min_improvment": 0.05})],
        f"{T}.EvaluationConfig.min_improvment",
        "did you mean 'min_improvement'",
    ),
    cfg_case(
        "target-module-not-in-phi3",
        "qlora",
        [(f"{T}.LoraConfig.target_modules", ["q_proj", "o_proj"])],
        f"{T}.LoraConfig.target_modules[0]",
        "did you mean 'qkv_proj'",
        preset="phi-3-mini-4k-instruct",
    ),
]


def _build_workspace(case: Case) -> dict[str, Any]:
    obj = load(BASES[case.base])
    for path, value in case.edits:
        obj = edit(obj, path, delete=True) if value is DELETE else edit(obj, path, value)
    return obj


def _build_config(case: Case) -> dict[str, Any]:
    doc = default_training_config(case.base)
    for path, value in case.edits:
        doc = edit(doc, path, delete=True) if value is DELETE else edit(doc, path, value)
    return doc


def _assert_reported(problems: list[Problem], case: Case) -> None:
    matching = [p for p in errors(problems) if p.path == case.path]
    shown = "\n".join(str(p) for p in problems)
    assert matching, f"no error at {case.path!r}; got:\n{shown}"
    assert any(case.says.lower() in str(p).lower() for p in matching), f"{case.says!r} not said:\n{shown}"


def test_table_is_large_enough() -> None:
    assert len(WORKSPACE_CASES) + len(CONFIG_CASES) >= 40
    assert len({c.id for c in WORKSPACE_CASES + CONFIG_CASES}) == len(WORKSPACE_CASES) + len(CONFIG_CASES)


@pytest.mark.parametrize("case", WORKSPACE_CASES, ids=lambda c: c.id)
def test_bad_workspace_is_rejected_at_its_field(case: Case) -> None:
    _assert_reported(validate_workspace(_build_workspace(case), **case.options), case)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: c.id)
def test_bad_training_config_is_rejected_at_its_field(case: Case) -> None:
    doc = _build_config(case)
    problems = validate_training_config(doc, case.base) + target_problems(doc, **case.options)
    _assert_reported(problems, case)


@pytest.mark.parametrize("case", CONFIG_CASES[:6], ids=lambda c: c.id)
def test_bad_config_in_a_workspace_names_the_configmap(case: Case, tuning_ws: dict[str, Any]) -> None:
    """The same checks run when a Workspace's tuning.config ConfigMap is at hand, paths prefixed by it."""
    ws = edit(edit(tuning_ws, "tuning.config", "my-config"), "tuning.method", case.base)
    problems = validate_workspace(ws, training_config=_build_config(case))
    prefixed = Case(
        case.id, case.base, case.edits, f"configmap/my-config[training_config.yaml].{case.path}", case.says
    )
    _assert_reported(problems, prefixed)


def test_kaito_parity_warnings_and_accepted_annotations(adapters_ws: dict[str, Any]) -> None:
    """What KAITO would refuse but this controller serves is a warning that says so; KAITO's node image
    families pass in any case; an adapter image placeholder stays a warning (nothing trains first)."""
    problems = validate_workspace(adapters_ws)
    assert errors(problems) == []
    (vllm,) = [p for p in problems if p.path == "inference.adapters[0].strength"]
    assert vllm.severity is Severity.WARNING and "kaito.sh/runtime: transformers" in str(vllm)
    placeholder = next(p for p in problems if p.path == "inference.adapters[0].source.image")
    assert placeholder.severity is Severity.WARNING
    annotated = edit(adapters_ws, "metadata.annotations", {"kaito.sh/runtime": "transformers"})
    assert not [p for p in validate_workspace(annotated) if p.path.endswith(".strength")]
    for family in ("ubuntu", "AzureLinux"):
        ws = edit(adapters_ws, "metadata.annotations", {"kaito.sh/node-image-family": family})
        assert not [p for p in validate_workspace(ws) if "node-image-family" in p.path]


def test_a_gate_on_a_volume_output_is_refused(tuning_ws: dict[str, Any]) -> None:
    """EvaluationConfig.min_improvement holds the push back; an output volume has no push to hold."""
    doc = default_training_config("qlora")
    doc["training_config"]["DatasetConfig"]["train_test_split"] = 0.9
    doc["training_config"]["EvaluationConfig"] = {"min_improvement": 0.05}
    ws = edit(edit(tuning_ws, "tuning.config", "my-config"), "tuning.method", "qlora")
    assert errors(validate_workspace(ws, training_config=doc)) == []
    volume = edit(ws, "tuning.output", {"volumeSource": {"emptyDir": {}}})
    (problem,) = errors(validate_workspace(volume, training_config=doc))
    assert (
        problem.path
        == "configmap/my-config[training_config.yaml].training_config.EvaluationConfig.min_improvement"
    )
    assert "tuning.output.volumeSource has none" in problem.message and "tuning.output.image" in problem.hint


def test_a_bad_check_in_a_workspace_names_the_configmap_key_index_field_and_value(
    tuning_ws: dict[str, Any],
) -> None:
    doc = default_training_config("qlora")
    doc["training_config"]["EvaluationConfig"] = {"checks": [{"prompt": "Order?", "regex": "ORD-(\\d+"}]}
    ws = edit(edit(tuning_ws, "tuning.config", "my-config"), "tuning.method", "qlora")
    (problem,) = errors(validate_workspace(ws, training_config=doc))
    assert str(problem).startswith(
        "error: configmap/my-config[training_config.yaml].training_config.EvaluationConfig.checks[0].regex: "
        "is not a regular expression (missing ), unterminated subpattern at position 4) (got 'ORD-(\\\\d+'); "
        "Python's re syntax"
    )


@pytest.mark.parametrize(
    "asks",
    [
        {"EvaluationConfig": {"min_improvement": 0.05}},
        {"TrainingArguments": {"eval_strategy": "steps", "eval_steps": 5}},
        {"TrainingArguments": {"eval_on_start": True}},
        {
            "TrainingArguments": {
                "load_best_model_at_end": True,
                "eval_strategy": "epoch",
                "save_strategy": "epoch",
            }
        },
    ],
    ids=["min_improvement", "eval_strategy", "eval_on_start", "load_best_model_at_end"],
)
def test_eval_files_hold_rows_out_for_evaluation(asks: dict[str, dict[str, Any]]) -> None:
    """Evaluating needs held-out rows: DatasetConfig.eval_files holds them out as train_test_split does."""
    doc = default_training_config("qlora")
    for section, values in asks.items():
        doc[T].setdefault(section, {}).update(values)
    refused = errors(validate_training_config(doc, "qlora"))
    assert refused and {(p.message, "DatasetConfig.eval_files" in p.hint) for p in refused} == {
        (
            "evaluates, but DatasetConfig holds no rows out (train_test_split is 1, eval_files names none)",
            True,
        )
    }
    doc[T]["DatasetConfig"]["eval_files"] = ["eval*.parquet"]
    assert validate_training_config(doc, "qlora") == []
    doc[T]["DatasetConfig"]["eval_files"] = []  # an empty list holds nothing out
    assert errors(validate_training_config(doc, "qlora")) == refused


def test_eval_files_must_match_a_file_the_input_urls_are_saved_as(tuning_ws: dict[str, Any]) -> None:
    """With tuning.input.urls the controller knows the data's file names when the Workspace is applied (the
    name fetch-data saves each URL under): a pattern matching none of them is refused there, not after
    the download."""
    urls = [
        "https://data.example.com/sets/train.jsonl",
        "https://data.example.com/sets/eval%20set.jsonl?download=true",
        "https://mirror.example.com/other/train.jsonl",  # a second train.jsonl is saved as 2-train.jsonl
    ]
    ws = edit(edit(tuning_ws, "tuning.config", "my-config"), "tuning.input.urls", urls)
    doc = default_training_config("qlora")
    doc[T]["DatasetConfig"]["eval_files"] = ["eval_set.jsonl", "2-*.jsonl"]
    assert errors(validate_workspace(ws, training_config=doc)) == []
    doc[T]["DatasetConfig"]["eval_files"] = ["eval_set.jsonl", "eval*.parquet", "valid.jsonl"]
    problems = errors(validate_workspace(ws, training_config=doc))
    assert [str(p) for p in problems] == [
        f"error: configmap/my-config[training_config.yaml].{T}.DatasetConfig.eval_files[{index}]: matches "
        "none of the files tuning.input.urls are saved as (train.jsonl, eval_set.jsonl, 2-train.jsonl) "
        f"(got {pattern!r}); name one of them (a URL is saved under its last path segment), or a glob that "
        "matches one"
        for index, pattern in ((1, "eval*.parquet"), (2, "valid.jsonl"))
    ]
    volume = edit(ws, "tuning.input", {"volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}})
    assert errors(validate_workspace(volume, training_config=doc)) == []  # the pre-flight checks those
