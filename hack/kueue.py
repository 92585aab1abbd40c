"""Kueue for real on a local control plane: its CRDs, its controller manager (hack/build-tools.sh builds
it from sigs.k8s.io/kueue) and a quota to queue our tuning Jobs against.

Why it is set up this way (the binary, the CRDs and the process as hack/managers.py says):
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
- The batch/job integration, and on request others (INTEGRATIONS): jobset.x-k8s.io/jobset admits a JobSet
  as one Workload. Kueue sets an integration up at start only if the API server serves its kind; else it
  defers it, polling with a growing backoff, so start_kueue wants the CRD served first (start JobSet's
  manager before Kueue). VisibilityOnDemand off (its API server would need a port and
  delegated authentication); metrics off; health and webhook servers on free loopback ports, so two
  control planes can each run a Kueue.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from hack import managers
from hack.cluster import ControlPlane, apply_crd, kube_json
from hack.processes import StackError, wait_for
from tuning_controller.conditions import find
from tuning_controller.kube import KubeError

MODULE = "sigs.k8s.io/kueue"
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"  # the storage version of every Kueue CRD in v0.17
NAMESPACE = "kueue-system"
QUEUE_LABEL = f"{GROUP}/queue-name"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
BATCH_JOB = "batch/job"
JOBSET = "jobset.x-k8s.io/jobset"
# Integrations besides batch/job, with the CRD that must be served when Kueue starts.
INTEGRATIONS = {JOBSET: "jobsets.jobset.x-k8s.io"}
# The CRDs whose conversion webhook kueue's cert rotator injects its CA into (pkg/util/cert).
CONVERTED_CRDS = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")

Kueue = managers.Manager


def kueue_binary() -> Path:
    return managers.manager_binary("kueue")


def crd_files(version: str) -> list[Path]:
    """Kueue's CRDs at `version`, from the Go module cache (downloaded there if missing)."""
    return managers.crd_files(MODULE, version)


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
    directory: Path,
    health_port: int,
    webhook_port: int,
    client_qps: float | None = None,
    integrations: Sequence[str] = (BATCH_JOB,),
) -> Path:
    """Kueue's Configuration with the job frameworks `integrations`; ``client_qps`` raises its API
    client's rate limit (QPS, burst 2x) from Kueue's defaults (20, 30)."""
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(directory / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True},
        "integrations": {"frameworks": list(integrations)},
        "featureGates": {"VisibilityOnDemand": False},
    }
    if client_qps:
        config["clientConnection"] = {"qps": client_qps, "burst": int(2 * client_qps)}
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def require_integration_crds(api: k8s_client.ApiClient, integrations: Sequence[str]) -> None:
    """Fail unless the CRD of each integration in INTEGRATIONS is installed: Kueue would start without its
    controller and set it up only at a later poll (see the module docstring)."""
    for name in integrations:
        crd = INTEGRATIONS.get(name)
        if crd is None:  # batch/job: built in
            continue
        try:
            kube_json(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        except KubeError as exc:
            if not exc.not_found:
                raise
            raise StackError(
                f"Kueue's {name} integration needs CRD {crd} installed before Kueue starts: start its "
                "controller first (hack/jobset.py running_jobset)"
            ) from None


def prepare_cluster(
    api: k8s_client.ApiClient, version: str, integrations: Sequence[str] = (BATCH_JOB,)
) -> None:
    """The integrations' CRDs checked, Kueue's CRDs, the `kueue-system` namespace and the empty Secret the
    cert rotator fills but does not create (upstream's install ships it empty too; without it kueue's
    start-up hangs)."""
    require_integration_crds(api, integrations)
    install_crds(api, version)
    managers.create_if_missing(api, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    managers.create_if_missing(
        api, f"/api/v1/namespaces/{NAMESPACE}/secrets", {"metadata": {"name": WEBHOOK_SECRET}}
    )


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


def start_kueue(
    plane: ControlPlane,
    max_seconds: int = 3600,
    timeout: float = 120,
    client_qps: float | None = None,
    integrations: Sequence[str] = (BATCH_JOB,),
) -> Kueue:
    """Prepare the cluster, start the manager with `integrations`, hand it its certificate, wait for its
    /readyz."""
    binary = kueue_binary()
    version = managers.binary_version(binary)
    return managers.start_manager(
        plane,
        binary,
        functools.partial(write_config, client_qps=client_qps, integrations=integrations),
        prepare=lambda api: prepare_cluster(api, version, integrations),
        max_seconds=max_seconds,
        timeout=timeout,
        certs_mounted=lambda api: mount_secret(api, plane.state_dir / "kueue" / "certs"),
    )


@contextmanager
def running_kueue(
    plane: ControlPlane,
    max_seconds: int = 3600,
    client_qps: float | None = None,
    integrations: Sequence[str] = (BATCH_JOB,),
) -> Iterator[Kueue]:
    """Kueue on `plane` for the `with` block; stopped by PID (SIGTERM, then SIGKILL) afterwards."""
    started = start_kueue(plane, max_seconds, client_qps=client_qps, integrations=integrations)
    with managers.stopped_after(started) as kueue:
        yield kueue


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

    def active(path: str) -> bool:
        return condition(kube_json(api, "GET", path), "Active").get("status") == "True"

    for path in (f"{root}/clusterqueues/{name}", f"{root}/namespaces/{namespace}/localqueues/{name}"):
        wait_for(functools.partial(active, path), 60, f"{path} to be Active")
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
    """The Workload Kueue made for the object with `owner_uid` (a Job, a JobSet), or None while there is
    none."""
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
