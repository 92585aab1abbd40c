"""The Workspace CRD on the real API server: it is accepted (structural schema, CEL within the cost
budget) with both versions, and status is a subresource. That the server rejects a Workspace breaking
each CEL rule, with the rule's message, is tested in tests/api/test_cel_on_apiserver.py."""

from __future__ import annotations

from tests.api.builders import TUNING_SEED, edit, load
from tests.fixtures.cluster import kube_json

TUNING_WORKSPACE = edit(load(TUNING_SEED), "apiVersion", "kaito.sh/v1beta1")  # KAITO's tuning example


def workspaces(namespace: str, version: str = "v1beta1") -> str:
    return f"/apis/kaito.sh/{version}/namespaces/{namespace}/workspaces"


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
