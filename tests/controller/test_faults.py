"""Faults on the local node: bad data stops before any GPU, a push failure fails the Workspace only
once the Job gives up, and volume output keeps the adapter (with a NodeClaim requested after the data
check, waited for, and released when the Job ends)."""

from __future__ import annotations

import time

from tests.controller.conftest import (
    apply,
    claim_path,
    condition,
    dump,
    events,
    get_workspace,
    jobs,
    make_parquet,
    nodeclaims_of,
    tuning_workspace,
    wait_status,
)
from tests.controller.test_end_to_end import create_config, create_push_secret, watch_until_done
from tests.fixtures.cluster import kube_json, wait_for

SKU = "Standard_NC24ads_A100_v4"


def test_bad_data_fails_after_the_data_check_with_row_numbers(
    kube_client, namespace, node, run_operator, data_server, nodeclaim_crd
):
    base_url, served = data_server
    make_parquet(served / "bad.parquet", rows=12, bad_rows=(3, 7))
    run_operator(KAITO_TUNE_AUTO_PROVISIONING="true")
    ws = tuning_workspace("bad-data", namespace, urls=[f"{base_url}/bad.parquet"], instance_type=SKU)
    apply(kube_client, ws)
    final = wait_status(
        kube_client,
        namespace,
        "bad-data",
        lambda w: condition(w, "WorkspaceSucceeded").get("status") == "False",
        180,
        "WorkspaceSucceeded=False after the data check",
    )
    cond = condition(final, "WorkspaceSucceeded")
    assert cond["reason"] == "DataInvalid"
    assert "row 3 (bad.parquet)" in cond["message"] and "row 7 (bad.parquet)" in cond["message"]
    assert "skip_bad_rows" in cond["message"]  # what to do about it
    data = final["status"]["tuning"]["data"]
    assert data["badRows"] == 2 and [r["row"] for r in data["firstBadRows"]] == [3, 7]
    assert [j["metadata"]["name"] for j in jobs(kube_client, namespace)] == ["bad-data-data"]
    assert nodeclaims_of(kube_client, nodeclaim_crd, namespace, "bad-data") == []


def test_volume_output_keeps_the_adapter_and_the_node_is_released(
    kube_client, namespace, node, run_operator, data_server, nodeclaim_crd
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=8)
    run_operator(KAITO_TUNE_AUTO_PROVISIONING="true")
    config = create_config(kube_client, namespace, max_steps=4)
    claim_body = {
        "metadata": {"name": "adapter-out"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    kube_json(kube_client, "POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim_body)
    ws = tuning_workspace(
        "to-volume",
        namespace,
        urls=[f"{base_url}/train.parquet"],
        output={"volumeSource": {"persistentVolumeClaim": {"claimName": "adapter-out"}}},
        config=config,
        instance_type=SKU,
    )
    apply(kube_client, ws)
    # The NodeClaim comes only after the data check; the test plays Karpenter and makes it Ready.
    claims = wait_for(
        lambda: nodeclaims_of(kube_client, nodeclaim_crd, namespace, "to-volume"), 180, "a NodeClaim"
    )
    assert [j["metadata"]["name"] for j in jobs(kube_client, namespace)] == ["to-volume-data"]
    # The status write that records the data check may land a moment after the NodeClaim.
    current = wait_status(
        kube_client,
        namespace,
        "to-volume",
        lambda w: "data" in ((w.get("status") or {}).get("tuning") or {}),
        30,
        "the data check in status.tuning",
    )
    assert current["status"]["tuning"]["data"]["ok"] is True
    assert current["status"]["tuning"]["phase"] == "WaitingForNodes"
    claim = claims[0]
    assert claim["spec"]["requirements"][0] == {
        "key": "node.kubernetes.io/instance-type",
        "operator": "In",
        "values": [SKU],
    }
    ready = {
        "status": {
            "nodeName": node.name,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    kube_json(
        kube_client,
        "PATCH",
        f"{nodeclaim_crd}/{claim['metadata']['name']}/status",
        ready,
        content_type="application/merge-patch+json",
    )
    final, _ = watch_until_done(kube_client, namespace, "to-volume", timeout=300)
    assert condition(final, "WorkspaceSucceeded")["status"] == "True", dump(
        kube_client, namespace, "to-volume"
    )
    assert condition(final, "NodeClaimReady")["status"] == "True"
    out = claim_path(kube_client, namespace, "adapter-out")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    job = next(j for j in jobs(kube_client, namespace) if j["metadata"]["name"] == "to-volume")
    assert [c["name"] for c in job["spec"]["template"]["spec"]["containers"]] == ["train"]
    wait_for(
        lambda: not nodeclaims_of(kube_client, nodeclaim_crd, namespace, "to-volume"),
        30,
        "the NodeClaim released",
    )
    expected = {"NodeClaimCreated", "NodeClaimReleased", "Succeeded"}  # Succeeded follows its status write
    wait_for(
        lambda: expected <= {e["reason"] for e in events(kube_client, namespace, "to-volume")},
        15,
        f"the Events {sorted(expected)}",
    )


def test_deleting_a_workspace_releases_its_nodeclaim(
    kube_client, namespace, node, run_operator, data_server, nodeclaim_crd
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=8)
    run_operator(KAITO_TUNE_AUTO_PROVISIONING="true")
    ws = tuning_workspace("short-lived", namespace, urls=[f"{base_url}/train.parquet"], instance_type=SKU)
    apply(kube_client, ws)
    (claim,) = wait_for(
        lambda: nodeclaims_of(kube_client, nodeclaim_crd, namespace, "short-lived"), 180, "a NodeClaim"
    )
    # one more of its claims, as a count of 2 before an edit to 1 would have left: found by label, released
    meta = claim["metadata"]
    extra = {
        "apiVersion": claim["apiVersion"],
        "kind": "NodeClaim",
        "metadata": {
            "name": f"{meta['name']}-1",
            "labels": meta["labels"],
            "annotations": meta["annotations"],
        },
        "spec": claim["spec"],
    }
    kube_json(kube_client, "POST", nodeclaim_crd, extra)
    path = f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces/short-lived"
    kube_json(kube_client, "DELETE", path)

    def gone() -> bool:
        try:
            kube_json(kube_client, "GET", path)
        except Exception:
            return True
        return False

    wait_for(gone, 60, "the Workspace deleted (the controller's finalizer done)")
    assert nodeclaims_of(kube_client, nodeclaim_crd, namespace, "short-lived") == []


def test_push_failure_fails_the_workspace_only_when_the_job_gives_up(
    kube_client, namespace, node, node_registry, run_operator, data_server
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=8)
    run_operator(KAITO_TUNE_BACKOFF_LIMIT="1")
    create_push_secret(kube_client, namespace, node_registry, password="wrong-password")
    config = create_config(kube_client, namespace, max_steps=4)
    ws = tuning_workspace(
        "bad-push",
        namespace,
        urls=[f"{base_url}/train.parquet"],
        output={"image": node_registry.ref("adapters/denied", "v1"), "imagePushSecret": "push-secret"},
        config=config,
    )
    apply(kube_client, ws)
    # While the Job still retries after the first failed pod, the Workspace has not failed.
    retrying_seen = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = next((j for j in jobs(kube_client, namespace) if j["metadata"]["name"] == "bad-push"), None)
        current = get_workspace(kube_client, namespace, "bad-push")
        job_failed = job and any(
            c["type"] == "Failed" and c["status"] == "True"
            for c in job.get("status", {}).get("conditions") or []
        )
        if job and job.get("status", {}).get("failed") and not job_failed:
            assert condition(current, "WorkspaceSucceeded").get("status") != "False", dump(
                kube_client, namespace, "bad-push"
            )
            retrying_seen = True
        if condition(current, "WorkspaceSucceeded").get("status") == "False":
            break
        time.sleep(0.3)
    final = get_workspace(kube_client, namespace, "bad-push")
    cond = condition(final, "WorkspaceSucceeded")
    assert cond.get("status") == "False", dump(kube_client, namespace, "bad-push")
    assert cond["reason"] == "WorkspaceFailed"
    assert "push exited 1" in cond["message"] and "401" in cond["message"], cond["message"]
    assert "wrong-password" not in str(final)  # no secret value in status
    assert final["status"]["tuning"]["phase"] == "Failed" and "adapter" not in final["status"]["tuning"]
    assert retrying_seen, "the Job never showed a retry before failing"
