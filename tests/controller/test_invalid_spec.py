"""Invalid training config: a condition with the message and no Job at all (no pod is ever created)."""

from __future__ import annotations

import json

import yaml

from tests.controller.conftest import apply, condition, events, jobs, tuning_workspace, wait_status
from tests.fixtures.cluster import kube_json, wait_for


def test_invalid_training_config_sets_condition_and_creates_no_job(kube_client, namespace, run_operator):
    operator = run_operator()
    bad = {
        "training_config": {
            "LoraConfig": {"r": 8, "lora_alpah": 16},
            "TrainingArguments": {"max_steps": "ten"},
        }
    }
    kube_json(
        kube_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "my-config"}, "data": {"training_config.yaml": yaml.safe_dump(bad)}},
    )
    apply(kube_client, tuning_workspace("bad-config", namespace, config="my-config"))
    ws = wait_status(
        kube_client,
        namespace,
        "bad-config",
        lambda w: condition(w, "WorkspaceSucceeded").get("status") == "False",
        60,
        "WorkspaceSucceeded=False",
    )
    cond = condition(ws, "WorkspaceSucceeded")
    assert cond["reason"] == "InvalidSpec"
    assert "lora_alpah" in cond["message"] and "lora_alpha" in cond["message"]  # the typo and the fix
    assert "max_steps" in cond["message"]
    assert cond["observedGeneration"] == ws["metadata"]["generation"]
    assert ws["status"]["tuning"]["phase"] == "Invalid"
    assert jobs(kube_client, namespace) == []
    # the Event follows the status write that changed the phase
    wait_for(
        lambda: "Invalid" in {e["reason"] for e in events(kube_client, namespace, "bad-config")},
        15,
        "the Invalid Event",
    )
    # Operations: the reconcile is counted by result, and every log line is a JSON object.
    assert 'kaito_tune_reconciles_total{kind="tuning",result="invalid"}' in operator.metrics()
    assert 'kaito_tune_workspaces{kind="tuning",state="Failed"}' in operator.metrics()
    lines = [line for line in operator.log().splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)
    assert any(json.loads(line).get("object", {}).get("name") == "bad-config" for line in lines)


def test_missing_config_map_is_named(kube_client, namespace, run_operator):
    run_operator()
    apply(kube_client, tuning_workspace("no-config", namespace, config="absent"))
    ws = wait_status(
        kube_client,
        namespace,
        "no-config",
        lambda w: condition(w, "WorkspaceSucceeded").get("status") == "False",
        60,
        "WorkspaceSucceeded=False",
    )
    assert "ConfigMap 'absent' not found" in condition(ws, "WorkspaceSucceeded")["message"]
    assert jobs(kube_client, namespace) == []
