"""tuning_controller.kube against the real API server: apply, create conflicts, conditional patches."""

from __future__ import annotations

import pytest

from tuning_controller.kube import Kube, KubeError, retry_on_conflict


@pytest.fixture
def kube(control_plane) -> Kube:
    return Kube.from_environment(str(control_plane.kubeconfig))


def _cm(namespace: str, data: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": namespace},
        "data": data,
    }


def test_apply_is_idempotent_and_create_reports_already_exists(kube, namespace):
    first = kube.apply(_cm(namespace, {"a": "1"}))
    again = kube.apply(_cm(namespace, {"a": "1"}))
    assert first["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"]
    managers = {m["manager"] for m in again["metadata"]["managedFields"]}
    assert managers == {"kaito-tune"}
    with pytest.raises(KubeError) as err:
        kube.create(_cm(namespace, {"a": "2"}))
    assert err.value.already_exists
    assert kube.get("v1", "ConfigMap", namespace, "missing") is None
    assert kube.delete("v1", "ConfigMap", namespace, "c") is True
    assert kube.delete("v1", "ConfigMap", namespace, "c") is False


def test_conditional_patch_conflicts_and_retry_rereads(kube, namespace):
    kube.apply(_cm(namespace, {"n": "0"}))
    stale = kube.get("v1", "ConfigMap", namespace, "c")
    kube.merge_patch("v1", "ConfigMap", namespace, "c", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(KubeError) as err:
        kube.merge_patch(
            "v1",
            "ConfigMap",
            namespace,
            "c",
            {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "data": {"n": "9"}},
        )
    assert err.value.conflict and not err.value.already_exists

    attempts = []

    def increment():
        """Read-modify-write; every other attempt another writer changes the object in between."""
        attempts.append(1)
        current = kube.get("v1", "ConfigMap", namespace, "c")
        if len(attempts) % 2:
            labels = {"other": str(len(attempts))}
            kube.merge_patch("v1", "ConfigMap", namespace, "c", {"metadata": {"labels": labels}})
        n = int(current["data"]["n"]) + 1
        patch = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "data": {"n": str(n)},
        }
        return kube.merge_patch("v1", "ConfigMap", namespace, "c", patch)

    for _ in range(5):
        retry_on_conflict(increment, attempts=3, backoff_s=0.001)
    assert kube.get("v1", "ConfigMap", namespace, "c")["data"]["n"] == "5"
    assert len(attempts) == 10  # each increment: one conflict, then a retry that re-read and won
