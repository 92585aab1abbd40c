"""tuning_controller.kube against the real API server: apply, create conflicts, conditional patches."""

from __future__ import annotations

import threading

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
    stop = threading.Event()

    def meddle():  # another writer changing the object all the time
        i = 0
        while not stop.is_set():
            i += 1
            kube.merge_patch("v1", "ConfigMap", namespace, "c", {"metadata": {"labels": {"other": str(i)}}})

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
        attempts.append(1)
        current = kube.get("v1", "ConfigMap", namespace, "c")
        n = int(current["data"]["n"]) + 1
        patch = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "data": {"n": str(n)},
        }
        return kube.merge_patch("v1", "ConfigMap", namespace, "c", patch)

    thread = threading.Thread(target=meddle, daemon=True)
    thread.start()
    try:
        for _ in range(5):
            retry_on_conflict(increment, attempts=20, backoff_s=0.001)
    finally:
        stop.set()
        thread.join()
    assert kube.get("v1", "ConfigMap", namespace, "c")["data"]["n"] == "5"
    assert len(attempts) >= 5
