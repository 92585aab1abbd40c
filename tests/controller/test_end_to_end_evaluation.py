"""End to end on the local cluster and the real node: the training config's EvaluationConfig. Task checks
answered by the base and the adapter in the real train container, their score in the status, `kaito-tune
status`, the Succeeded Event and the pushed artifact; and the gate, which fails a Workspace whose adapter
does not beat the base by min_improvement without pushing it, retrying or training again."""

from __future__ import annotations

import base64
import json

import yaml

from tests.controller.conftest import (
    apply,
    condition,
    dump,
    events,
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
from tests.fixtures.cluster import kube_json

# make_parquet's rows are "what is i plus i?" -> "i plus i is 2i.": checks of the answer's form, which the
# tiny base (random weights) cannot produce; the end-to-end test's few steps do not teach it either.
CHECKS = [
    *({"prompt": f"what is {i} plus {i}?", "regex": rf"^{i} plus {i} is"} for i in range(12)),
    *({"prompt": f"what is {i} plus {i}?", "contains": "plus"} for i in range(12, 24)),
]


def create_evaluation_config(api, namespace: str, name: str, evaluation: dict, max_steps: int = STEPS) -> str:
    """The end-to-end config with a quarter held out and ``evaluation`` as its EvaluationConfig."""
    doc = training_config(max_steps, held_out=True)
    doc["training_config"]["EvaluationConfig"] = evaluation
    body = {"metadata": {"name": name}, "data": {"training_config.yaml": yaml.safe_dump(doc)}}
    kube_json(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
    return name


def test_task_checks_end_to_end(
    kube_client,
    namespace,
    control_plane,
    node,
    node_registry,
    chart_operator,
    data_server,
    tiny_model,
    tmp_path,
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=24)
    chart_operator(progressIntervalSeconds=1, resyncSeconds=5)
    create_push_secret(kube_client, namespace, node_registry)
    evaluation = {"checks": CHECKS, "check_max_new_tokens": 8, "min_improvement": 0.0}
    config = create_evaluation_config(kube_client, namespace, "checks-config", evaluation)
    image = node_registry.ref("adapters/checks", "v1")
    output = {"image": image, "imagePushSecret": "push-secret"}
    urls = [f"{base_url}/train.parquet"]
    apply(kube_client, tuning_workspace("checks", namespace, urls=urls, output=output, config=config))
    final, _ = watch_until_done(kube_client, namespace, "checks", timeout=480)

    assert condition(final, "WorkspaceSucceeded")["status"] == "True", dump(kube_client, namespace, "checks")
    tuning = final["status"]["tuning"]
    checks = tuning["evaluation"]["checks"]
    # The real container answered and scored all 24. That the adapter beats the base is shown where the
    # training is long enough to learn answers (tests/trainer/test_training.py: the held-out code-word
    # prompts); these few steps on the sums (seen: 0/24 for both) test the plumbing.
    assert checks["total"] == 24 and 0 <= checks["basePassed"] <= 24 and 0 <= checks["passed"] <= 24, checks
    line = f"checks: adapter {checks['passed']}/24, base {checks['basePassed']}/24"
    succeeded = [e for e in events(kube_client, namespace, "checks") if e["reason"] == "Succeeded"]
    assert succeeded and line in succeeded[0]["message"], succeeded
    status = kaito_tune("status", "checks", "-n", namespace, "--kubeconfig", str(control_plane.kubeconfig))
    assert line in status.stdout, status.stdout + status.stderr

    docker_config = tmp_path / "docker.json"
    auth = base64.b64encode(f"{node_registry.username}:{node_registry.password}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {node_registry.host: {"auth": auth}}}))
    ref = f"{image.rsplit(':', 1)[0]}@{tuning['adapter']['digest']}"
    out = kaito_tune("inspect", ref, "--docker-config", str(docker_config), "--plain-http")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tuning"]["evaluation"]["checks"] == checks


def test_the_gate_fails_a_workspace_whose_adapter_is_not_better_enough(
    kube_client, namespace, node, node_registry, chart_operator, data_server, tiny_model, tmp_path
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=24)
    chart_operator(progressIntervalSeconds=1, resyncSeconds=5)
    create_push_secret(kube_client, namespace, node_registry)
    # 4 steps lower the held-out loss, but nowhere near 99%
    gate = {"min_improvement": 0.99}
    config = create_evaluation_config(kube_client, namespace, "gate-config", gate, max_steps=4)
    image = node_registry.ref("adapters/gated", "v1")
    output = {"image": image, "imagePushSecret": "push-secret"}
    urls = [f"{base_url}/train.parquet"]
    apply(kube_client, tuning_workspace("gated", namespace, urls=urls, output=output, config=config))
    final, _ = watch_until_done(kube_client, namespace, "gated", timeout=480)

    assert condition(final, "WorkspaceSucceeded")["status"] == "False", dump(kube_client, namespace, "gated")
    tuning = final["status"]["tuning"]
    assert tuning["phase"] == "Failed" and final["status"]["state"] == "Failed"
    evaluation = tuning["evaluation"]  # the trainer measured both before the push refused
    assert evaluation["baseLoss"] is not None and evaluation["adapterLoss"] is not None
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
    docker_config = tmp_path / "docker.json"
    auth = base64.b64encode(f"{node_registry.username}:{node_registry.password}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {node_registry.host: {"auth": auth}}}))
    out = kaito_tune("inspect", image, "--docker-config", str(docker_config), "--plain-http")
    assert out.returncode != 0 and "not found" in out.stderr.lower(), out.stdout + out.stderr
