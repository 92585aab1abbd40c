"""The operator on the local cluster: as a child process, as the chart installs it, and the
inference server started by hand."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from kubernetes import client as k8s_client

from hack.cluster import REPO_ROOT, Node, kube_json, missing_tools_message, pod_log, tool_path
from hack.processes import StackError, free_port, stop_process, wait_for
from tuning_controller.kube import Kube, KubeError, object_path

# Where input URLs may point in development: loopback and the local node (hack/node.sh NODE_IP).
LOCAL_URL_NETWORKS = "127.0.0.0/8,10.250.0.1/32"


# --- operator ----------------------------------------------------------------------------------------


@dataclass
class Operator:
    process: subprocess.Popen
    log_path: Path
    metrics_port: int
    health_port: int
    env: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


# The local node has 2 cores for the control plane, the operator and the pods: a tiny preset's train
# container asks for little (the product's defaults fit a GPU node).
LOCAL_TRAIN_REQUESTS = {"KAITO_TUNE_TRAIN_CPU_REQUEST": "100m", "KAITO_TUNE_TRAIN_MEMORY_REQUEST": "256Mi"}


def start_operator(kubeconfig: Path, log_path: Path, **env: str) -> Operator:
    """``python -m tuning_controller.operator`` against `kubeconfig`, allowing input URLs on loopback and
    the local node (KAITO_TUNE_* `env` on top); returns once /healthz answers."""
    metrics_port, health_port = free_port(), free_port()
    full_env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": str(REPO_ROOT),
        "KAITO_TUNE_ALLOWED_URL_NETWORKS": LOCAL_URL_NETWORKS,
        **LOCAL_TRAIN_REQUESTS,
        "KAITO_TUNE_METRICS_PORT": str(metrics_port),
        "KAITO_TUNE_HEALTH_PORT": str(health_port),
        **env,
    }
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuning_controller.operator"],
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    op = Operator(proc, log_path, metrics_port, health_port, env)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"operator exited {proc.returncode}:\n{op.log()[-4000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, 60, "the operator's /healthz")
    except BaseException:
        op.stop()
        raise
    return op


# --- the operator as the chart installs it -------------------------------------------------------------

CHART = REPO_ROOT / "charts" / "kaito-tune"
RELEASE = "kaito-tune"


def render_chart(namespace: str, values: dict[str, Any] | None = None) -> list[dict]:
    """``helm template`` of charts/kaito-tune (CRDs included) with `values` on top of values.yaml."""
    helm = tool_path("helm")
    if helm is None:
        raise StackError(missing_tools_message(["helm"]))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        yaml.safe_dump(values or {}, extra)
        extra.flush()
        out = subprocess.run(
            [
                str(helm),
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                namespace,
                "--include-crds",
                "-f",
                extra.name,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass
class ChartOperator:
    """The operator running as the chart's Deployment, in the controller image on the node; `objects` are
    what the chart created (uninstall deletes them, the CRD aside)."""

    api: k8s_client.ApiClient
    namespace: str
    objects: list[dict]

    def pod(self) -> dict:
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=controller"
        pods = kube_json(
            self.api, "GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}"
        )
        running = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
        if not running:
            raise StackError(f"no operator pod in {self.namespace}")
        return running[0]

    def log(self) -> str:
        return pod_log(self.api, self.namespace, self.pod()["metadata"]["name"], "controller")

    def uninstall(self) -> None:
        """Delete what the chart created (not the CRD: Workspaces outlive the operator) and wait until
        the operator's pod is gone, so that no second operator reconciles afterwards."""
        kube = Kube(self.api, field_manager="kaito-tune-local")
        for obj in reversed(self.objects):
            if obj["kind"] != "CustomResourceDefinition":
                with contextlib.suppress(KubeError):  # already gone
                    kube.request("DELETE", object_path(obj))

        def gone() -> bool:
            try:
                self.pod()
            except StackError:
                return True
            return False

        wait_for(gone, 60, f"the operator pod in {self.namespace} to be deleted")


LOCAL_MODEL_REGISTRY = "10.250.0.1:25000/kaito-tune/models"
"""``model_registry`` of the local node (hack/node.sh's fixed address): the mirror the examples that use
the tiny preset are validated against offline, as the local cluster would run them."""


def model_registry(node: Node) -> str:
    """The local cluster's mirror of preset weights (KAITO_TUNE_MODEL_REGISTRY): on the node's registry."""
    return f"{node.image_registry}/kaito-tune/models"


def publish_tiny_preset(node: Node) -> str:
    """Push the tiny preset as a model artifact to the local mirror, as `kaito-tune model push` fills a
    real cluster's: pods get its weights through fetch-model like a real preset's. Idempotent (the
    build is deterministic; blobs the registry has are not sent again). Returns the reference."""
    from artifacts.models import push_model
    from artifacts.registry import ClientOptions
    from presets.catalog import get_model
    from presets.tiny import TINY_PRESET_NAME, ensure_tiny_preset
    from tuning_controller.model_source import mirror_reference

    reference = mirror_reference(get_model(TINY_PRESET_NAME), model_registry(node))
    options = ClientOptions(plain_http=True)
    push_model(str(ensure_tiny_preset()), reference, options=options, preset=TINY_PRESET_NAME)
    return reference


def local_operator_settings(node: Node, registry_host: str, **settings: Any) -> dict[str, Any]:
    """Chart settings for the local cluster: input URLs on the node, plain HTTP to `registry_host` and the
    node's registry, and preset weights from the local mirror (see `publish_tiny_preset`)."""
    return {
        "allowedUrlNetworks": [f"{node.ip}/32"],
        "insecureRegistries": list(dict.fromkeys([registry_host, node.image_registry])),
        "modelRegistry": model_registry(node),
        "trainCpuRequest": LOCAL_TRAIN_REQUESTS["KAITO_TUNE_TRAIN_CPU_REQUEST"],
        "trainMemoryRequest": LOCAL_TRAIN_REQUESTS["KAITO_TUNE_TRAIN_MEMORY_REQUEST"],
        **settings,
    }


def install_chart(
    api: k8s_client.ApiClient, namespace: str, values: dict[str, Any], timeout: float = 300
) -> ChartOperator:
    """Apply the rendered chart (what `helm install` creates) and wait until the operator's Deployment is
    available: its pod pulled the controller image on the node and answers /healthz."""
    from tuning_controller.kube import Kube

    with contextlib.suppress(KubeError):
        kube_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    kube = Kube(api, field_manager="kaito-tune-local")
    objects = render_chart(namespace, values)
    for obj in objects:
        kube.apply(obj)
    operator = ChartOperator(api, namespace, objects)
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}"
    try:
        wait_for(
            lambda: (kube_json(api, "GET", path).get("status") or {}).get("availableReplicas"),
            timeout,
            f"the operator Deployment {namespace}/{RELEASE} to be available",
            interval=0.5,
        )
    except AssertionError:
        operator.uninstall()
        raise
    return operator


# --- inference server --------------------------------------------------------------------------------


@contextlib.contextmanager
def running_inference_server(
    adapter_root: Path, log_path: Path, *args: str, preset: str = "tiny-llama", timeout: float = 180
) -> Iterator[str]:
    """``python -m inference`` on a free loopback port; yields its URL once /health answers and stops it
    by PID afterwards. Strengths come from `args` only (an inherited KAITO_ADAPTER_STRENGTHS is dropped)."""
    port = free_port()
    command = [sys.executable, "-m", "inference", "--preset", preset, "--adapter-root", str(adapter_root)]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("KAITO_ADAPTER_STRENGTHS", None)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise StackError(
                f"the inference server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(healthy, timeout, f"the inference server's /health (log: {log_path})", interval=0.3)
        yield url
    finally:
        stop_process(proc, timeout=15)
