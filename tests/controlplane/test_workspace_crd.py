"""The Workspace CRD on the real API server: it is accepted (structural schema, CEL within the cost
budget), and the server itself rejects Workspaces that break a CEL rule, with the rule's message."""

from __future__ import annotations

import copy

import pytest

from tests.fixtures.cluster import KubeError, kube_json

TUNING_WORKSPACE = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "Workspace",
    "metadata": {"name": "tune-phi-3"},
    "resource": {
        "instanceType": "Standard_NC24ads_A100_v4",
        "labelSelector": {"matchLabels": {"apps": "phi-3"}},
    },
    "tuning": {
        "preset": {"name": "phi-3-mini-4k-instruct"},
        "method": "qlora",
        "input": {"urls": ["https://example.com/data/train.parquet"]},
        "output": {"image": "registry.example.com/adapters/phi-3:0.0.1", "imagePushSecret": "push-secret"},
    },
}


def rule_message(crd: dict, location: list[str], rule_part: str) -> str:
    """The message of the CEL rule at `location` (property path) whose expression contains `rule_part`:
    read from the CRD so the test follows the rule's wording wherever it is defined."""
    schema = crd["spec"]["versions"][-1]["schema"]["openAPIV3Schema"]
    for prop in location:
        schema = schema["properties"][prop]
    rules = [r for r in schema.get("x-kubernetes-validations") or [] if rule_part in r["rule"]]
    assert len(rules) == 1, f"expected one CEL rule with {rule_part!r} at {location}, got {rules}"
    return rules[0]["message"]


def workspaces(namespace: str, version: str = "v1beta1") -> str:
    return f"/apis/kaito.sh/{version}/namespaces/{namespace}/workspaces"


def rejection(call) -> KubeError:
    with pytest.raises(KubeError) as info:
        call()
    return info.value


def test_crd_is_established_with_both_versions(workspace_crd, kube_client):
    got = kube_json(
        kube_client,
        "GET",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{workspace_crd['metadata']['name']}",
    )
    assert [v["name"] for v in got["spec"]["versions"]] == [
        v["name"] for v in workspace_crd["spec"]["versions"]
    ]
    assert got["status"]["acceptedNames"]["shortNames"] == workspace_crd["spec"]["names"]["shortNames"]


def test_server_rejects_a_workspace_with_both_inference_and_tuning(workspace_crd, kube_client, namespace):
    body = copy.deepcopy(TUNING_WORKSPACE)
    body["inference"] = {"preset": {"name": "phi-3-mini-4k-instruct"}}

    err = rejection(lambda: kube_json(kube_client, "POST", workspaces(namespace), body))

    assert err.status == 422
    assert rule_message(workspace_crd, [], "!= has(self.tuning)") in err.body["message"]


def test_server_rejects_output_image_without_push_secret(workspace_crd, kube_client, namespace):
    body = copy.deepcopy(TUNING_WORKSPACE)
    del body["tuning"]["output"]["imagePushSecret"]

    err = rejection(
        lambda: kube_json(
            kube_client, "POST", workspaces(namespace, "v1alpha1"), body | {"apiVersion": "kaito.sh/v1alpha1"}
        )
    )

    assert err.status == 422
    assert rule_message(workspace_crd, ["tuning", "output"], "imagePushSecret") in err.body["message"]


def test_server_enforces_immutability_with_old_self(workspace_crd, kube_client, namespace):
    created = kube_json(kube_client, "POST", workspaces(namespace), TUNING_WORKSPACE)
    changed = copy.deepcopy(created)
    changed["tuning"]["preset"]["name"] = "phi-4"
    path = f"{workspaces(namespace)}/{created['metadata']['name']}"

    err = rejection(lambda: kube_json(kube_client, "PUT", path, changed))

    assert err.status == 422
    assert rule_message(workspace_crd, ["tuning"], "oldSelf.preset") in err.body["message"]


def test_status_is_a_subresource(workspace_crd, kube_client, namespace):
    created = kube_json(kube_client, "POST", workspaces(namespace), TUNING_WORKSPACE)
    path = f"{workspaces(namespace)}/{created['metadata']['name']}"
    condition = {
        "type": "JobStarted",
        "status": "True",
        "reason": "JobCreated",
        "message": "tuning Job created",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    kube_json(
        kube_client,
        "PATCH",
        f"{path}/status",
        {"status": {"conditions": [condition]}},
        "application/merge-patch+json",
    )
    # A write to the main resource cannot change status.
    kube_json(kube_client, "PATCH", path, {"status": {"conditions": []}}, "application/merge-patch+json")

    got = kube_json(kube_client, "GET", path)

    assert [c["type"] for c in got["status"]["conditions"]] == ["JobStarted"]
    assert got["metadata"]["generation"] == created["metadata"]["generation"]
