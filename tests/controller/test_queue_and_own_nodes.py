"""Kueue-friendly Jobs and own GPU nodes chosen by labelSelector (no auto-provisioning)."""

from __future__ import annotations

from tests.controller.conftest import (
    apply,
    condition,
    jobs,
    make_parquet,
    tuning_workspace,
    wait_status,
)
from tests.controller.test_end_to_end import create_config, watch_until_done
from tests.fixtures.cluster import kube_json, wait_for


def test_queue_label_creates_suspended_jobs(kube_client, namespace, run_operator):
    run_operator()
    apply(kube_client, tuning_workspace("queued", namespace, labels={"kueue.x-k8s.io/queue-name": "gpus"}))
    ws = wait_status(
        kube_client,
        namespace,
        "queued",
        lambda w: "suspended" in ((w.get("status") or {}).get("tuning") or {}).get("message", ""),
        60,
        "status saying the data Job waits for its queue",
    )
    assert ws["status"]["tuning"]["phase"] == "CheckingData"
    (job,) = jobs(kube_client, namespace)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"


def test_own_node_found_by_label_once_it_exists(kube_client, namespace, node, run_operator, data_server):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=8)
    run_operator(KAITO_TUNE_NODE_RETRY_SECONDS="2")
    config = create_config(kube_client, namespace, max_steps=2)
    label = f"kaito-test/{namespace}"
    ws = tuning_workspace(
        "own-node",
        namespace,
        urls=[f"{base_url}/train.parquet"],
        output={"volumeSource": {"emptyDir": {}}},
        config=config,
    )
    ws["resource"]["labelSelector"] = {"matchLabels": {label: "yes"}}
    apply(kube_client, ws)
    waiting = wait_status(
        kube_client,
        namespace,
        "own-node",
        lambda w: ((w.get("status") or {}).get("tuning") or {}).get("phase") == "WaitingForNodes",
        180,
        "WaitingForNodes after the data check",
    )
    cond = condition(waiting, "ResourceReady")
    assert cond["status"] == "False" and cond["reason"] == "NoMatchingNodes"
    assert "no node matches resource.labelSelector" in cond["message"]
    assert node.name in cond["message"]  # what exists is listed
    assert [j["metadata"]["name"] for j in jobs(kube_client, namespace)] == ["own-node-data"]
    node_path = f"/api/v1/nodes/{node.name}"
    patch = {"metadata": {"labels": {label: "yes"}}}
    kube_json(kube_client, "PATCH", node_path, patch, content_type="application/merge-patch+json")
    try:
        wait_for(lambda: len(jobs(kube_client, namespace)) == 2, 60, "the training Job on the labelled node")
        final, _ = watch_until_done(kube_client, namespace, "own-node", timeout=240)
        assert condition(final, "WorkspaceSucceeded")["status"] == "True"
        assert final["status"]["tuning"]["message"] == "adapter written to the output volume"
    finally:
        patch = {"metadata": {"labels": {label: None}}}
        kube_json(kube_client, "PATCH", node_path, patch, content_type="application/merge-patch+json")
