"""Model weights on the local node: a Workspace's presetOptions.image on an authenticated registry. A
missing tag, a wrong digest and a refused password each fail the CPU pre-flight with the reference and
the Secret named, and no GPU node is ever requested; the good reference is pinned to its digest in
status.tuning.model and the training fetches exactly that."""

from __future__ import annotations

import base64

from artifacts.models import push_model
from artifacts.registry import ClientOptions
from hack.servers import write_docker_config
from presets.tiny import ensure_tiny_preset
from tests.controller.conftest import (
    apply,
    condition,
    jobs,
    make_parquet,
    nodeclaims_of,
    tuning_workspace,
    wait_status,
)
from tests.fixtures.cluster import kube_json

SKU = "Standard_NC24ads_A100_v4"


def dockerconfig_secret(kube_client, namespace: str, name: str, config_path) -> None:
    secret = {
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config_path.read_bytes()).decode()},
    }
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/secrets", secret)


def test_unusable_model_references_fail_the_preflight_before_any_gpu(
    kube_client, namespace, node_registry, run_operator, data_server, nodeclaim_crd, tmp_path
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=8)
    good = write_docker_config(
        tmp_path / "good.json", node_registry.host, node_registry.username, node_registry.password
    )
    bad = write_docker_config(tmp_path / "bad.json", node_registry.host, node_registry.username, "wrong")
    model = node_registry.ref("models/tiny-llama", "v1")
    pushed = push_model(
        str(ensure_tiny_preset()),
        model,
        options=ClientOptions(docker_config=good, plain_http=True),
        preset="tiny-llama",
    )
    dockerconfig_secret(kube_client, namespace, "model-login", good)
    dockerconfig_secret(kube_client, namespace, "model-wrong", bad)
    run_operator(KAITO_TUNE_AUTO_PROVISIONING="true")
    repository = model.rsplit(":", 1)[0]
    cases = {
        "missing-tag": (f"{repository}:no-such-tag", "model-login", "no-such-tag"),
        "wrong-digest": (f"{repository}@sha256:{'0' * 64}", "model-login", "0" * 64),
        "bad-password": (model, "model-wrong", "model-wrong"),
    }
    for name, (image, secret, _) in cases.items():
        ws = tuning_workspace(name, namespace, urls=[f"{base_url}/train.parquet"], instance_type=SKU)
        ws["tuning"]["preset"]["presetOptions"] = {"image": image, "imagePullSecrets": [secret]}
        apply(kube_client, ws)
    for name, (image, secret, expected) in cases.items():
        final = wait_status(
            kube_client,
            namespace,
            name,
            lambda w: condition(w, "WorkspaceSucceeded").get("status") == "False",
            240,
            f"{name}: WorkspaceSucceeded=False after the pre-flight",
        )
        cond = condition(final, "WorkspaceSucceeded")
        assert cond["reason"] == "ModelUnavailable", cond
        assert "fetching the model failed" in cond["message"] and expected in cond["message"], cond
        assert f"Secret {secret}" in cond["message"] and image in cond["message"]
        assert nodeclaims_of(kube_client, nodeclaim_crd, namespace, name) == []
    names = sorted(j["metadata"]["name"] for j in jobs(kube_client, namespace))
    assert names == sorted(f"{n}-data" for n in cases)  # no training Job, no GPU node
    assert pushed.digest.startswith("sha256:")
