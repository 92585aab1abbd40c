"""The chart installed into the local cluster as `helm install` creates it: the operator runs as the
chart's Deployment in the controller image on the node, under the chart's ServiceAccount and ClusterRole,
which must be enough for a tuning Workspace to get its data check, its progress identity, its results
claim and its training Job, and must not reach Secrets."""

from __future__ import annotations

import contextlib

import pytest
from kubernetes import client as k8s_client

from hack.cluster import kube_json
from hack.operators import RELEASE, install_chart, local_operator_settings, render_chart
from hack.processes import wait_for
from hack.servers import start_data_server
from tests.controller.conftest import (
    apply,
    dump,
    jobs,
    make_parquet,
    tuning_workspace,
)
from tuning_controller.kube import Kube, KubeError
from tuning_controller.render.job import QUEUE_LABEL

WORKSPACES = "/apis/kaito.sh/v1beta1/namespaces/{}/workspaces"


def may(
    api: k8s_client.ApiClient,
    namespace: str,
    verb: str,
    resource: str,
    group: str = "",
    *,
    operator_namespace: str | None = None,
) -> bool:
    """Whether the chart's ServiceAccount (in ``operator_namespace``, default ``namespace``) may ``verb``
    ``resource`` in ``namespace`` ("" for cluster-scoped resources)."""
    home = operator_namespace or namespace
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{home}:{RELEASE}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{home}"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "resource": resource,
                "group": group,
            },
        },
    }
    return kube_json(api, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)["status"][
        "allowed"
    ]


@pytest.fixture
def installed_chart(kube_client, namespace):
    """The chart's RBAC and settings, without its operator (no pod runs)."""
    objects = render_chart(namespace)
    kube = Kube(kube_client, field_manager="chart-test")
    for obj in objects:
        if obj["kind"] != "Deployment":
            kube.apply(obj)
    yield next(o for o in objects if o["kind"] == "Deployment")
    kube_json(kube_client, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{RELEASE}")
    kube_json(kube_client, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}")


def test_chart_role_creates_secrets_but_never_reads_them(kube_client, namespace, installed_chart):
    """Create only: the input URLs' Secret (tuning_controller/render/input_urls.py)."""
    assert may(kube_client, namespace, "create", "jobs", "batch")
    assert may(kube_client, namespace, "create", "secrets")
    assert not may(kube_client, namespace, "patch", "secrets")  # a patch answers with the object
    assert may(kube_client, namespace, "patch", "workspaces/status", "kaito.sh")
    assert not may(kube_client, namespace, "get", "secrets")
    assert not may(kube_client, namespace, "list", "secrets")


def test_the_charts_operator_runs_a_tuning_workspace_to_its_training_job(
    kube_client, namespace, node, tiny_model, tmp_path
):
    """Queued through Kueue's label, with the test admitting the data Job as Kueue would: the training Job
    is then created suspended, so no pod takes the node's GPU from the tests that follow."""
    server = start_data_server(tmp_path / "served", bind=node.ip)
    make_parquet(server.root / "train.parquet", rows=8)
    settings = local_operator_settings(node, node.image_registry)
    operator = install_chart(kube_client, f"{namespace}-operator", {"settings": settings})
    ws = tuning_workspace(
        "charted", namespace, urls=[f"{server.url}/train.parquet"], labels={QUEUE_LABEL: "gpus"}
    )
    try:
        pod = operator.pod()
        assert pod["spec"]["nodeName"] == node.name
        assert pod["spec"]["containers"][0]["image"].startswith("ghcr.io/kaito-tune/controller:")
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["KAITO_TUNE_RESULTS_VOLUME"] == "pvc"
        apply(kube_client, ws)
        job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        wait_for(lambda: "charted-data" in job_names(kube_client, namespace), 60, "the data Job")
        kube_json(
            kube_client,
            "PATCH",
            f"{job_path}/charted-data",
            {"spec": {"suspend": False}},
            "application/merge-patch+json",
        )
        wait_for(lambda: "charted" in job_names(kube_client, namespace), 180, "the training Job")
        training = kube_json(kube_client, "GET", f"{job_path}/charted")
        assert training["spec"]["suspend"] is True, dump(kube_client, namespace, "charted")
        # RBAC's refusal names the identity (a namespace being deleted is refused without one).
        denied = [line for line in operator.log().splitlines() if "forbidden: User" in line]
        assert not denied, denied[:3]
    finally:
        kube_json(kube_client, "DELETE", f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces/charted")
        operator.uninstall()
        server.stop()


def job_names(api, namespace: str) -> set[str]:
    return {j["metadata"]["name"] for j in jobs(api, namespace)}


def test_the_namespaced_chart_serves_only_its_namespaces(kube_client, namespace, node, tiny_model, tmp_path):
    """watchNamespaces: the operator (--namespace) reconciles Workspaces there and no others, and its
    rights over namespaced objects hold only there (a Role each); cluster-wide it reads nodes and
    namespaces (kopf observes them), no NodeClaims without autoProvisioning, and Secrets nowhere."""
    server = start_data_server(tmp_path / "served", bind=node.ip)
    make_parquet(server.root / "train.parquet", rows=8)
    other = f"{namespace}-other"
    kube_json(kube_client, "POST", "/api/v1/namespaces", {"metadata": {"name": other}})
    home = f"{namespace}-operator"
    settings = local_operator_settings(node, node.image_registry)
    operator = install_chart(kube_client, home, {"settings": settings, "watchNamespaces": [namespace]})
    urls = [f"{server.url}/train.parquet"]
    try:
        pod = operator.pod()
        assert pod["spec"]["containers"][0]["args"] == ["--namespace", namespace]

        def allowed(ns: str, verb: str, resource: str, group: str = "") -> bool:
            return may(kube_client, ns, verb, resource, group, operator_namespace=home)

        assert allowed(namespace, "create", "jobs", "batch") and allowed(namespace, "watch", "pods")
        assert not allowed(other, "create", "jobs", "batch") and not allowed(other, "list", "pods")
        assert not allowed(namespace, "get", "secrets") and not allowed(home, "get", "secrets")
        assert allowed("", "list", "nodes") and not allowed("", "list", "pods")
        assert not allowed("", "create", "nodeclaims", "karpenter.sh")
        for ns in (other, namespace):  # the ignored one first: by the time the served one's Job exists,
            # the operator had every chance to touch it
            apply(kube_client, tuning_workspace("scoped", ns, urls=urls, labels={QUEUE_LABEL: "gpus"}))
        wait_for(lambda: "scoped-data" in job_names(kube_client, namespace), 60, "the data Job")
        assert job_names(kube_client, other) == set()
        ignored = kube_json(
            kube_client, "GET", f"/apis/kaito.sh/v1beta1/namespaces/{other}/workspaces/scoped"
        )
        assert "status" not in ignored or not ignored["status"], ignored["status"]
        denied = [line for line in operator.log().splitlines() if "forbidden: User" in line]
        assert not denied, denied[:3]
    finally:
        for ns in (namespace, other):
            with contextlib.suppress(KubeError):
                kube_json(kube_client, "DELETE", f"{WORKSPACES.format(ns)}/scoped")
        operator.uninstall()
        kube_json(kube_client, "DELETE", f"/api/v1/namespaces/{other}")
        server.stop()
