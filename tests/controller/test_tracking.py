"""Experiment tracking on the real node: with the controller's MLflow setting, the train container of a
tiny-llama tuning logs its run to a real ``mlflow server`` on the node's address (where pods reach it),
named after the Workspace; the run id is in status.tuning.tracking, and the run read back through
MLflow's client holds the params, the loss history and the evaluation the status shows. The credentials
Secret reaches the train container only."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from contract.pod import MLFLOW_CREDENTIAL_ENVS
from tests.controller.conftest import apply, condition, dump, jobs, make_parquet, tuning_workspace
from tests.controller.test_end_to_end import STEPS, create_config, create_push_secret, watch_until_done
from tests.fixtures.cluster import kube_json
from tests.fixtures.mlflow import MlflowServer, start_mlflow

pytestmark = pytest.mark.slow


@pytest.fixture
def node_mlflow(tmp_path, node) -> Iterator[MlflowServer]:
    """The tracking server on the node's address, so that pods reach it."""
    server = start_mlflow(tmp_path / "mlflow", bind=node.ip)
    try:
        yield server
    finally:
        server.stop()


def create_credentials(api, namespace: str, name: str = "mlflow-auth") -> str:
    """MLflow credentials (the server takes none: the test checks where they reach, not auth)."""
    values = {"MLFLOW_TRACKING_USERNAME": "tuner", "MLFLOW_TRACKING_PASSWORD": "loopback-only"}
    body = {
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", body)
    return name


def test_a_tracked_tuning_logs_its_run_to_mlflow(
    kube_client, namespace, node_registry, run_operator, data_server, node_mlflow
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=24)
    secret = create_credentials(kube_client, namespace)
    run_operator(
        KAITO_TUNE_PROGRESS_INTERVAL_SECONDS="1",
        KAITO_TUNE_RESYNC_SECONDS="5",
        KAITO_TUNE_MLFLOW_TRACKING_URI=node_mlflow.uri,
        KAITO_TUNE_MLFLOW_CREDENTIALS_SECRET=secret,
    )
    create_push_secret(kube_client, namespace, node_registry)
    ws = tuning_workspace(
        "tracked",
        namespace,
        urls=[f"{base_url}/train.parquet"],
        output={"image": node_registry.ref("adapters/tracked", "v1"), "imagePushSecret": "push-secret"},
        config=create_config(kube_client, namespace, held_out=True),
    )
    ws["metadata"]["annotations"] = {"kaito.sh/mlflow-experiment": "node-tests"}
    apply(kube_client, ws)
    final, _ = watch_until_done(kube_client, namespace, "tracked", timeout=420)
    assert condition(final, "WorkspaceSucceeded")["status"] == "True", dump(kube_client, namespace, "tracked")
    tuning = final["status"]["tuning"]
    tracking = tuning["tracking"]
    assert tracking["uri"] == node_mlflow.uri and tracking["experiment"] == "node-tests", tracking
    assert tracking.get("error") is None and tracking["runId"], tracking  # a null is no key in status

    client = MlflowClient(node_mlflow.uri)
    run = client.get_run(tracking["runId"])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.tags["kaito.sh/workspace"] == f"{namespace}/tracked"
    # where the push sent the adapter; its digest is in status (the push ran after the trainer exited)
    assert run.data.tags["kaito.sh/adapter-image"] == tuning["adapter"]["image"]
    assert run.data.params["preset"] == "tiny-llama" and run.data.params["method"] == "lora"
    assert run.data.params["data_sha256"] == tuning["data"]["sha256"]
    assert run.data.params["TrainingArguments.max_steps"] == str(STEPS)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, STEPS + 1))
    evaluation = tuning["evaluation"]
    for key in ("baseLoss", "adapterLoss", "basePerplexity", "adapterPerplexity", "heldOutRows"):
        assert run.data.metrics[f"evaluation.{key}"] == evaluation[key], key

    # the credentials reached the train container, and no other container of either Job
    for job in jobs(kube_client, namespace):
        spec = job["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            expected = set(MLFLOW_CREDENTIAL_ENVS) if container["name"] == "train" else set()
            assert names & set(MLFLOW_CREDENTIAL_ENVS) == expected, (
                job["metadata"]["name"],
                container["name"],
            )
