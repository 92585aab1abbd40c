"""The pod contract: where the controller's pods find things, what they are told, and how they answer.

The renderers write these names into pod specs; the trainer, the inference server, the merge step and
fetch-model read them. Both sides import them from here, so a rename cannot split the two.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

# ---- paths inside the pods -----------------------------------------------------------------------
DATA_DIR = "/mnt/data"  # the training data (fetched, pulled or a mounted volume)
CONFIG_DIR = "/mnt/config"  # the training-config ConfigMap
CONFIG_KEY = "training_config.yaml"  # its key, KAITO's name
RESULTS_DIR = "/mnt/results"  # the adapter and checkpoints (KAITO's output_dir)
MODEL_DIR = "/mnt/model"
MODEL_WEIGHTS = f"{MODEL_DIR}/weights"  # the preset's weights, as fetch-model left them
MODEL_CACHE_DIR = "/mnt/model-cache"  # the model cache shared across Jobs
ADAPTER_ROOT = "/mnt/adapter"  # inference: one directory per adapter
MERGED_ROOT = "/mnt/merged"  # inference under vLLM: adapters with their strengths baked in
TERMINATION_LOG = "/dev/termination-log"  # a container's one-line answer to the controller
INPUT_URLS_FILE = "/mnt/input-urls/urls"  # tuning.input.urls, from the revision's Secret (urls_text)

# The served model id of the base with every adapter combined by strength: "<preset>+adapters".
COMBINED_SUFFIX = "+adapters"

# ---- environment the controller sets ---------------------------------------------------------------
PRESET_ENV = "KAITO_TUNE_PRESET"  # catalog name of the preset
WEIGHTS_ENV = "KAITO_TUNE_WEIGHTS"  # directory of the preset's weights (MODEL_WEIGHTS)
WORKSPACE_NAME_ENV = "KAITO_WORKSPACE_NAME"  # the Workspace whose status the trainer reports into
WORKSPACE_NAMESPACE_ENV = "KAITO_WORKSPACE_NAMESPACE"
WORKSPACE_API_VERSION_ENV = "KAITO_WORKSPACE_API_VERSION"
PROGRESS_INTERVAL_ENV = "KAITO_PROGRESS_INTERVAL_S"  # seconds between progress patches
# MLflow's own variables (the trainer's MlflowClient reads them as any MLflow client does): set on the
# train container only, the credentials from the Secret the controller setting names.
MLFLOW_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # tracking on when set (trainer.tracking)
MLFLOW_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
ADAPTER_IMAGE_ENV = "KAITO_ADAPTER_IMAGE"  # where the push sends the adapter (a tag on the MLflow run)
MLFLOW_CREDENTIAL_ENVS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
STRENGTHS_ENV = "KAITO_ADAPTER_STRENGTHS"  # name=strength,... (format_strengths / parse_strengths)

# ---- exit codes of the trainer -----------------------------------------------------------------------
EXIT_OK = 0  # trained (or the results already held a complete adapter)
EXIT_UNUSABLE = 1  # config, preset or data cannot be used: retrying cannot help
EXIT_SIGTERM = 143  # 128 + SIGTERM: stopped after a checkpoint, resumable

# ---- exit code of the push step (kaito-tune push) besides 0 and 1 -------------------------------------
EXIT_NOT_BETTER = 3  # the adapter failed EvaluationConfig.min_improvement: not pushed, a retry cannot help

# ---- adapter strengths ---------------------------------------------------------------------------------
DEFAULT_STRENGTH = 1.0
_STRENGTH = re.compile(r"^[0-9]*\.?[0-9]+$")


class StrengthError(ValueError):
    """A strength or the strengths list cannot be read; the message says which and what to write."""


def parse_strength(text: str) -> float:
    """A strength as KAITO writes it (a decimal string such as "0.5") -> a float in [0, 1]."""
    if not _STRENGTH.match(text):
        raise StrengthError(f"{text!r} is not a number from 0.0 to 1.0")
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise StrengthError(f"{text!r} is outside 0.0..1.0")
    return value


def format_strengths(strengths: Mapping[str, float]) -> str:
    """``{"a": 0.5}`` -> ``"a=0.5"``: the STRENGTHS_ENV value the renderers write."""
    return ",".join(f"{name}={float(value)}" for name, value in strengths.items())


def parse_strengths(items: Iterable[str]) -> dict[str, float]:
    """``["a=0.5", "b=1"]`` (or ``"a=0.5,b=1"`` items) -> ``{"a": 0.5, "b": 1.0}``, each in [0, 1]."""
    out: dict[str, float] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, value = part.partition("=")
            if not sep or not name:
                raise StrengthError(f"adapter strength {part!r}: write NAME=VALUE, e.g. my-adapter=0.5")
            try:
                out[name] = parse_strength(value)
            except StrengthError as exc:
                raise StrengthError(f"adapter strength {part!r}: {exc}") from None
    return out


# ---- tuning.input.urls, handed to fetch-data in a Secret ----------------------------------------------
def urls_text(urls: Sequence[str]) -> str:
    """The Secret's content: one URL per line (a URL holds no newline)."""
    return "".join(f"{url}\n" for url in urls)


def urls_sha256(urls: Sequence[str]) -> str:
    """What fetch-data checks the mounted list against: the controller cannot read the Secret it made."""
    return hashlib.sha256(urls_text(urls).encode()).hexdigest()
