"""The local stack: a real cluster (control plane and node), the operator, an OCI registry and a data server.

One implementation for the demo (``python -m hack.demo``) and the test fixtures (tests/fixtures/,
tests/controller/conftest.py), so the demo runs exactly what the end-to-end tests check. Every part is a
child process (or a thread) stopped by its PID; the cluster also stops by itself when its owner process
dies or after ``max_seconds``, so nothing outlives a crashed run. What pods must reach (the registry, the
data server) listens on the node's address, which this machine reaches too.

    with LocalStack(state_dir) as stack:       # cluster + CRD + registry + data server
        stack.install_operator(progressIntervalSeconds=1)  # the chart's Deployment on the node
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

REPO_ROOT = Path(__file__).resolve().parents[1]
HACK = REPO_ROOT / "hack"
CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_TOOLS = (
    *CONTROL_PLANE_TOOLS,
    *("kubelet", "kube-proxy", "kubectl", "containerd", "containerd-shim-runc-v2", "ctr"),
    *("coredns", "local-path-provisioner"),
)
# hack/node.sh labels the node so: the tests select it by the first, examples/tuning/tiny-llama-demo.yaml
# by the second.
NODE_LABELS = {"apps": "phi-3", "kaito-tune/local-node": "true"}
REGISTRY_BIN = "docker-registry"
# Where input URLs may point in development: loopback and the local node (hack/node.sh NODE_IP).
LOCAL_URL_NETWORKS = "127.0.0.0/8,10.250.0.1/32"
# A registry outlives an aborted session (pytest killed with -9) by at most this: coreutils' timeout
# runs it, and passes our SIGTERM on when it is stopped by PID.
REGISTRY_MAX_SECONDS = 4 * 3600
REGISTRY_USERNAME = "tuner"
REGISTRY_PASSWORD = "s3cret-pass"  # a loopback-only registry made for this run; never a real credential
T = TypeVar("T")


class StackError(RuntimeError):
    """A part of the local stack could not start; the message says which and what to do."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop one child by its PID: `sig`, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the Kubernetes API on plain dicts ---------------------------------------------------------------


class KubeError(Exception):
    """A non-2xx answer from the API server; `status` is the HTTP code, `body` the Status object."""

    def __init__(self, status: int, body: dict | str):
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def kube_json(
    api: k8s_client.ApiClient,
    method: str,
    path: str,
    body: dict | list | None = None,
    content_type: str = "application/json",
) -> dict:
    """Call the API server and return the JSON answer as a dict (raises KubeError on non-2xx)."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    m, url, headers, payload, post = api.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    resp = api.call_api(m, url, headers, payload, post)
    resp.read()
    data = json.loads(resp.data) if resp.data else {}
    if resp.status >= 300:
        raise KubeError(resp.status, data)
    return data


# --- control plane -----------------------------------------------------------------------------------


def tool_path(name: str) -> Path | None:
    out = subprocess.run(
        [str(HACK / "build-tools.sh"), "--print-path", name], capture_output=True, text=True, check=False
    )
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def missing_tools(names: tuple[str, ...]) -> list[str]:
    """The binaries among `names` that hack/build-tools.sh has not built yet."""
    return sorted(name for name in names if tool_path(name) is None)


def missing_tools_message(missing: list[str]) -> str:
    return (
        f"control-plane binaries not built: {', '.join(missing)}. Run `hack/build-tools.sh` once "
        "(minutes on a cold Go cache; cached under ${KAITO_TUNE_CACHE:-$HOME/.cache/kaito-tune}/tools)."
    )


@dataclass(frozen=True)
class Node:
    """The local cluster's real node (hack/node.sh): kubelet, containerd and runc on `ip`, which pods and
    this machine both reach; `image_registry` serves the project's images to it."""

    name: str
    ip: str
    image_registry: str
    ready_seconds: float


@dataclass(frozen=True)
class ControlPlane:
    state_dir: Path
    kubeconfig: Path
    api_url: str
    node: Node | None = None

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


def start_control_plane(state_dir: Path, max_seconds: int = 3600, node: bool = False) -> ControlPlane:
    """hack/control-plane.sh start: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with
    `node` also the real node and its add-ons; they stop by themselves when this process dies or after
    `max_seconds`."""
    missing = missing_tools(NODE_TOOLS if node else CONTROL_PLANE_TOOLS)
    if missing:
        raise StackError(missing_tools_message(missing))
    env = {
        **os.environ,
        "CONTROL_PLANE_OWNER_PID": str(os.getpid()),
        "CONTROL_PLANE_MAX_SECONDS": str(max_seconds),
    }
    out = subprocess.run(
        [str(HACK / "control-plane.sh"), "start", str(state_dir), *(["--node"] if node else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,  # a cold node pulls the runtime image (gigabytes) once
        check=False,
    )
    if out.returncode != 0:
        raise StackError(f"hack/control-plane.sh start failed:\n{out.stderr[-4000:]}")
    kubeconfig = next(
        line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("export KUBECONFIG=")
    )
    env_file = dict(
        line.split("=", 1) for line in (state_dir / "env").read_text().splitlines() if "=" in line
    )
    the_node = None
    if node:
        the_node = Node(
            name=env_file["NODE_NAME"],
            ip=env_file["NODE_IP"],
            image_registry=env_file["IMAGE_REGISTRY"],
            ready_seconds=float(env_file["NODE_READY_S"]),
        )
    return ControlPlane(
        state_dir=state_dir, kubeconfig=Path(kubeconfig), api_url=env_file["API_SERVER"], node=the_node
    )


def stop_control_plane(state_dir: Path) -> None:
    subprocess.run([str(HACK / "control-plane.sh"), "stop", str(state_dir)], check=False, timeout=180)


def pod_log(
    api: k8s_client.ApiClient, namespace: str, pod: str, container: str, previous: bool = False
) -> str:
    """A container's log as kubelet keeps it (the API server fetches it from the node)."""
    query = f"container={container}" + ("&previous=true" if previous else "")
    m, url, headers, payload, post = api.param_serialize(
        "GET", f"/api/v1/namespaces/{namespace}/pods/{pod}/log?{query}", auth_settings=["BearerToken"]
    )
    resp = api.call_api(m, url, headers, payload, post)
    resp.read()
    if resp.status >= 300:
        raise KubeError(resp.status, resp.data.decode(errors="replace"))
    return resp.data.decode(errors="replace")


def apply_workspace_crd(api: k8s_client.ApiClient) -> dict:
    """workspaces.kaito.sh from tuning_controller.crd applied server-side (idempotent), Established and
    served; returns the CRD."""
    from tuning_controller.crd import build_crd

    crd = build_crd()
    name = crd["metadata"]["name"]
    kube_json(
        api,
        "PATCH",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager=kaito-tune-tests&force=true",
        crd,
        content_type="application/apply-patch+yaml",
    )

    def established() -> bool:
        got = kube_json(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = {c["type"]: c for c in got.get("status", {}).get("conditions") or []}
        if conds.get("NamesAccepted", {}).get("status") == "False":
            raise AssertionError(f"CRD {name} names not accepted: {conds['NamesAccepted']}")
        return conds.get("Established", {}).get("status") == "True"

    wait_for(established, 30, f"CRD {name} to be Established")
    # Discovery and the served schema lag Established by a moment: wait until a list answers.
    group, version = crd["spec"]["group"], crd["spec"]["versions"][-1]["name"]
    plural = crd["spec"]["names"]["plural"]

    def served() -> bool:
        try:
            kube_json(api, "GET", f"/apis/{group}/{version}/{plural}")
        except KubeError:
            return False
        return True

    wait_for(served, 30, f"{plural}.{group}/{version} to be served")
    return crd


def create_namespace(api: k8s_client.ApiClient, name: str = "", generate_name: str = "t-") -> str:
    """A namespace (named or generated); waits for its `default` ServiceAccount (pods need it)."""
    meta: dict[str, Any] = (
        {"name": name} if name else {"generateName": generate_name, "labels": {"test": "1"}}
    )
    created = kube_json(api, "POST", "/api/v1/namespaces", {"metadata": meta})
    name = created["metadata"]["name"]

    def has_default_sa() -> bool:
        found = kube_json(api, "GET", f"/api/v1/namespaces/{name}/serviceaccounts").get("items") or []
        return any(sa["metadata"]["name"] == "default" for sa in found)

    wait_for(has_default_sa, 30, f"ServiceAccount {name}/default (serviceaccount controller)")
    return name


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


def start_operator(kubeconfig: Path, log_path: Path, **env: str) -> Operator:
    """``python -m tuning_controller.operator`` against `kubeconfig`, allowing input URLs on loopback and
    the local node (KAITO_TUNE_* `env` on top); returns once /healthz answers."""
    metrics_port, health_port = free_port(), free_port()
    full_env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": str(REPO_ROOT),
        "KAITO_TUNE_ALLOWED_URL_NETWORKS": LOCAL_URL_NETWORKS,
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
        from tuning_controller.kube import Kube, object_path
        from tuning_controller.kube import KubeError as ApiError

        kube = Kube(self.api, field_manager="kaito-tune-local")
        for obj in reversed(self.objects):
            if obj["kind"] != "CustomResourceDefinition":
                with contextlib.suppress(ApiError):  # already gone
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


# --- OCI registry ------------------------------------------------------------------------------------


def _registry_config(storage: Path, host: str, auth: str, tls: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: {host}\n  secret: fixed-test-secret-for-resumable-uploads\n{tls}"
        f"{auth}"
    )


@dataclass
class Registry:
    """A running loopback registry (Debian's `docker-registry`); ``stop()``/``start()`` keep the same port
    and storage, so a test can stop it mid-push and start "the same registry" again."""

    workdir: Path
    port: int
    bind: str = "127.0.0.1"  # the local node's address when pods use the registry
    username: str | None = None
    password: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    token_grants: list[str] | None = None  # token registries: how each token was obtained
    ca_cert: Path | None = None  # TLS registries: the self-signed certificate to trust

    @property
    def host(self) -> str:
        return f"{self.bind}:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def ref(self, repository: str, tag: str = "v1") -> str:
        return f"{self.host}/{repository}:{tag}"

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (for tamper tests)."""
        algorithm, hexdigest = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest / "data"

    def docker_config_json(self) -> str:
        """A ``.dockerconfigjson`` holding this registry's credentials."""
        return docker_config_json(self.host, self.username or "", self.password or "")

    def start(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [
                "timeout",
                "--kill-after=10",
                str(REGISTRY_MAX_SECONDS),
                REGISTRY_BIN,
                "serve",
                str(self.workdir / "config.yml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()}")
            try:
                scheme = "https" if self.ca_cert else "http"
                requests.get(f"{scheme}://{self.host}/v2/", timeout=1, verify=str(self.ca_cert or True))
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise StackError(f"docker-registry did not answer on {self.host} within 15 s")

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.process = None


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl."""
    key, cert = workdir / "tls.key", workdir / "tls.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def launch_registry(
    workdir: Path, with_auth: bool, token_auth: str = "", tls: bool = False, bind: str = "127.0.0.1"
) -> Registry:
    """Start a registry on `bind`: htpasswd basic auth (user REGISTRY_USERNAME), none, or ``token_auth`` (an
    ``auth: token:`` YAML block); with ``tls`` it serves https with a fresh self-signed certificate."""
    if shutil.which(REGISTRY_BIN) is None:
        raise StackError(f"{REGISTRY_BIN} is not installed: apt-get install docker-registry apache2-utils")
    workdir.mkdir(parents=True, exist_ok=True)
    auth = token_auth
    if with_auth and not token_auth:
        htpasswd = workdir / "htpasswd"
        line = subprocess.run(
            ["htpasswd", "-Bbn", REGISTRY_USERNAME, REGISTRY_PASSWORD],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        htpasswd.write_text(line.strip() + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {htpasswd}\n"
    registry = Registry(
        workdir=workdir,
        port=free_port(),
        bind=bind,
        username=REGISTRY_USERNAME if with_auth else None,
        password=REGISTRY_PASSWORD if with_auth else None,
    )
    tls_block = ""
    if tls:
        registry.ca_cert, key = _self_signed(workdir)
        tls_block = f"  tls:\n    certificate: {registry.ca_cert}\n    key: {key}\n"
    (workdir / "config.yml").write_text(_registry_config(registry.storage, registry.host, auth, tls_block))
    registry.start()
    return registry


def docker_config_json(host: str, username: str, password: str) -> str:
    """A ``.dockerconfigjson`` (what a ``kubernetes.io/dockerconfigjson`` Secret holds) for one registry."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}})


def write_docker_config(path: Path, host: str, username: str, password: str) -> Path:
    """Write a ``.dockerconfigjson`` as a ``kubernetes.io/dockerconfigjson`` Secret mounts it."""
    path.write_text(docker_config_json(host, username, password))
    return path


# --- data file server --------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@dataclass
class DataServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving `root`: a file written there is at ``url + "/" + name``."""

    root: Path
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_data_server(root: Path, bind: str = "127.0.0.1") -> DataServer:
    """Serve `root` on `bind` (the local node's address when pods fetch from it)."""
    root.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer((bind, 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return DataServer(root, server, thread)


# --- everything together -----------------------------------------------------------------------------


class LocalStack:
    """The cluster with its node and the Workspace CRD, an authenticated registry and a data server under
    `state_dir`; operators started with :meth:`start_operator`. A context manager: leaving it (also on an
    error or Ctrl-C) stops every part, newest first, by PID."""

    def __init__(
        self, state_dir: Path, max_seconds: int = 3600, log: Callable[[str], None] = lambda _: None
    ) -> None:
        self.state_dir = state_dir
        self.max_seconds = max_seconds
        self.log = log
        self._stops = contextlib.ExitStack()
        self.control_plane: ControlPlane
        self.api: k8s_client.ApiClient
        self.node: Node
        self.registry: Registry
        self.data: DataServer

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        log = self.log
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log("starting the cluster (control plane, then kubelet, containerd, kube-proxy, CoreDNS)")
        plane_dir = self.state_dir / "control-plane"
        plane_dir.mkdir(exist_ok=True)
        self._stops.callback(stop_control_plane, plane_dir)
        self.control_plane = start_control_plane(plane_dir, self.max_seconds, node=True)
        assert self.control_plane.node is not None
        self.node = self.control_plane.node
        self.api = k8s_config.new_client_from_config(config_file=str(self.control_plane.kubeconfig))
        self._stops.callback(self.api.close)
        apply_workspace_crd(self.api)
        log(f"starting the OCI registry (htpasswd) and the data file server on the node ({self.node.ip})")
        self.registry = launch_registry(self.state_dir / "registry", with_auth=True, bind=self.node.ip)
        self._stops.callback(self.registry.stop)
        self.data = start_data_server(self.state_dir / "served", bind=self.node.ip)
        self._stops.callback(self.data.stop)
        log("publishing the tiny preset's weights to the local model mirror")
        log(f"  {publish_tiny_preset(self.node)}")

    def install_operator(self, **settings: Any) -> ChartOperator:
        """The operator as the chart's Deployment on the node (chart `settings` on top of input URLs from
        the data server and plain HTTP to the registry); uninstalled when the stack stops."""
        values = local_operator_settings(self.node, self.registry.host, **settings)
        operator = install_chart(self.api, "kaito-tune", {"settings": values})
        self._stops.callback(operator.uninstall)
        return operator

    def stop(self) -> None:
        self._stops.close()
