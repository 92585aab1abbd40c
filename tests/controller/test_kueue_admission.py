"""Kueue for real with the operator (issue 16): Kueue's own controller (hack/kueue.py) on the cluster, a
ClusterQueue with quota for one GPU, and two auto-provisioned tuning Workspaces in its LocalQueue. Both
data checks run on the real node (admitted by Kueue too); of the two 1-GPU training Jobs Kueue admits
one, which then gets its NodeClaim; the other stays Queued with Kueue's reason in its status and has no
NodeClaim until the first Workspace is deleted and its quota freed.

The NodeClaims never become nodes here (no Karpenter), and the Workspaces select a label no node has,
so the admitted training pod stays Pending and holds its quota."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from hack import kueue
from hack.cluster import missing_tools, missing_tools_message
from tests.controller.conftest import (
    API,
    apply,
    dump,
    get_workspace,
    make_parquet,
    nodeclaims_of,
    tuning_status,
    tuning_workspace,
    wait_status,
)
from tests.controller.test_end_to_end import create_config
from tests.fixtures.cluster import kube_json, wait_for
from tuning_controller.kube import KubeError

SKU = "Standard_NC24ads_A100_v4"  # one A100
QUOTA = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": 1}


@pytest.fixture(scope="module")
def running_kueue(control_plane) -> Iterator[kueue.Kueue]:
    missing = missing_tools(("kueue",))
    if missing:
        pytest.fail(missing_tools_message(missing), pytrace=False)
    with kueue.running_kueue(control_plane, max_seconds=900) as running:
        yield running


def queued_workspace(name: str, namespace: str, url: str, config: str, queue: str) -> dict:
    ws = tuning_workspace(
        name,
        namespace,
        urls=[url],
        output={"volumeSource": {"emptyDir": {}}},
        config=config,
        labels={kueue.QUEUE_LABEL: queue},
        instance_type=SKU,
    )
    ws["resource"]["labelSelector"] = {"matchLabels": {"kaito-test/kueue": namespace}}
    return ws


def phase(ws: dict) -> str:
    return ((ws.get("status") or {}).get("tuning") or {}).get("phase", "")


def test_quota_for_one_gpu_trains_one_workspace_at_a_time(
    kube_client, namespace, run_operator, data_server, nodeclaim_crd, running_kueue
):
    base_url, served = data_server
    make_parquet(served / "train.parquet", rows=8)
    queue = kueue.create_queues(kube_client, namespace, QUOTA, name=namespace)
    try:
        run_operator(KAITO_TUNE_AUTO_PROVISIONING="true", KAITO_TUNE_RESYNC_SECONDS="5")
        config = create_config(kube_client, namespace, max_steps=2)
        url = f"{base_url}/train.parquet"
        for name in ("first", "second"):
            apply(kube_client, queued_workspace(name, namespace, url, config, queue))

        def one_admitted_one_queued() -> tuple[str, str] | None:
            phases = {n: phase(get_workspace(kube_client, namespace, n)) for n in ("first", "second")}
            admitted = [n for n, p in phases.items() if p == "Pending"]
            waiting = [n for n, p in phases.items() if p == "Queued"]
            return (admitted[0], waiting[0]) if len(admitted) == len(waiting) == 1 else None

        try:
            admitted, waiting = wait_for(one_admitted_one_queued, 300, "one Workspace admitted, one queued")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n{dump(kube_client, namespace, 'first')}\n{dump(kube_client, namespace, 'second')}"
            ) from None
        time.sleep(3)  # and it stays so
        waiting_status = tuning_status(kube_client, namespace, waiting)
        assert waiting_status["phase"] == "Queued", waiting_status
        message = waiting_status["message"]
        assert message.startswith(f"waiting in queue {queue}: "), message
        assert "insufficient unused quota for nvidia.com/gpu" in message, message
        assert tuning_status(kube_client, namespace, admitted)["message"].startswith(
            f"admitted by queue {queue}; "
        )
        assert len(nodeclaims_of(kube_client, nodeclaim_crd, namespace, admitted)) == 1
        assert (
            nodeclaims_of(kube_client, nodeclaim_crd, namespace, waiting) == []
        )  # no node billed while queued

        freed = time.monotonic()
        kube_json(kube_client, "DELETE", f"{API}/namespaces/{namespace}/workspaces/{admitted}")
        wait_status(
            kube_client,
            namespace,
            waiting,
            lambda w: phase(w) == "Pending",
            120,
            f"{waiting} admitted once {admitted}'s quota is freed",
        )
        claims = wait_for(
            lambda: nodeclaims_of(kube_client, nodeclaim_crd, namespace, waiting), 60, "its NodeClaim"
        )
        print(
            f"\n{waiting} admitted and its NodeClaim requested {time.monotonic() - freed:.1f}s after delete"
        )
        assert len(claims) == 1
        wait_for(
            lambda: nodeclaims_of(kube_client, nodeclaim_crd, namespace, admitted) == [],
            60,
            f"{admitted}'s NodeClaim released",
        )
    finally:
        for name in ("first", "second"):  # their NodeClaims are cluster-scoped: the operator deletes them
            with contextlib.suppress(KubeError):
                kube_json(kube_client, "DELETE", f"{API}/namespaces/{namespace}/workspaces/{name}")
        kueue.delete_queues(kube_client, namespace, name=namespace)
