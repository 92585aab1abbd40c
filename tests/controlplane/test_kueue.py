"""Kueue for real (issue 16): its controller manager, built from sigs.k8s.io/kueue, admits suspended Jobs
labelled with a LocalQueue against a ClusterQueue's quota on a control plane of its own (no node: pods
stay Pending, admission is what is tested). With `nvidia.com/gpu: 1` of quota, of two 1-GPU Jobs one is
unsuspended and the other waits for quota, saying so in its Workload, until the first is deleted.

own_cluster: the shared `control_plane` fixture starts the (single) real node; Kueue needs none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from hack import kueue
from hack.cluster import create_namespace, kube_json
from hack.processes import wait_for
from tests.controlplane.planes import admin_client, nodeless_plane

pytestmark = pytest.mark.own_cluster

QUOTA = {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": 1}


@pytest.fixture(scope="module")
def kueue_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8s_client.ApiClient]:
    """A control plane without node, Kueue running on it; the admin client."""
    with (
        nodeless_plane(tmp_path_factory, "kueue-plane", ("kueue",)) as plane,
        kueue.running_kueue(plane, max_seconds=1200) as running,
        admin_client(plane) as api,
    ):
        print(f"\nkueue {running.version} ready {running.ready_seconds:.1f}s after start ({running.log})")
        yield api


def gpu_job(name: str, queue: str) -> dict[str, Any]:
    """What our controller creates: suspended, with the queue-name label, 1 GPU."""
    resources = {"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": "1"}
    container = {
        "name": "main",
        "image": "ghcr.io/kaito-tune/runtime:0.1.0",
        "command": ["true"],
        "resources": {"requests": resources, "limits": resources},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {kueue.QUEUE_LABEL: queue}},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def jobs(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"


def admitted(api: k8s_client.ApiClient, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
    """The Job's Workload once it is Admitted and Kueue has unsuspended the Job; None before."""
    got = kube_json(api, "GET", f"{jobs(namespace)}/{job['metadata']['name']}")
    workload = kueue.workload_of(api, namespace, job["metadata"]["uid"])
    if got["spec"].get("suspend") or kueue.condition(workload, "Admitted").get("status") != "True":
        return None
    return workload


def waiting_for_quota(
    api: k8s_client.ApiClient, namespace: str, job: dict[str, Any]
) -> dict[str, Any] | None:
    """The Job's Workload once Kueue has tried it and reserved no quota (the reason written); None before."""
    workload = kueue.workload_of(api, namespace, job["metadata"]["uid"])
    reserved = kueue.condition(workload, "QuotaReserved")
    return workload if reserved.get("status") == "False" and reserved.get("message") else None


def describe(workload: dict[str, Any]) -> str:
    return "; ".join(
        f"{c['type']}={c['status']} reason={c.get('reason')} message={c.get('message')!r}"
        for c in workload.get("status", {}).get("conditions") or []
    )


def test_quota_of_one_gpu_admits_one_job_at_a_time(kueue_api):
    api = kueue_api
    namespace = create_namespace(api)
    queue = kueue.create_queues(api, namespace, QUOTA)

    t0 = time.monotonic()
    first = kube_json(api, "POST", jobs(namespace), gpu_job("first", queue))
    first_workload = wait_for(lambda: admitted(api, namespace, first), 60, "the first Job admitted", 0.05)
    first_latency = time.monotonic() - t0
    second = kube_json(api, "POST", jobs(namespace), gpu_job("second", queue))
    waiting = wait_for(lambda: waiting_for_quota(api, namespace, second), 60, "the second Job to wait", 0.05)
    time.sleep(2)  # and it stays so: Kueue does not admit it a moment later

    second_now = kube_json(api, "GET", f"{jobs(namespace)}/second")
    waiting = kueue.workload_of(api, namespace, second["metadata"]["uid"])
    reserved = kueue.condition(waiting, "QuotaReserved")
    print(f"\nadmitted: {describe(first_workload)}\nwaiting: {describe(waiting)}")
    assert second_now["spec"]["suspend"] is True
    assert kueue.condition(waiting, "Admitted").get("status") != "True"
    assert reserved["status"] == "False", describe(waiting)
    assert reserved["reason"] == "Pending", reserved
    assert "insufficient unused quota for nvidia.com/gpu" in reserved["message"], reserved
    assert kueue.condition(first_workload, "QuotaReserved")["status"] == "True"

    t1 = time.monotonic()
    kube_json(api, "DELETE", f"{jobs(namespace)}/first", {"propagationPolicy": "Background"})
    second_workload = wait_for(lambda: admitted(api, namespace, second), 60, "the second Job admitted", 0.05)
    second_latency = time.monotonic() - t1
    print(f"second admitted: {describe(second_workload)}")
    print(f"admission: first {first_latency:.2f}s after create, second {second_latency:.2f}s after delete")
    assert second_workload["status"]["admission"]["clusterQueue"] == queue


def test_the_kueue_example_admits_the_example_workspaces_training_job(kueue_api):
    """examples/kueue as written: its queues are accepted by Kueue's CRDs and become Active, and the
    training Job the controller renders for its Workspace (suspended, labelled) is admitted by them."""
    import yaml

    from contract.workspace import parse_workspace
    from tests.api.builders import EXAMPLES
    from tuning_controller.render.job import render_training_job
    from tuning_controller.settings import Settings

    api = kueue_api
    queues = [d for d in yaml.safe_load_all((EXAMPLES / "kueue" / "queues.yaml").read_text()) if d]
    namespace = next(d["metadata"]["namespace"] for d in queues if d["kind"] == "LocalQueue")
    create_namespace(api, name=namespace)
    root = f"/apis/{kueue.API_VERSION}"
    plural = {
        "ResourceFlavor": "resourceflavors",
        "ClusterQueue": "clusterqueues",
        "LocalQueue": "localqueues",
    }
    for obj in queues:
        assert obj["apiVersion"] == kueue.API_VERSION
        where = f"/namespaces/{namespace}" if obj["kind"] == "LocalQueue" else ""
        kube_json(api, "POST", f"{root}{where}/{plural[obj['kind']]}", obj)
    local = next(d for d in queues if d["kind"] == "LocalQueue")["metadata"]["name"]
    wait_for(
        lambda: (
            kueue.condition(
                kube_json(api, "GET", f"{root}/namespaces/{namespace}/localqueues/{local}"), "Active"
            ).get("status")
            == "True"
        ),
        60,
        "the example's LocalQueue Active",
    )

    ws_obj = yaml.safe_load((EXAMPLES / "kueue" / "tuning-workspace.yaml").read_text())
    ws_obj["metadata"]["namespace"] = namespace
    ws, _ = parse_workspace(ws_obj)
    job = render_training_job(ws, Settings(auto_provisioning=True), "rev", data_sha256="a" * 64, gpus=1)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][kueue.QUEUE_LABEL] == local
    created = kube_json(api, "POST", jobs(namespace), job)
    workload = wait_for(lambda: admitted(api, namespace, created), 60, "the example's Job admitted", 0.05)
    assert workload["status"]["admission"]["clusterQueue"] == "gpu-tuning"
