"""Pod parts the tuning Jobs and the inference server share: security, mounts, GPU placement.

Every container runs without privilege escalation and with no capabilities; pods run as the images'
non-root user (``Settings.run_as_user``) under the runtime's default seccomp profile.
"""

from __future__ import annotations

from typing import Any

from contract.workspace import LabelSelector
from tuning_controller.settings import TORCH_DIST_PORT, Settings

GPU_RESOURCE = "nvidia.com/gpu"


def rendezvous_service_spec(selector: dict[str, str]) -> dict[str, Any]:
    """A headless Service for torch distributed rendezvous (multi-node tuning and inference): it gives
    the selected pods their DNS names, published before they are ready, as the workers look the leader
    (pod 0) up while it is still starting."""
    return {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": selector,
        "ports": [{"name": "torch-dist", "port": TORCH_DIST_PORT, "targetPort": TORCH_DIST_PORT}],
    }


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_security(settings: Settings) -> dict[str, Any]:
    uid = settings.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tools_container(
    name: str, command: list[str], mounts: list[dict[str, Any]], settings: Settings
) -> dict[str, Any]:
    """A step in the tools image (fetch-data, fetch-model, push, adapter pulls): small, no torch, and its
    one-line failure reason in the termination message."""
    return {
        "name": name,
        "image": settings.tools_image,
        "command": command,
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    }


def plain_http_args(settings: Settings, image: str) -> list[str]:
    """``--plain-http`` for a tools command that talks to ``image``'s registry, when it is insecure."""
    return ["--plain-http"] if settings.is_insecure_registry(image) else []


def mount(name: str, path: str, read_only: bool = False, sub_path: str = "") -> dict[str, Any]:
    volume_mount: dict[str, Any] = {"name": name, "mountPath": path}
    if read_only:
        volume_mount["readOnly"] = True
    if sub_path:
        volume_mount["subPath"] = sub_path
    return volume_mount


def gpu_resources(gpus: int) -> dict[str, Any]:
    return {"requests": {GPU_RESOURCE: str(gpus)}, "limits": {GPU_RESOURCE: str(gpus)}}


def gpu_tolerations() -> list[dict[str, Any]]:
    """GPU nodes (the controller's NodeClaims, AKS GPU pools) carry this taint."""
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def scratch_volume(name: str, size_limit: str) -> dict[str, Any]:
    """An emptyDir bounded by ``size_limit``: the kubelet evicts a pod that writes more, instead of the
    node's disk filling up for every pod on it."""
    return {"name": name, "emptyDir": {"sizeLimit": size_limit}}


def shared_memory_volume() -> dict[str, Any]:
    """/dev/shm for PyTorch (DataLoader workers, NCCL's intra-node transport). Memory-backed, so it counts
    against the container's memory and needs no sizeLimit of its own: NCCL's need grows with the GPUs."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def docker_config_volume(name: str, secret: str) -> dict[str, Any]:
    """A kubernetes.io/dockerconfigjson Secret as a volume holding only ``.dockerconfigjson``."""
    return {
        "name": name,
        "secret": {
            "secretName": secret,
            "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
        },
    }


def node_affinity(selector: LabelSelector | None) -> dict[str, Any] | None:
    """Required node affinity from the Workspace's labelSelector (matchLabels and matchExpressions)."""
    if selector is None:
        return None
    expressions = [
        {"key": key, "operator": "In", "values": [value]}
        for key, value in sorted(selector.match_labels.items())
    ]
    for req in selector.match_expressions:
        expr: dict[str, Any] = {"key": req.key, "operator": req.operator}
        if req.operator in ("In", "NotIn"):
            expr["values"] = list(req.values)
        expressions.append(expr)
    if not expressions:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }
