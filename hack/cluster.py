"""The local cluster (hack/control-plane.sh): tools, start and stop, the CRD, namespaces, pod logs."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from hack.processes import StackError, wait_for
from tuning_controller.kube import Kube, KubeError

REPO_ROOT = Path(__file__).resolve().parents[1]
HACK = REPO_ROOT / "hack"
CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_TOOLS = (
    *CONTROL_PLANE_TOOLS,
    *("kubelet", "kube-proxy", "kubectl", "containerd", "containerd-shim-runc-v2", "ctr"),
    *("coredns", "local-path-provisioner"),
)


# --- the Kubernetes API on plain dicts ---------------------------------------------------------------


def kube_json(
    api: k8s_client.ApiClient,
    method: str,
    path: str,
    body: dict[str, Any] | list[Any] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """Call the API server with the project's client and return the JSON answer (KubeError on non-2xx)."""
    return Kube(api).request(method, path, body, content_type=content_type)


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


def apply_crd(api: k8s_client.ApiClient, crd: dict[str, Any]) -> dict:
    """Apply a CRD server-side (idempotent), wait until it is Established and its storage version is
    served; returns the CRD."""
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

    wait_for(established, 60, f"CRD {name} to be Established")
    # Discovery and the served schema lag Established by a moment: wait until a list answers. The
    # storage version, because other versions may need a conversion webhook that is not running.
    group = crd["spec"]["group"]
    version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    plural = crd["spec"]["names"]["plural"]

    def served() -> bool:
        try:
            kube_json(api, "GET", f"/apis/{group}/{version}/{plural}")
        except KubeError:
            return False
        return True

    wait_for(served, 30, f"{plural}.{group}/{version} to be served")
    return crd


def apply_workspace_crd(api: k8s_client.ApiClient) -> dict:
    """workspaces.kaito.sh from tuning_controller.crd, applied and served; returns the CRD."""
    from tuning_controller.crd import build_crd

    return apply_crd(api, build_crd())


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
