"""Kueue for real on a local control plane: its CRDs, its controller manager (hack/build-tools.sh builds
it from sigs.k8s.io/kueue) and a quota to queue our tuning Jobs against.

Why it is set up this way:
- The CRDs come from the Go module cache at the version of the binary (config/components/crd/bases), not
  from a copy in the repository: one version variable in build-tools.sh moves both, and 1.6 MB of generated
  YAML stay out of git. Building the binary downloads that module, and `go mod download` fetches it
  again if the cache was cleaned.
- No webhook configurations are installed: our controller creates its Jobs suspended with the
  queue-name label, so Kueue's Job mutation is not needed, and the API server (no node, no Service
  routing) could not reach a webhook anyway.
- Internal cert management stays ON. With it off, kueue v0.17 requires the metrics certificate at the
  hard-coded /etc/kueue/metrics/certs (it exits without it), which a test must not write. On, its cert
  rotator fills the (pre-made, empty: it does not create it) Secret `kueue-webhook-server-cert` in
  `kueue-system`, waits until certDir holds tls.crt (kubelet's secret volume in a real install: here
  mount_secret copies the Secret there) and until it has injected its CA into the conversion webhook
  of five CRDs, so those CRDs get upstream's conversion stanza (config/components/crd/patches). The API
  server only calls a conversion webhook for an object stored at another version than the one asked
  for, and this one is unreachable (no Service, no node): speak the storage version (v1beta2,
  API_VERSION) only; a v1beta1 read answers HTTP 500.
- Only the batch/job integration; VisibilityOnDemand off (its API server would need a port and
  delegated authentication); metrics off; health and webhook servers on free loopback ports, so two
  control planes can each run a Kueue.
- The manager runs under `timeout` (bounded lifetime) with a parent-death signal (it dies with the
  process that started it) and is stopped by its PID; its log is logs/kueue.log in the state dir.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from hack.cluster import ControlPlane, apply_crd, kube_json, tool_path
from hack.processes import StackError, die_with_parent, free_port, stop_process, wait_for
from tuning_controller.conditions import find
from tuning_controller.kube import KubeError

MODULE = "sigs.k8s.io/kueue"
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"  # the storage version of every Kueue CRD in v0.17
NAMESPACE = "kueue-system"
QUEUE_LABEL = f"{GROUP}/queue-name"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
# The CRDs whose conversion webhook kueue's cert rotator injects its CA into (pkg/util/cert).
CONVERTED_CRDS = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")


@dataclass(frozen=True)
class Kueue:
    """A running manager; `process` is its `timeout` wrapper, which passes SIGTERM on to it."""

    version: str
    process: subprocess.Popen
    log: Path
    health_url: str
    ready_seconds: float


def kueue_binary() -> Path:
    path = tool_path("kueue")
    if path is None:
        raise StackError("kueue is not built: run hack/build-tools.sh (a cold build takes minutes)")
    return path


def binary_version(binary: Path) -> str:
    """The version build-tools.sh built (its cache folder is kueue-<version>)."""
    return binary.parent.name.removeprefix("kueue-")


def crd_files(version: str) -> list[Path]:
    """Kueue's CRDs at `version`, from the Go module cache (downloaded there if missing)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{MODULE}@{version}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd="/",
    )
    if out.returncode != 0:
        raise StackError(
            f"go mod download {MODULE}@{version} failed: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    bases = Path(json.loads(out.stdout)["Dir"]) / "config" / "components" / "crd" / "bases"
    files = sorted(bases.glob("*.yaml"))
    if not files:
        raise StackError(f"no CRDs under {bases}")
    return files


def with_conversion_webhook(crd: dict[str, Any]) -> dict[str, Any]:
    """Upstream's conversion patch for the CRDs kueue injects its CA into (see the module docstring)."""
    if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
        service = {"namespace": NAMESPACE, "name": "kueue-webhook-service", "path": "/convert"}
        crd["spec"]["conversion"] = {
            "strategy": "Webhook",
            "webhook": {"clientConfig": {"service": service}, "conversionReviewVersions": ["v1"]},
        }
    return crd


def install_crds(api: k8s_client.ApiClient, version: str) -> list[str]:
    """Apply Kueue's CRDs and wait until each is Established and served; returns their names."""
    import yaml

    return [
        apply_crd(api, with_conversion_webhook(yaml.safe_load(path.read_text())))["metadata"]["name"]
        for path in crd_files(version)
    ]


def write_config(
    directory: Path, health_port: int, webhook_port: int, client_qps: float | None = None
) -> Path:
    """Kueue's Configuration; ``client_qps`` raises its API client's rate limit (QPS, burst 2x) from
    Kueue's defaults (20, 30)."""
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(directory / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }
    if client_qps:
        config["clientConnection"] = {"qps": client_qps, "burst": int(2 * client_qps)}
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def _tail(log: Path, lines: int = 25) -> str:
    return "\n".join(line[:600] for line in log.read_text(errors="replace").splitlines()[-lines:])


def _alive(kueue: subprocess.Popen, log: Path) -> bool:
    if kueue.poll() is not None:
        raise StackError(
            f"kueue exited ({kueue.returncode}) during start-up; last lines of {log}:\n{_tail(log)}"
        )
    return True


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def prepare_cluster(api: k8s_client.ApiClient, version: str) -> None:
    """The CRDs, the `kueue-system` namespace and the empty Secret the cert rotator fills but does not
    create (upstream's install ships it empty too; without it kueue's start-up hangs)."""
    install_crds(api, version)
    for path, body in (
        ("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}),
        (f"/api/v1/namespaces/{NAMESPACE}/secrets", {"metadata": {"name": WEBHOOK_SECRET}}),
    ):
        try:
            kube_json(api, "POST", path, body)
        except KubeError as exc:
            if exc.status != 409:
                raise


def mount_secret(api: k8s_client.ApiClient, cert_dir: Path) -> bool:
    """What kubelet's secret volume does in a real install: the webhook Secret's keys as files in certDir,
    once the rotator has filled it. Kueue waits for certDir/tls.crt before it reports ready."""
    secret = kube_json(api, "GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{WEBHOOK_SECRET}")
    data = secret.get("data") or {}
    if not {"tls.crt", "tls.key"} <= data.keys():
        return False
    for key, value in data.items():
        tmp = cert_dir / f".{key}.tmp"
        tmp.write_bytes(base64.b64decode(value))
        tmp.chmod(0o600)
        tmp.replace(cert_dir / key)
    return True


def launch(binary: Path, config: Path, plane: ControlPlane, max_seconds: int, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["timeout", "--kill-after=10", str(max_seconds), str(binary), f"--config={config}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
            preexec_fn=die_with_parent,
        )


def start_kueue(
    plane: ControlPlane, max_seconds: int = 3600, timeout: float = 120, client_qps: float | None = None
) -> Kueue:
    """Prepare the cluster, start the manager, hand it its certificate, wait for its /readyz."""
    binary = kueue_binary()
    version = binary_version(binary)
    directory = plane.state_dir / "kueue"
    cert_dir = directory / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    health_port, webhook_port = free_port(), free_port()
    config = write_config(directory, health_port, webhook_port, client_qps)
    plane.logs_dir.mkdir(parents=True, exist_ok=True)
    log = plane.logs_dir / "kueue.log"
    url = f"http://127.0.0.1:{health_port}/readyz"
    api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
    process = None
    try:
        prepare_cluster(api, version)
        started = time.monotonic()
        process = launch(binary, config, plane, max_seconds, log)
        (directory / "kueue.pid").write_text(f"{process.pid}\n")
        running = process
        wait_for(lambda: _alive(running, log) and mount_secret(api, cert_dir), timeout, "the webhook cert")
        wait_for(lambda: _alive(running, log) and _ready(url), timeout, f"kueue {url}", interval=0.5)
        return Kueue(version, process, log, url, time.monotonic() - started)
    except AssertionError as exc:
        stop_process(process)
        raise StackError(f"{exc}; last lines of {log}:\n{_tail(log)}") from None
    except BaseException:
        stop_process(process)
        raise
    finally:
        api.close()


@contextmanager
def running_kueue(
    plane: ControlPlane, max_seconds: int = 3600, client_qps: float | None = None
) -> Iterator[Kueue]:
    """Kueue on `plane` for the `with` block; stopped by PID (SIGTERM, then SIGKILL) afterwards."""
    kueue = start_kueue(plane, max_seconds, client_qps=client_qps)
    try:
        yield kueue
    finally:
        stop_process(kueue.process)


# --- queues ------------------------------------------------------------------------------------------


def create_queues(
    api: k8s_client.ApiClient, namespace: str, quota: Mapping[str, str | int], name: str = "kaito-tune"
) -> str:
    """A ResourceFlavor, a ClusterQueue `name` with `quota` as nominal quota of that flavor (resources not
    named are not admissible), and a LocalQueue `name` in `namespace`; waits until both queues are Active
    and returns the LocalQueue's name (the Jobs' queue-name label)."""
    root = f"/apis/{API_VERSION}"
    flavor = {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": name}}
    resources = [{"name": resource, "nominalQuota": str(amount)} for resource, amount in quota.items()]
    cluster_queue = {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "resourceGroups": [
                {"coveredResources": list(quota), "flavors": [{"name": name, "resources": resources}]}
            ],
        },
    }
    local_queue = {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": name},
    }
    kube_json(api, "POST", f"{root}/resourceflavors", flavor)
    kube_json(api, "POST", f"{root}/clusterqueues", cluster_queue)
    kube_json(api, "POST", f"{root}/namespaces/{namespace}/localqueues", local_queue)
    for path in (f"{root}/clusterqueues/{name}", f"{root}/namespaces/{namespace}/localqueues/{name}"):
        wait_for(
            lambda path=path: condition(kube_json(api, "GET", path), "Active").get("status") == "True",
            60,
            f"{path} to be Active",
        )
    return name


def delete_queues(api: k8s_client.ApiClient, namespace: str, name: str = "kaito-tune") -> None:
    """Remove what create_queues made (missing objects are fine)."""
    root = f"/apis/{API_VERSION}"
    for path in (
        f"{root}/namespaces/{namespace}/localqueues/{name}",
        f"{root}/clusterqueues/{name}",
        f"{root}/resourceflavors/{name}",
    ):
        try:
            kube_json(api, "DELETE", path)
        except KubeError as exc:
            if not exc.not_found:
                raise


def workload_of(api: k8s_client.ApiClient, namespace: str, owner_uid: str) -> dict[str, Any] | None:
    """The Workload Kueue made for the object with `owner_uid` (a Job), or None while there is none."""
    items = kube_json(api, "GET", f"/apis/{API_VERSION}/namespaces/{namespace}/workloads").get("items") or []
    return next(
        (
            w
            for w in items
            if any(o.get("uid") == owner_uid for o in w["metadata"].get("ownerReferences") or [])
        ),
        None,
    )


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """A condition of a Kueue object (a Workload's QuotaReserved or Admitted, a queue's Active) or {}."""
    return find(((obj or {}).get("status") or {}).get("conditions"), kind) or {}
