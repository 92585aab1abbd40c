"""A multi-node tuning as a JobSet (jobset.x-k8s.io/v1alpha2), where the cluster runs JobSet's controller
(the setting multi_node_workload: jobset, or auto and the API server serves JobSets).

    <ws>          JobSet: one replicatedJob ``node`` (replicas 1) whose Job is the Indexed Job of N pods
                  that render.job makes; JobSet's controller creates it as <ws>-node-0 (pod i has the
                  host name <ws>-node-0-<i>) and the headless Service <ws>-workers (network.subdomain),
                  which the plain Indexed Job needs from us.
    <ws>-push     unchanged: a Job of its own once the JobSet completed.

Why one Indexed Job of N pods rather than N Jobs of one pod (Kubeflow Trainer's layout too): the node
rank stays ``JOB_COMPLETION_INDEX``, and the pod template, its failure rules and the status reading are
the Job's. What JobSet adds is the group restart: a failed pod fails the child Job (backoffLimit 0), and
JobSet recreates every child (failurePolicy: restartStrategy Recreate, maxRestarts the controller's
backoff limit), so all ranks restart together and resume from the newest checkpoint on the shared
claim. Kueue (its jobset integration) admits the JobSet as one workload: its queue label and ``suspend``
sit on the JobSet, not on the child.

Every field JobSet's defaulting webhook would set is written out, so the object means the same in a
cluster where that webhook is not reached.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
REPLICATED_JOB = "node"
JOBSET_UID_LABEL = "jobset.sigs.k8s.io/jobset-uid"  # on the child Jobs and their pods
_KUEUE_PREFIX = "kueue.x-k8s.io/"


def child_job_name(jobset_name: str) -> str:
    """The one Job JobSet's controller makes: ``<jobset>-<replicatedJob>-<job index>``."""
    return f"{jobset_name}-{REPLICATED_JOB}-0"


def as_jobset(job: Mapping[str, Any], subdomain: str, max_restarts: int) -> dict[str, Any]:
    """The Indexed training Job ``job`` as the one replicated Job of a JobSet of the same name, labels and
    annotations (the Workspace's owner reference included); ``subdomain`` names the headless Service
    JobSet makes, ``max_restarts`` bounds the group restarts."""
    meta = copy.deepcopy(dict(job["metadata"]))
    spec = copy.deepcopy(dict(job["spec"]))
    suspend = bool(spec.pop("suspend", False))
    ttl = spec.pop("ttlSecondsAfterFinished", None)
    spec["backoffLimit"] = 0  # any failed pod fails the child, and JobSet restarts the whole group
    child_labels = {k: v for k, v in meta.get("labels", {}).items() if not k.startswith(_KUEUE_PREFIX)}
    template = {
        "metadata": {"labels": child_labels, "annotations": dict(meta.get("annotations") or {})},
        "spec": spec,
    }
    jobset_spec: dict[str, Any] = {
        "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": template}],
        "network": {"enableDNSHostnames": True, "subdomain": subdomain, "publishNotReadyAddresses": True},
        "failurePolicy": {"maxRestarts": max_restarts, "restartStrategy": "Recreate"},
        "successPolicy": {"operator": "All", "targetReplicatedJobs": [REPLICATED_JOB]},
        "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
        "suspend": suspend,
    }
    if ttl:
        jobset_spec["ttlSecondsAfterFinished"] = ttl
    return {"apiVersion": JOBSET_API_VERSION, "kind": "JobSet", "metadata": meta, "spec": jobset_spec}
