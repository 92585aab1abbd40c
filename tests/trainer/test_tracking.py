"""MLflow tracking: a tiny training logs params, the loss of every logging step and the held-out evaluation
to a run named after the Workspace in a real ``mlflow server`` (tests/fixtures/mlflow.py), read back
through MLflow's client; an unreachable server costs a warning, never the training."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from contract.reports import ProgressEvent, evaluation_status, tracking_status
from hack.processes import free_port
from tests.trainer.conftest import run_trainer
from tests.trainer.synthetic import code_word_rows, kaito_config, write_jsonl
from tests.trainer.test_status_sink import Recorder
from trainer.status_sink import WorkspaceRef, WorkspaceStatusSink
from trainer.tracking import (
    ADAPTER_IMAGE_TAG,
    RUN_ID_FILE,
    WORKSPACE_TAG,
    numeric,
    run_params,
    start_tracking,
)

EXPERIMENT = "kaito-tune-tests"


def _config(tmp: Path, epochs: int) -> Path:
    return kaito_config(
        tmp / "config.yaml",
        learning_rate=0.003,
        num_train_epochs=epochs,
        max_length=128,
        logging_steps=2,
        DatasetConfig={"train_test_split": 0.75},
    )


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_server):
    """One run of the code-word task, tracked, as the train container of Workspace team-a/tuning-phi."""
    tmp = tmp_path_factory.mktemp("tracked")
    write_jsonl(tmp / "data" / "train.jsonl", code_word_rows())
    env = {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "KAITO_WORKSPACE_NAME": "tuning-phi",  # outside a cluster: no status sink, a warning
        "KAITO_WORKSPACE_NAMESPACE": "team-a",
        "KAITO_ADAPTER_IMAGE": "registry.example/adapters/phi:v1",
    }
    result = run_trainer(
        "--config", _config(tmp, 6), "--data", tmp / "data", "--output", tmp / "out", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, result, MlflowClient(mlflow_server.uri)


@pytest.mark.slow
def test_the_run_holds_params_metric_history_and_evaluation(tracked):
    tmp, result, client = tracked
    metadata = json.loads((tmp / "out" / "metadata.json").read_text())
    events = _events(result.stdout)
    tracking = events[0]["tracking"]
    assert events[0]["event"] == "start" and tracking["error"] is None, tracking
    assert events[-1]["event"] == "evaluated" and events[-1]["tracking"] == tracking
    run = client.get_run(tracking["runId"])
    assert run.info.run_name == "tuning-phi" and run.info.status == "FINISHED"
    assert run.data.tags[WORKSPACE_TAG] == "team-a/tuning-phi"
    assert run.data.tags[ADAPTER_IMAGE_TAG] == "registry.example/adapters/phi:v1"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT == tracking["experiment"]
    params = run.data.params
    assert params["preset"] == "tiny-llama" and params["method"] == metadata["method"]
    assert params["data_sha256"] == metadata["data_sha256"]["combined"]
    assert params["config_sha256"] == metadata["config_sha256"]
    assert params["TrainingArguments.learning_rate"] == "0.003"
    assert params["DatasetConfig.train_test_split"] == "0.75"
    # the loss of every logging step, in order, and the throughput between them
    history = client.get_metric_history(run.info.run_id, "loss")
    steps = [m.step for m in history]
    assert steps == list(range(2, metadata["metrics"]["global_step"] + 1, 2)), steps
    assert history[-1].value < history[0].value
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "tokens_per_s"))
    # the evaluation as status.tuning.evaluation shows it; the base's loss before the first step
    evaluation, metrics = metadata["evaluation"], run.data.metrics
    for key in ("baseLoss", "adapterLoss", "basePerplexity", "adapterPerplexity", "heldOutRows"):
        assert metrics[f"evaluation.{key}"] == evaluation[key], key
    assert evaluation["heldOutRows"] == 24
    base = client.get_metric_history(run.info.run_id, "base_loss")  # the Trainer's, before the first step
    assert [m.step for m in base] == [0] and round(base[0].value, 4) == evaluation["baseLoss"]
    assert metrics["eval_loss"] == pytest.approx(metadata["metrics"]["eval_loss"])
    assert not (tmp / "out" / "checkpoints").exists()  # the run id went with the checkpoints


@pytest.mark.slow
def test_an_unreachable_server_is_a_warning_and_training_goes_on(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", code_word_rows())
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens
    result = run_trainer(
        "--config",
        _config(tmp_path, 1),
        "--data",
        tmp_path / "data",
        "--output",
        tmp_path / "out",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    events = _events(result.stdout)
    error = events[0]["tracking"]["error"]
    assert error.startswith("starting the run: ") and events[-1]["tracking"]["error"] == error
    assert f"tracking: MLflow at {uri}: starting the run" in result.stderr


def _setup() -> tuple[SimpleNamespace, SimpleNamespace]:
    config = SimpleNamespace(
        sections={"LoraConfig": {"r": 8, "target_modules": ["q_proj"]}, "ModelConfig": {"x": "y"}},
        sha256=lambda: "c0ffee",
    )
    preset = SimpleNamespace(name="tiny-llama", source="/models/tiny", revision=None)
    setup = SimpleNamespace(config=config, preset=preset, method="qlora")
    return setup, SimpleNamespace(prepared=SimpleNamespace(sha256="da7a"))


def test_a_restarted_pod_resumes_its_run(tmp_path, mlflow_server):
    setup, data = _setup()
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "KAITO_WORKSPACE_NAME": "resumed"}
    first = start_tracking(tmp_path, setup, data, main=True, env=env)  # type: ignore[arg-type]
    assert first.status is not None and first.status["error"] is None
    run_id = first.status["runId"]
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run_id
    first.end("KILLED")  # SIGTERM
    again = start_tracking(tmp_path, setup, data, main=True, env=env)  # type: ignore[arg-type]
    assert again.status == first.status
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.params["LoraConfig.target_modules"] == '["q_proj"]'
    assert run.data.params["model_revision"] == "" and run.data.tags["mlflow.runName"] == "resumed"


def test_no_tracking_without_a_uri_or_off_rank_zero(tmp_path):
    setup, data = _setup()
    assert start_tracking(tmp_path, setup, data, main=True, env={}).status is None  # type: ignore[arg-type]
    off = start_tracking(tmp_path, setup, data, main=False, env={"MLFLOW_TRACKING_URI": "http://x"})  # type: ignore[arg-type]
    assert off.status is None and not off.active


def test_params_flatten_the_config_and_metrics_keep_finite_numbers():
    setup, data = _setup()
    assert run_params(setup, data) == {  # type: ignore[arg-type]
        "preset": "tiny-llama",
        "base_model": "/models/tiny",
        "model_revision": "",
        "method": "qlora",
        "data_sha256": "da7a",
        "config_sha256": "c0ffee",
        "LoraConfig.r": "8",
        "LoraConfig.target_modules": '["q_proj"]',
        "ModelConfig.x": "y",
    }
    logs = {"loss": 1.5, "epoch": 2, "flag": True, "nan": float("nan"), "inf": float("inf"), "s": "x"}
    assert numeric(logs) == {"loss": 1.5, "epoch": 2.0}


def test_the_status_shows_no_credentials_and_the_sink_patches_it():
    status = tracking_status("https://bot:s3cret@mlflow.example:5000/base", "exp", "r1")
    assert status == {
        "uri": "https://mlflow.example:5000/base",
        "experiment": "exp",
        "runId": "r1",
        "error": None,
    }

    api = Recorder()
    sink = WorkspaceStatusSink(api, WorkspaceRef("kaito.sh/v1beta1", "team-a", "ws"))  # type: ignore[arg-type]
    sink.emit(ProgressEvent("start", 0, 10, evaluation=evaluation_status(None, None, 0), tracking=status))
    assert api.calls[0][0][5]["status"]["tuning"]["tracking"] == status
