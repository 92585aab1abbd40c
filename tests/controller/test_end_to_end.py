"""End to end on the local cluster: a tiny-llama tuning Workspace, data from an HTTP server on the node's
address, the pre-flight and the training Job (fetch, train, push to a registry on the node's address) in
real containers from the project's images on the real node, status showing progress, the held-out
evaluation (base vs adapter) and the digest, and the pushed adapter loading with PEFT."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time

import pytest
import yaml

from hack.servers import docker_config_json, write_docker_config
from tests.controller.conftest import (
    API,
    REPO_ROOT,
    apply,
    condition,
    dump,
    events,
    get_workspace,
    jobs,
    make_parquet,
    tuning_workspace,
    wait_status,
)
from tests.fixtures.cluster import kube_json, wait_for

STEPS = 60


def training_config(max_steps: int = STEPS, held_out: bool = False) -> dict:
    """The tiny preset's config; ``held_out``: a quarter of the rows held out, evaluated every 20 steps
    besides the base's evaluation before the first and the adapter's after the last."""
    evaluation = {"eval_strategy": "steps", "eval_steps": 20} if held_out else {}
    return {
        "training_config": {
            "ModelConfig": {"torch_dtype": "bfloat16", "local_files_only": True},
            "QuantizationConfig": {"load_in_4bit": False},
            "LoraConfig": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
            "TrainingArguments": {
                "output_dir": "/mnt/results",
                "save_strategy": "no",
                "per_device_train_batch_size": 2,
                "packing": True,  # steps long enough (a whole packed row) for progress to be seen moving
                "max_steps": max_steps,
                "logging_steps": 1,
                "learning_rate": 0.001,
                **evaluation,
            },
            "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 0.75 if held_out else 1},
        }
    }


def create_config(
    api, namespace: str, name: str = "tiny-config", max_steps: int = STEPS, held_out: bool = False
) -> str:
    body = {
        "metadata": {"name": name},
        "data": {"training_config.yaml": yaml.safe_dump(training_config(max_steps, held_out))},
    }
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
    return name


def create_push_secret(
    api, namespace: str, registry, password: str | None = None, name: str = "push-secret"
) -> str:
    config = docker_config_json(registry.host, registry.username, password or registry.password)
    body = {
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", body)
    return name


def printed_column(api, namespace: str, name: str, column: str) -> str:
    """A printer column as `kubectl get workspace` shows it (the server-side Table)."""
    m, url, headers, payload, post = api.param_serialize(
        "GET",
        f"{API}/namespaces/{namespace}/workspaces/{name}",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    resp = api.call_api(m, url, headers, payload, post)
    resp.read()
    table = json.loads(resp.data)
    names = [col["name"] for col in table["columnDefinitions"]]
    return str(table["rows"][0]["cells"][names.index(column)])


def kaito_tune(*args: str) -> subprocess.CompletedProcess:
    """The CLI, as a user runs it."""
    command = [sys.executable, "-m", "tuning_controller.cli", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


def watch_until_done(api, namespace: str, name: str, timeout: float) -> tuple[dict, list[dict]]:
    """Poll the Workspace until WorkspaceSucceeded is True or False; returns it and every distinct
    progress seen on the way."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws = get_workspace(api, namespace, name)
        progress = ((ws.get("status") or {}).get("tuning") or {}).get("progress")
        if progress and (not seen or seen[-1] != progress):
            seen.append(progress)
        if condition(ws, "WorkspaceSucceeded").get("status") in ("True", "False"):
            return ws, seen
        time.sleep(0.3)
    raise AssertionError(f"Workspace {name} did not finish in {timeout:.0f}s\n{dump(api, namespace, name)}")


def test_tuning_workspace_end_to_end(
    kube_client, namespace, node, node_registry, chart_operator, data_server, tiny_model, tmp_path
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=24)
    chart_operator(progressIntervalSeconds=1, resyncSeconds=5)
    create_push_secret(kube_client, namespace, node_registry)
    config = create_config(kube_client, namespace, held_out=True)
    image = node_registry.ref("adapters/e2e", "v1")
    ws = tuning_workspace(
        "e2e",
        namespace,
        urls=[f"{base_url}/train.parquet"],
        output={"image": image, "imagePushSecret": "push-secret"},
        config=config,
    )
    apply(kube_client, ws)
    final, seen = watch_until_done(kube_client, namespace, "e2e", timeout=420)

    status = final["status"]
    tuning = status["tuning"]
    assert condition(final, "WorkspaceSucceeded")["status"] == "True", dump(kube_client, namespace, "e2e")
    assert condition(final, "WorkspaceSucceeded")["reason"] == "WorkspaceSucceeded"
    assert condition(final, "JobStarted")["status"] == "True"
    assert condition(final, "ResourceReady")["status"] == "True"
    assert all(c["observedGeneration"] == final["metadata"]["generation"] for c in status["conditions"])
    assert tuning["phase"] == "Succeeded" and status["state"] == "Succeeded"
    assert tuning["data"]["ok"] and tuning["data"]["rows"] == 24 and len(tuning["data"]["sha256"]) == 64
    digest = tuning["adapter"]["digest"]
    assert tuning["adapter"]["image"] == image and digest.startswith("sha256:")
    assert tuning["startTime"] and tuning["completionTime"]
    # the weights came from the cluster's mirror, pinned by the pre-flight to the digest trained on
    model = tuning["model"]
    assert (
        model["source"] == "oci" and model["reference"] == f"{tiny_model.rsplit(':', 1)[0]}@{model['digest']}"
    )

    # Progress moved: several distinct steps reported while training, ending at the last step.
    steps = [p["step"] for p in seen]
    assert len(set(steps)) >= 3, seen
    assert steps == sorted(steps), seen
    last = tuning["progress"]
    assert last["step"] == last["totalSteps"] == STEPS and last["percent"] == 100
    assert last["loss"] is not None and last["updatedAt"]
    assert printed_column(kube_client, namespace, "e2e", "Progress") == "100"

    # Did the tuning help? The trainer measured the 6 held-out rows' loss (trained tokens only) of the
    # base model before the first step and of the adapter after the last; the controller kept it.
    evaluation = tuning["evaluation"]
    assert evaluation["heldOutRows"] == 6 and tuning["data"]["evalRows"] == 6
    assert evaluation["adapterLoss"] < evaluation["baseLoss"], evaluation
    for side in ("base", "adapter"):
        loss = evaluation[f"{side}Loss"]
        assert evaluation[f"{side}Perplexity"] == pytest.approx(math.exp(loss), rel=1e-3)
    assert re.fullmatch(r"\d+(\.\d+)?->\d+(\.\d+)?", evaluation["summary"]), evaluation
    assert printed_column(kube_client, namespace, "e2e", "Eval") == evaluation["summary"]
    succeeded = [e for e in events(kube_client, namespace, "e2e") if e["reason"] == "Succeeded"]
    assert succeeded and f"-> adapter {evaluation['adapterLoss']:.4g}" in succeeded[0]["message"], succeeded

    # The data Job ran first and the training Job after it; nothing else.
    created = {j["metadata"]["name"]: j for j in jobs(kube_client, namespace)}
    assert set(created) == {"e2e-data", "e2e"}
    assert (
        created["e2e-data"]["metadata"]["creationTimestamp"]
        <= created["e2e"]["metadata"]["creationTimestamp"]
    )
    pod = created["e2e"]["spec"]["template"]["spec"]
    secret_users = [
        c["name"]
        for c in pod["initContainers"] + pod["containers"]
        if any(m["name"] == "push-secret" for m in c.get("volumeMounts") or [])
    ]
    assert secret_users == ["push"]

    # Least privilege: the progress identity may patch this Workspace's status and nothing else.
    def allowed(verb: str, resource: str, name: str, subresource: str = "") -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:e2e-tuning",
                "resourceAttributes": {
                    "namespace": namespace,
                    "group": "kaito.sh" if resource == "workspaces" else "",
                    "resource": resource,
                    "subresource": subresource,
                    "verb": verb,
                    "name": name,
                },
            },
        }
        answer = kube_json(kube_client, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return answer["status"].get("allowed", False)

    assert allowed("patch", "workspaces", "e2e", "status")
    assert not allowed("patch", "workspaces", "other", "status")
    assert not allowed("patch", "workspaces", "e2e")  # not the spec
    assert not allowed("get", "secrets", "push-secret")

    # The pushed adapter, pulled by digest, loads with PEFT on the tiny base model.
    docker_config = write_docker_config(
        tmp_path / "docker.json", node_registry.host, node_registry.username, node_registry.password
    )
    pulled = tmp_path / "pulled"
    ref = f"{image.rsplit(':', 1)[0]}@{digest}"
    access = ("--docker-config", str(docker_config), "--plain-http")
    out = kaito_tune("pull", ref, str(pulled), *access)
    assert out.returncode == 0, out.stderr
    # ... and says how it was judged, without the Workspace
    out = kaito_tune("inspect", ref, *access)
    assert out.returncode == 0, out.stderr
    judged = json.loads(out.stdout)["tuning"]["evaluation"]
    # a null in the trainer's merge patch (no task checks) removes the key from status; the artifact keeps it
    assert {k: v for k, v in judged.items() if v is not None} == evaluation
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from presets.tiny import ensure_tiny_preset

    base = AutoModelForCausalLM.from_pretrained(ensure_tiny_preset())
    model = PeftModel.from_pretrained(base, str(pulled))
    assert any("lora_A" in n for n, _ in model.named_parameters())

    # A lost completion event (as after an API blip): the status still says Training and nothing else
    # will happen to the Workspace; the resync timer reconciles it from the Job within resyncSeconds.
    kube_json(
        kube_client,
        "PATCH",
        f"{API}/namespaces/{namespace}/workspaces/e2e/status",
        {"status": {"tuning": {"phase": "Training", "message": "as if the completion were lost"}}},
        content_type="application/merge-patch+json",
    )
    wait_status(
        kube_client,
        namespace,
        "e2e",
        lambda w: w["status"]["tuning"]["phase"] == "Succeeded",
        60,
        "the resync to find the completed Job",
    )

    # The finished Job deleted (a TTL, or by hand): the outcome stays, nothing is trained or pushed again.
    kube_json(
        kube_client,
        "DELETE",
        f"/apis/batch/v1/namespaces/{namespace}/jobs/e2e",
        {"propagationPolicy": "Background"},
    )
    wait_for(
        lambda: "e2e" not in {j["metadata"]["name"] for j in jobs(kube_client, namespace)}, 60, "the Job gone"
    )
    time.sleep(8)  # the operator has seen the deletion (events arrive within a second here)
    assert "e2e" not in {j["metadata"]["name"] for j in jobs(kube_client, namespace)}
    after = get_workspace(kube_client, namespace, "e2e")["status"]["tuning"]
    assert after["phase"] == "Succeeded" and after["adapter"]["digest"] == digest
    assert after["evaluation"] == evaluation  # the controller's writes never drop the trainer's

    # The user's ConfigMap deleted after training (its content was copied when the Job started): a
    # reconcile (here from a label change) keeps the outcome instead of turning the Workspace Invalid.
    kube_json(kube_client, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/{config}")
    kube_json(
        kube_client,
        "PATCH",
        f"{API}/namespaces/{namespace}/workspaces/e2e",
        {"metadata": {"labels": {"touched": "yes"}}},
        content_type="application/merge-patch+json",
    )
    time.sleep(8)
    after = get_workspace(kube_client, namespace, "e2e")
    assert after["status"]["tuning"]["phase"] == "Succeeded", after["status"]
    assert after["status"]["tuning"]["adapter"]["digest"] == digest
    assert condition(after, "WorkspaceSucceeded")["status"] == "True"
