"""The chart installed into the local control plane, and the operator run with the chart's settings and
under the chart's ServiceAccount: the ClusterRole must be enough for a tuning Workspace to get its
data check, its progress identity, its results claim and its training Job, and must not reach Secrets."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s_client

from hack.local_stack import kube_json, start_data_server, start_operator, tool_path, wait_for
from tests.controller.conftest import (
    apply,
    dump,
    jobs,
    make_parquet,
    tuning_workspace,
)
from tests.fixtures.cluster import REPO_ROOT
from tuning_controller.kube import Kube
from tuning_controller.render.job import QUEUE_LABEL

CHART = REPO_ROOT / "charts" / "kaito-tune"
RELEASE = "kaito-tune"


def render_chart(namespace: str) -> list[dict]:
    helm = tool_path("helm")
    assert helm is not None, "helm is missing: run hack/build-tools.sh"
    out = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def service_account_kubeconfig(api: k8s_client.ApiClient, admin_kubeconfig, namespace: str, path) -> None:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest, as a pod would get)."""
    token = kube_json(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{RELEASE}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )["status"]["token"]
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        ca = base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
        cluster = {"server": cluster["server"], "certificate-authority-data": ca}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": RELEASE, "user": {"token": token}}],
        "contexts": [{"name": "chart", "context": {"cluster": "local", "user": RELEASE}}],
        "current-context": "chart",
    }
    path.write_text(yaml.safe_dump(config))


def may(api: k8s_client.ApiClient, namespace: str, verb: str, resource: str, group: str = "") -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{RELEASE}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
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
    objects = render_chart(namespace)
    kube = Kube(kube_client, field_manager="chart-test")
    for obj in objects:
        if obj["kind"] != "Deployment":  # no Deployment controller here: the test runs the operator itself
            kube.apply(obj)
    yield next(o for o in objects if o["kind"] == "Deployment")
    kube_json(kube_client, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{RELEASE}")
    kube_json(kube_client, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}")


def test_chart_role_reaches_no_secrets(kube_client, namespace, installed_chart):
    assert may(kube_client, namespace, "create", "jobs", "batch")
    assert may(kube_client, namespace, "patch", "workspaces/status", "kaito.sh")
    assert not may(kube_client, namespace, "get", "secrets")
    assert not may(kube_client, namespace, "list", "secrets")


def test_operator_under_the_chart_role_runs_a_tuning_workspace_to_its_training_job(
    kube_client, control_plane, namespace, installed_chart, pod_executor, tmp_path
):
    """Queued through Kueue's label, with the test admitting the data Job as Kueue would: the training Job
    is then created suspended, so no pod takes the executor's GPU from the tests that follow."""
    env = {e["name"]: e["value"] for e in installed_chart["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAITO_TUNE_RESULTS_VOLUME"] == "pvc"
    kubeconfig = tmp_path / "chart-sa.kubeconfig"
    service_account_kubeconfig(kube_client, control_plane.kubeconfig, namespace, kubeconfig)
    del env["KAITO_TUNE_METRICS_PORT"]  # the test picks free ports
    env["KAITO_TUNE_ALLOW_LOOPBACK_URLS"] = "true"  # the data server is on loopback
    server = start_data_server(tmp_path / "served")
    make_parquet(server.root / "train.parquet", rows=8)
    operator = start_operator(kubeconfig, tmp_path / "operator.log", **env)
    ws = tuning_workspace(
        "charted", namespace, urls=[f"{server.url}/train.parquet"], labels={QUEUE_LABEL: "gpus"}
    )
    try:
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
        wait_for(lambda: "charted" in job_names(kube_client, namespace), 120, "the training Job")
        training = kube_json(kube_client, "GET", f"{job_path}/charted")
        assert training["spec"]["suspend"] is True, dump(kube_client, namespace, "charted")
        assert "forbidden" not in operator.log().lower(), operator.log()[-3000:]
    finally:
        operator.stop()
        server.stop()
        kube_json(kube_client, "DELETE", f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces/charted")


def job_names(api, namespace: str) -> set[str]:
    return {j["metadata"]["name"] for j in jobs(api, namespace)}
