"""Multi-node tuning as a JobSet on the real node (issue 16): JobSet's own controller (hack/jobset.py, built
from sigs.k8s.io/jobset) on the cluster, and the operator at its default multi_node_workload ``auto``,
which finds JobSets served and renders one. The JobSet's child Job runs two pods of two processes (gloo
on the CPU) that rendezvous through the headless Service JobSet made; a pod lost mid-training fails the
child Job, JobSet recreates the group, every rank resumes from the last checkpoint, and the push Job
pushes the one adapter.

As in test_multi_node_training, the node is told it has 4 GPUs and the results claim is ReadWriteMany."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hack import jobset
from hack.cluster import missing_tools, missing_tools_message, pod_log
from tests.controller.conftest import apply, wait_status
from tests.controller.test_multi_node_training import (
    STEPS,
    create_config,
    index_of,
    succeeded,
    workspace,
)
from tests.fixtures.cluster import kube_json

RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"


@pytest.fixture(scope="module")
def running_jobset(control_plane, kube_client) -> Iterator[jobset.JobSet]:
    """JobSet's controller on the shared cluster for this module; its CRDs removed afterwards, so the
    operators of later modules resolve ``auto`` to the plain Indexed Job again."""
    missing = missing_tools(("jobset",))
    if missing:
        pytest.fail(missing_tools_message(missing), pytrace=False)
    with jobset.running_jobset(control_plane, max_seconds=900) as running:
        yield running
    jobset.uninstall_crds(kube_client)


@pytest.fixture
def multi_node_workload(running_jobset) -> str:
    """The operator's default, started once JobSet is installed: it resolves auto to jobset."""
    return "auto"


def pods_of_jobset(api, namespace: str, name: str) -> list[dict]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=jobset.sigs.k8s.io%2Fjobset-name%3D{name}"
    return kube_json(api, "GET", path)["items"]


def test_a_jobset_trains_on_two_pods_and_a_lost_pod_restarts_the_group_from_the_checkpoint(
    kube_client, namespace, node_registry, multi_node_setup
):
    config = create_config(kube_client, namespace, "checkpointed", save_steps=4)
    image = node_registry.ref("adapters/grouped", "v1")
    apply(kube_client, workspace(namespace, "grouped", multi_node_setup, config, 2, image))
    wait_status(
        kube_client,
        namespace,
        "grouped",
        lambda w: (((w.get("status") or {}).get("tuning") or {}).get("progress") or {}).get("step", 0) >= 6,
        600,
        "training past its first checkpoint",
    )
    js = kube_json(kube_client, "GET", f"/apis/{jobset.API_VERSION}/namespaces/{namespace}/jobsets/grouped")
    assert js["metadata"]["ownerReferences"][0]["kind"] == "Workspace"
    service = kube_json(kube_client, "GET", f"/api/v1/namespaces/{namespace}/services/grouped-workers")
    assert service["metadata"]["ownerReferences"][0]["kind"] == "JobSet"  # JobSet's, not ours
    (lost,) = [p for p in pods_of_jobset(kube_client, namespace, "grouped") if index_of(p) == "1"]
    assert lost["metadata"]["labels"][RESTART_LABEL] == "0"
    kube_json(kube_client, "DELETE", f"/api/v1/namespaces/{namespace}/pods/{lost['metadata']['name']}")
    final = succeeded(kube_client, namespace, "grouped", timeout=600)

    tuning = final["status"]["tuning"]
    assert tuning["progress"]["step"] == STEPS and tuning["adapter"]["digest"].startswith("sha256:")
    js = kube_json(kube_client, "GET", f"/apis/{jobset.API_VERSION}/namespaces/{namespace}/jobsets/grouped")
    assert js["status"]["restarts"] >= 1, js["status"]
    assert any(c["type"] == "Completed" and c["status"] == "True" for c in js["status"]["conditions"])
    child = kube_json(kube_client, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/grouped-node-0")
    restarts = child["metadata"]["labels"][RESTART_LABEL]
    assert restarts != "0" and child["status"]["succeeded"] == 2
    done = [
        p for p in pods_of_jobset(kube_client, namespace, "grouped") if p["status"]["phase"] == "Succeeded"
    ]
    assert sorted(index_of(p) for p in done) == ["0", "1"]
    assert {p["metadata"]["labels"][RESTART_LABEL] for p in done} == {restarts}  # the whole group is new
    leader = next(p for p in done if index_of(p) == "0")
    train = next(c for c in leader["spec"]["containers"] if c["name"] == "train")
    assert (
        f"--rdzv-endpoint=grouped-node-0-0.grouped-workers.{namespace}.svc.cluster.local:29500"
        in train["command"]
    )
    log = pod_log(kube_client, namespace, leader["metadata"]["name"], "train")
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    assert resumed, log[-3000:]
    step = int(resumed[-1].rsplit("checkpoint-", 1)[1].split()[0])
    assert 4 <= step < STEPS, resumed
    loss = tuning["progress"].get("evalLoss")
    print(f"\nJobSet restarts {js['status']['restarts']}; resumed from step {step}; held-out loss {loss}")
