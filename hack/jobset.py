"""JobSet for real on a local control plane: its CRD and its controller manager (hack/build-tools.sh builds
it from sigs.k8s.io/jobset), which turns a JobSet into child Jobs and a headless Service.

Why it is set up this way (the binary, the CRD and the process as hack/managers.py says):
- No webhook configurations are installed: the API server (no node, no Service routing) could not reach
  them. So nothing runs JobSet's defaulting webhook (pkg/webhooks/jobset_webhook.go `Default`), and a
  JobSet must carry what it sets; defaulted() fills it in. What the webhook sets, and what v0.11.1's
  controller does without it (seen on this control plane):
    spec.network: {}                    NEEDED: absent, every reconcile panics (nil pointer,
                                        dnsHostnamesEnabled): no child, no status
    spec.network.enableDNSHostnames: true
                                        NEEDED for rendezvous: absent, no headless Service and no pod
                                        subdomain
    spec.successPolicy: {operator: All} NEEDED: absent, the reconcile panics once a child Job succeeds
                                        (success_policy.go): the JobSet never completes
    replicatedJobs[].template.spec.template.spec.restartPolicy: OnFailure
                                        NEEDED: empty, the API server rejects the child Job
                                        (restartPolicy: Required value; event JobCreationFailed)
    replicatedJobs[].template.spec.completionMode: Indexed
                                        NEEDED for ranks: absent, the child is NonIndexed (the Job
                                        default): no completion index, no stable pod hostnames
    spec.network.publishNotReadyAddresses: true
                                        not needed: the controller takes true when absent
    spec.startupPolicy: {startupPolicyOrder: AnyOrder}
                                        not needed: absent is AnyOrder to the controller
    spec.failurePolicy.rules[i].name: failurePolicyRule<i>
                                        the CRD requires it: the API server rejects a rule without
    spec.volumeClaimPolicies[].retentionPolicy: {whenDeleted: Delete}
                                        absent, the PVCs stay when the JobSet is deleted
  network, successPolicy, startupPolicy and failurePolicy are immutable (CRD rules): set them at create.
  The CRD's own schema defaults (replicatedJobs[].replicas 1, replicatedJobs[].groupName "default",
  failurePolicy.restartStrategy Recreate) are applied by the API server. The validating webhook (name
  lengths, subdomain format) does not run either.
- Internal cert management is OFF. On, its cert rotator waits for the certificate in the hard-coded
  /tmp/k8s-webhook-server/serving-certs (shared by every JobSet manager on the machine, unless each ran
  in a mount namespace of its own); off, the webhook server reads the certDir of the config, here a
  fresh self-signed certificate in the state dir, and /readyz waits only for that server to listen. With
  metrics off (bindAddress "0") nothing else needs a certificate.
- Leader election off; health and webhook servers on free loopback ports, so two control planes can each
  run a JobSet manager (one per cluster: two on one cluster would both reconcile).
- kube-controller-manager's garbage collector notices a CRD installed after it started only at its next
  discovery resync (30 s): until then deleting a JobSet leaves its Jobs and Service behind (41 s after a
  delete right after install, 0.2 s later on). A test that deletes JobSets soon after install deletes
  the children itself, or waits.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from hack import managers
from hack.cluster import ControlPlane, apply_crd, kube_json
from hack.processes import wait_for
from hack.servers import self_signed
from tuning_controller.kube import KubeError

MODULE = "sigs.k8s.io/jobset"
GROUP = "jobset.x-k8s.io"
API_VERSION = f"{GROUP}/v1alpha2"
# Labels (and annotations) the controller puts on child Jobs and their pods.
LABEL_PREFIX = "jobset.sigs.k8s.io/"
JOBSET_NAME_LABEL = f"{LABEL_PREFIX}jobset-name"
REPLICATED_JOB_LABEL = f"{LABEL_PREFIX}replicatedjob-name"
JOB_INDEX_LABEL = f"{LABEL_PREFIX}job-index"
JOB_GLOBAL_INDEX_LABEL = f"{LABEL_PREFIX}job-global-index"
RESTART_ATTEMPT_LABEL = f"{LABEL_PREFIX}restart-attempt"

JobSet = managers.Manager


def jobset_binary() -> Path:
    return managers.manager_binary("jobset")


def install_crds(api: k8s_client.ApiClient, version: str) -> list[str]:
    """Apply JobSet's CRD and wait until it is Established and served; returns its name. See the module
    docstring for the garbage collector's 30 s delay after a first install."""
    import yaml

    return [
        apply_crd(api, yaml.safe_load(path.read_text()))["metadata"]["name"]
        for path in managers.crd_files(MODULE, version)
    ]


def uninstall_crds(api: k8s_client.ApiClient) -> None:
    """Delete JobSet's CRD (and with it every JobSet) and wait until it is no longer served, so that a
    controller started afterwards on the same cluster sees no JobSets (multi_node_workload auto)."""
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/jobsets.{GROUP}"
    try:
        kube_json(api, "DELETE", path)
    except KubeError as exc:
        if not exc.not_found:
            raise

    def gone() -> bool:
        try:
            kube_json(api, "GET", path)
        except KubeError as exc:
            return exc.not_found
        return False

    wait_for(gone, 120, f"CRD jobsets.{GROUP} to be deleted")


def write_config(directory: Path, health_port: int, webhook_port: int) -> Path:
    """JobSet's Configuration (config.jobset.x-k8s.io/v1alpha1) and a fresh self-signed certificate in
    ``directory/certs`` for its webhook server (tls.crt and tls.key, the names it reads)."""
    self_signed(directory / "certs")
    config = {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(directory / "certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def start_jobset(plane: ControlPlane, max_seconds: int = 3600, timeout: float = 120) -> JobSet:
    """Install the CRD, start the manager with a fresh certificate, wait for its /readyz."""
    binary = jobset_binary()
    version = managers.binary_version(binary)
    return managers.start_manager(
        plane, binary, write_config, lambda api: install_crds(api, version), max_seconds, timeout
    )


@contextmanager
def running_jobset(plane: ControlPlane, max_seconds: int = 3600) -> Iterator[JobSet]:
    """JobSet's manager on `plane` for the `with` block; stopped by PID (SIGTERM, then SIGKILL)
    afterwards. Deleting a JobSet cascades to its children only some 30 s after a first install (see the
    module docstring)."""
    with managers.stopped_after(start_jobset(plane, max_seconds)) as jobset:
        yield jobset


def defaulted(jobset: dict[str, Any]) -> dict[str, Any]:
    """A copy of `jobset` with what JobSet's defaulting webhook would have set (the module docstring
    lists it, and which of it the controller needs)."""
    out = copy.deepcopy(jobset)
    spec = out["spec"]
    spec.setdefault("successPolicy", {"operator": "All"})
    spec.setdefault("startupPolicy", {"startupPolicyOrder": "AnyOrder"})
    network = spec.setdefault("network", {})
    network.setdefault("enableDNSHostnames", True)
    network.setdefault("publishNotReadyAddresses", True)
    for rjob in spec.get("replicatedJobs") or []:
        job_spec = rjob["template"]["spec"]
        job_spec.setdefault("completionMode", "Indexed")
        pod_spec = job_spec["template"]["spec"]
        pod_spec["restartPolicy"] = pod_spec.get("restartPolicy") or "OnFailure"
    for i, rule in enumerate((spec.get("failurePolicy") or {}).get("rules") or []):
        rule["name"] = rule.get("name") or f"failurePolicyRule{i}"
    for policy in spec.get("volumeClaimPolicies") or []:
        policy.setdefault("retentionPolicy", {"whenDeleted": "Delete"})
    return out
