"""The training run in MLflow, when ``MLFLOW_TRACKING_URI`` is set (in the controller's pods: its
``mlflow_tracking_uri`` setting; locally: your environment, as for any MLflow client).

Logged to one run, by MLflow's client (``MlflowClient``, no process-wide active run), on rank 0 only:
- params: the training config as validated (``Section.option``), preset, base model and revision,
  method, the data's sha256 and the config's;
- metrics: every number the Trainer logs, at its step (the loss of each logging step, learning rate,
  eval loss, the base's held-out loss before the first step), tokens per second between two logs, and
  after the last step ``status.tuning.evaluation``'s numbers (``evaluation.baseLoss``, ...);
- the run is named after the Workspace (tag ``kaito.sh/workspace``: namespace/name); its id goes into
  ``status.tuning.tracking`` and into the checkpoints directory, so a restarted pod resumes the same run.

Why not transformers' ``MLflowCallback`` (``report_to: mlflow``): it raises when the server cannot be
reached, so a dashboard outage would fail a paid GPU run; it logs TrainingArguments' two hundred fields
rather than the config that was validated; and it knows nothing of the preset, the data's hash, the
held-out evaluation or a resumed pod. Here a failure to reach MLflow is logged and shown in
``status.tuning.tracking.error``, tracking stops for the rest of the run, and training goes on. MLflow's
HTTP retries are bounded (``BOUNDED_REQUESTS``, unless the environment sets them) so an unreachable
server costs seconds, not the minutes of its default backoff.

The run records where the adapter goes (tag ``kaito.sh/adapter-image``: tuning.output.image, as the
controller passes it), not its digest: the digest exists once the push is done, and the push runs after
the trainer exited (the next container of the pod, or the ``<ws>-push`` Job), in the tools image, which
has no MLflow and must not see the tracker's credentials. The controller adds the digest to the run
(``tuning_controller.run_tags``)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from contract.pod import (
    ADAPTER_IMAGE_ENV,
    MLFLOW_EXPERIMENT_ENV,
    MLFLOW_TRACKING_URI_ENV,
    WORKSPACE_NAME_ENV,
    WORKSPACE_NAMESPACE_ENV,
)
from contract.reports import EvaluationStatus, TrackingStatus, tracking_status

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainer.inputs import CheckedData, Setup

log = logging.getLogger("trainer")

DEFAULT_EXPERIMENT = "kaito-tune"
RUN_ID_FILE = "mlflow-run-id"  # in the checkpoints directory: kept across pod restarts, gone when done
WORKSPACE_TAG = "kaito.sh/workspace"
ADAPTER_IMAGE_TAG = "kaito.sh/adapter-image"  # where the push will send the adapter (its tag, no digest)
BOUNDED_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
QUIET_STDOUT = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param's value
PARAMS_PER_BATCH = 100  # MLflow's limit on params in one log_batch
# status.tuning.evaluation's numbers, as metrics named evaluation.<its key>.
EVALUATION_METRICS = ("baseLoss", "adapterLoss", "basePerplexity", "adapterPerplexity", "heldOutRows")


def run_params(setup: Setup, data: CheckedData) -> dict[str, str]:
    """What the run was made from, as MLflow params (strings, at most PARAM_MAX_CHARS)."""
    preset, config = setup.preset, setup.config
    params = {
        "preset": preset.name,
        "base_model": preset.source,
        "model_revision": preset.revision or "",
        "method": str(setup.method),
        "data_sha256": data.prepared.sha256,
        "config_sha256": config.sha256(),
    }
    for section, options in sorted(config.sections.items()):
        for key, value in sorted(options.items()):
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            params[f"{section}.{key}"] = text[:PARAM_MAX_CHARS]
    return params


def numeric(logs: Mapping[str, Any]) -> dict[str, float]:
    """The Trainer's log entries MLflow can take as metrics: numbers (not flags), finite."""
    return {
        key: float(value)
        for key, value in logs.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Tracker(TrainerCallback):
    """Logs a run to MLflow; with no tracking URI (or on ranks other than 0) every call does nothing.

    ``status`` is what ``status.tuning.tracking`` shows (None: not tracking)."""

    def __init__(self, client: MlflowClient | None = None, status: TrackingStatus | None = None) -> None:
        self.client = client
        self.status = status
        self.last_time = 0.0
        self.last_tokens = 0

    @property
    def active(self) -> bool:
        return self.client is not None and self.status is not None and not self.status["error"]

    def fail(self, what: str, exc: Exception) -> None:
        """Stop tracking for the rest of the run: training must not wait on, or die of, a tracker."""
        assert self.status is not None
        error = f"{what}: {type(exc).__name__}: {exc}"[:500]
        log.warning("tracking: MLflow at %s: %s; training goes on untracked", self.status["uri"], error)
        self.status = {**self.status, "error": error}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        assert self.client is not None and self.status is not None and self.status["runId"]
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        try:
            self.client.log_batch(self.status["runId"], metrics=batch)
        except Exception as exc:
            self.fail("logging metrics", exc)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.last_time, self.last_tokens = time.monotonic(), state.num_input_tokens_seen

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        metrics = numeric(logs or {})
        if "loss" in metrics:  # a training step's log: the throughput since the previous one
            now = time.monotonic()
            tokens = state.num_input_tokens_seen - self.last_tokens
            metrics["tokens_per_s"] = round(tokens / max(now - self.last_time, 1e-9), 1)
            self.last_time, self.last_tokens = now, state.num_input_tokens_seen
        self.log_metrics(metrics, state.global_step)

    def finish(self, evaluation: EvaluationStatus, step: int) -> None:
        """The held-out evaluation as metrics, and the run FINISHED."""
        values = {f"evaluation.{key}": evaluation[key] for key in EVALUATION_METRICS}  # type: ignore[literal-required]
        self.log_metrics(numeric(values), step)
        self.end("FINISHED")

    def end(self, outcome: str) -> None:
        """FINISHED, KILLED (SIGTERM: a restarted pod resumes the run) or FAILED."""
        if not self.active:
            return
        assert self.client is not None and self.status is not None and self.status["runId"]
        try:
            self.client.set_terminated(self.status["runId"], outcome)
        except Exception as exc:
            self.fail("ending the run", exc)


def start_tracking(
    checkpoints: Path, setup: Setup, data: CheckedData, *, main: bool, env: Mapping[str, str] = os.environ
) -> Tracker:
    """The run of this training (resumed when ``checkpoints`` names one), with its params logged; a
    tracker that does nothing without a tracking URI or off rank 0, and one whose status holds the
    error when MLflow cannot be reached."""
    uri = env.get(MLFLOW_TRACKING_URI_ENV, "")
    if not uri or not main:
        return Tracker()
    for name, value in BOUNDED_REQUESTS.items():
        os.environ.setdefault(name, value)
    os.environ[QUIET_STDOUT] = "true"  # stdout carries the JSON lines: no "View run at" line there
    experiment = env.get(MLFLOW_EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    tracker = Tracker(status=tracking_status(uri, experiment))
    try:
        tracker.client, run_id = _open_run(uri, experiment, checkpoints / RUN_ID_FILE, env)
        tracker.status = tracking_status(uri, experiment, run_id)
        _log_params(tracker.client, run_id, run_params(setup, data))
    except Exception as exc:  # MLflow unreachable, refused, misconfigured: train untracked
        tracker.fail("starting the run", exc)
        return tracker
    log.info("tracking: MLflow run %s in experiment %r at %s", run_id, experiment, tracker.status["uri"])
    return tracker


def _open_run(uri: str, experiment: str, saved: Path, env: Mapping[str, str]) -> tuple[MlflowClient, str]:
    """The client and the run: the one a previous pod of this training started, or a new one."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if saved.is_file():
        run_id = saved.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        return client, run_id
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    name, image = env.get(WORKSPACE_NAME_ENV), env.get(ADAPTER_IMAGE_ENV)
    tags = {WORKSPACE_TAG: f"{env.get(WORKSPACE_NAMESPACE_ENV, 'default')}/{name}"} if name else {}
    if image:
        tags[ADAPTER_IMAGE_TAG] = image
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(run_id + "\n")
    return client, run_id


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    for chunk in _chunks([Param(k, v) for k, v in params.items()], PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
