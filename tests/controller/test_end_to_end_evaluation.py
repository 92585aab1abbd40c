"""End to end on the local cluster and the real node: did the tuning help? A tiny-llama tuning of the
code-word task (presets/tiny_task.py) with a quarter held out and its 24 held-out prompts as task checks,
tracked in a real MLflow server: the base's and the adapter's held-out loss and check scores reach the
status, `kaito-tune status`, the Succeeded Event and the pushed artifact (`kaito-tune inspect`), and the run
holds the params, the loss history, the evaluation and the pushed adapter's digest. And the gate, which
fails a Workspace whose adapter does not beat the base by min_improvement without pushing it, retrying or
training again (its held-out rows a fixed file, DatasetConfig.eval_files)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests
import yaml
from mlflow import MlflowClient

from contract.pod import MLFLOW_CREDENTIAL_ENVS
from hack.operators import RELEASE
from hack.servers import write_docker_config
from presets.tiny_task import write_parquet
from tests.controller.conftest import (
    apply,
    condition,
    dump,
    events,
    get_workspace,
    jobs,
    make_parquet,
    tuning_workspace,
)
from tests.controller.test_end_to_end import (
    STEPS,
    create_push_secret,
    kaito_tune,
    training_config,
    watch_until_done,
)
from tests.fixtures.cluster import kube_json, wait_for
from tests.fixtures.mlflow import MlflowServer, start_mlflow
from tests.trainer.synthetic import code_word_rows, held_out_checks
from tuning_controller.run_tags import ADAPTER_TAG

TRAIN_STEPS = 80  # batches of 8 of the 72 training rows: the demo's test answers 24/24 after 80 (QLoRA)


def create_evaluation_config(
    api, namespace: str, name: str, evaluation: dict, max_steps: int = STEPS, dataset: dict | None = None
) -> str:
    """The end-to-end config with a quarter held out (or ``dataset`` as its DatasetConfig) and
    ``evaluation`` as its EvaluationConfig."""
    doc = training_config(max_steps, held_out=True)
    doc["training_config"]["EvaluationConfig"] = evaluation
    if dataset is not None:
        doc["training_config"]["DatasetConfig"] = dataset
    body = {"metadata": {"name": name}, "data": {"training_config.yaml": yaml.safe_dump(doc)}}
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
    return name


def code_word_config(api, namespace: str, name: str, checks: list[dict]) -> str:
    """The demo's LoRA settings (examples/tuning/tiny-llama-demo.yaml) for TRAIN_STEPS, a quarter held out
    and evaluated before and after only, and ``checks``."""
    args = {
        "output_dir": "/mnt/results",
        "save_strategy": "no",
        "per_device_train_batch_size": 8,
        "max_steps": TRAIN_STEPS,
        "learning_rate": 0.003,
        "max_length": 128,
        "logging_steps": 5,
        "eval_strategy": "no",
    }
    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    doc = {
        "training_config": {
            "ModelConfig": {"torch_dtype": "bfloat16", "local_files_only": True},
            "QuantizationConfig": {"load_in_4bit": False},
            "LoraConfig": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": all_linear},
            "TrainingArguments": args,
            "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 0.75},
            "EvaluationConfig": {"checks": checks, "check_max_new_tokens": 4, "min_improvement": 0.5},
        }
    }
    body = {"metadata": {"name": name}, "data": {"training_config.yaml": yaml.safe_dump(doc)}}
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
    return name


@pytest.fixture
def node_mlflow(tmp_path, node) -> Iterator[MlflowServer]:
    """The tracking server on the node's address, so that pods (trainer and controller) reach it; it
    refuses every request without its one user's credentials."""
    server = start_mlflow(tmp_path / "mlflow", bind=node.ip, credentials=("tuner", "loopback-only"))
    try:
        yield server
    finally:
        server.stop()


def create_credentials(api, namespace: str, values: dict[str, str], name: str = "mlflow-auth") -> str:
    """A Secret of MLflow credentials, under MLflow's variable names."""
    body = {
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", body)
    return name


def inspect(image: str, digest: str, registry, tmp_path) -> dict:
    """`kaito-tune inspect` of the pushed adapter, as a user runs it."""
    docker_config = write_docker_config(
        tmp_path / "docker.json", registry.host, registry.username, registry.password
    )
    ref = f"{image.rsplit(':', 1)[0]}@{digest}"
    out = kaito_tune("inspect", ref, "--docker-config", str(docker_config), "--plain-http")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_adapter_beats_the_base_in_status_artifact_and_mlflow(
    kube_client,
    namespace,
    control_plane,
    node,
    node_registry,
    chart_operator,
    data_server,
    tiny_model,
    node_mlflow,
    tmp_path,
    monkeypatch,
):
    base_url, served = data_server
    rows = code_word_rows()  # 96: every phrasing of 24 cities; the pre-flight holds 24 out
    write_parquet(served / "code-words.parquet", rows)
    secret = create_credentials(kube_client, namespace, node_mlflow.env())
    release = f"{namespace}-operator"  # the controller reads the same-named Secret in its own namespace
    kube_json(kube_client, "POST", "/api/v1/namespaces", {"metadata": {"name": release}})
    create_credentials(kube_client, release, node_mlflow.env(), secret)
    mlflow = {"trackingUri": node_mlflow.uri, "experiment": "kaito-tune", "credentialsSecret": secret}
    chart_operator(progressIntervalSeconds=1, resyncSeconds=5, mlflow=mlflow)
    create_push_secret(kube_client, namespace, node_registry)
    checks = held_out_checks(rows)
    config = code_word_config(kube_client, namespace, "checks-config", checks)
    image = node_registry.ref("adapters/checks", "v1")
    output = {"image": image, "imagePushSecret": "push-secret"}
    urls = [f"{base_url}/code-words.parquet"]
    ws = tuning_workspace("checks", namespace, urls=urls, output=output, config=config)
    ws["metadata"]["annotations"] = {"kaito.sh/mlflow-experiment": "node-tests"}
    apply(kube_client, ws)
    final, _ = watch_until_done(kube_client, namespace, "checks", timeout=600)

    assert condition(final, "WorkspaceSucceeded")["status"] == "True", dump(kube_client, namespace, "checks")
    tuning = final["status"]["tuning"]
    evaluation, checks_score = tuning["evaluation"], tuning["evaluation"]["checks"]
    # did it help? On 24 rows it never saw, and on their 24 prompts answered greedily
    assert evaluation["heldOutRows"] == 24 and evaluation["adapterLoss"] < evaluation["baseLoss"], evaluation
    assert checks_score["total"] == 24 and checks_score["passed"] > checks_score["basePassed"], checks_score
    line = f"checks: adapter {checks_score['passed']}/24, base {checks_score['basePassed']}/24"
    succeeded = [e for e in events(kube_client, namespace, "checks") if e["reason"] == "Succeeded"]
    assert succeeded and line in succeeded[0]["message"], succeeded
    # the same numbers travel with the adapter
    adapter = tuning["adapter"]
    pushed = inspect(image, adapter["digest"], node_registry, tmp_path)["tuning"]["evaluation"]
    assert {k: pushed[k] for k in evaluation} == evaluation, (pushed, evaluation)

    # the run in MLflow: params, the loss history, the evaluation, and the pushed adapter's digest, which
    # the controller tags once the push is done
    tracking = tuning["tracking"]
    assert tracking["uri"] == node_mlflow.uri and tracking["experiment"] == "node-tests", tracking
    reference = f"{image.rsplit(':', 1)[0]}@{adapter['digest']}"

    def tracking_done() -> dict | None:
        now = get_workspace(kube_client, namespace, "checks")["status"]["tuning"]["tracking"]
        return now if now.get("adapter") or now.get("error") else None

    tagged = wait_for(tracking_done, 30, "status.tuning.tracking.adapter")
    assert tagged.get("error") is None and tagged["adapter"] == reference, tagged
    status = kaito_tune("status", "checks", "-n", namespace, "--kubeconfig", str(control_plane.kubeconfig))
    shown = f"{line}\nTracking: MLflow run {tracking['runId']}"
    assert shown in status.stdout and f"tagged with the adapter {reference}" in status.stdout, status.stdout
    # the server refuses a caller without credentials: the run proves the trainer's reached it, the tag the
    # controller's
    runs_get = f"{node_mlflow.uri}/api/2.0/mlflow/runs/get"
    anonymous = requests.get(runs_get, params={"run_id": tracking["runId"]}, timeout=10)
    assert anonymous.status_code == 401, anonymous.text
    for key, value in node_mlflow.env().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(node_mlflow.uri)
    run = client.get_run(tracking["runId"])
    assert run.info.run_name == "checks" and run.info.status == "FINISHED"
    assert run.data.tags["kaito.sh/workspace"] == f"{namespace}/checks"
    assert run.data.tags[ADAPTER_TAG] == reference
    assert run.data.params["preset"] == "tiny-llama" and run.data.params["method"] == "lora"
    assert run.data.params["data_sha256"] == tuning["data"]["sha256"]
    assert run.data.params["TrainingArguments.max_steps"] == str(TRAIN_STEPS)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(5, TRAIN_STEPS + 1, 5)), [m.step for m in history]
    assert history[-1].value < history[0].value
    for key in ("baseLoss", "adapterLoss", "basePerplexity", "adapterPerplexity", "heldOutRows"):
        assert run.data.metrics[f"evaluation.{key}"] == evaluation[key], key

    # the controller's copy comes from the Secret of its own namespace, and the Workspace's reached the
    # train container, and no other container of either Job
    deployment = kube_json(kube_client, "GET", f"/apis/apps/v1/namespaces/{release}/deployments/{RELEASE}")
    (controller,) = deployment["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in controller["env"] if "valueFrom" in e}
    assert refs == {k: {"name": secret, "key": k, "optional": True} for k in MLFLOW_CREDENTIAL_ENVS}, refs
    for job in jobs(kube_client, namespace):
        spec = job["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            expected = set(MLFLOW_CREDENTIAL_ENVS) if container["name"] == "train" else set()
            assert names & set(MLFLOW_CREDENTIAL_ENVS) == expected, (
                job["metadata"]["name"],
                container["name"],
            )


def test_the_gate_fails_a_workspace_whose_adapter_is_not_better_enough(
    kube_client, namespace, node, node_registry, chart_operator, data_server, tiny_model, tmp_path
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=24)
    sums = [
        {
            "messages": [
                {"role": "user", "content": f"what is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(24, 30)
    ]
    write_parquet(served / "eval-sums.parquet", sums)  # a fixed held-out file: DatasetConfig.eval_files
    chart_operator(progressIntervalSeconds=1, resyncSeconds=5)
    create_push_secret(kube_client, namespace, node_registry)
    # 4 steps lower the held-out loss, but nowhere near 99%
    gate = {"min_improvement": 0.99}
    dataset = {"shuffle_dataset": True, "eval_files": ["eval-*.parquet"]}
    config = create_evaluation_config(
        kube_client, namespace, "gate-config", gate, max_steps=4, dataset=dataset
    )
    image = node_registry.ref("adapters/gated", "v1")
    output = {"image": image, "imagePushSecret": "push-secret"}
    urls = [f"{base_url}/train.parquet", f"{base_url}/eval-sums.parquet"]
    apply(kube_client, tuning_workspace("gated", namespace, urls=urls, output=output, config=config))
    final, _ = watch_until_done(kube_client, namespace, "gated", timeout=480)

    assert condition(final, "WorkspaceSucceeded")["status"] == "False", dump(kube_client, namespace, "gated")
    tuning = final["status"]["tuning"]
    assert tuning["phase"] == "Failed" and final["status"]["state"] == "Failed"
    evaluation = tuning["evaluation"]  # the trainer measured both before the push refused
    assert evaluation["baseLoss"] is not None and evaluation["adapterLoss"] is not None
    # on the eval file's rows, and trained on the other file's
    assert tuning["data"]["evalFiles"] == ["eval-sums.parquet"] and evaluation["heldOutRows"] == 6, tuning
    assert tuning["data"]["trainRows"] == 24, tuning["data"]
    message = tuning["message"]
    assert message.startswith("push exited 3: not pushed: held-out loss: base "), message
    assert f"-> adapter {evaluation['adapterLoss']:.4g}" in message and "at least 99.0% lower" in message
    assert f"the adapter stays on claim gated-results, revision-{tuning['revision']}" in message
    assert "adapter" not in tuning  # no digest: nothing was pushed
    failed = [e for e in events(kube_client, namespace, "gated") if e["reason"] == "Failed"]
    assert failed and failed[0]["type"] == "Warning" and "not pushed" in failed[0]["message"]

    # the failure policy failed the Job on the first refusal: one pod, trained once, no retry
    (job,) = [j for j in jobs(kube_client, namespace) if j["metadata"]["name"] == "gated"]
    assert job["status"].get("failed") == 1 and not job["status"].get("succeeded"), job["status"]
    # and the registry never got the tag
    docker_config = write_docker_config(
        tmp_path / "docker.json", node_registry.host, node_registry.username, node_registry.password
    )
    out = kaito_tune("inspect", image, "--docker-config", str(docker_config), "--plain-http")
    assert out.returncode != 0 and "not found" in out.stderr.lower(), out.stdout + out.stderr
