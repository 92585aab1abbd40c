"""The Karpenter NodeClaim (karpenter.sh/v1) that brings up the GPU node of a Workspace's instanceType.

NodeClaims are cluster-scoped, so they cannot be owned by a namespaced Workspace: the controller finds
its claim by name (``<ws>-<hash of namespace/name>``, unique across namespaces, stable across restarts)
and deletes it when the training Job ends or the Workspace goes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from contract.workspace import GROUP, Workspace
from tuning_controller.render.meta import NAME_MAX, labels
from tuning_controller.render.pod import GPU_RESOURCE
from tuning_controller.settings import Settings

NODECLAIM_API_VERSION = "karpenter.sh/v1"
NAMESPACE_LABEL = f"{GROUP}/workspacenamespace"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


def nodeclaim_name(ws: Workspace) -> str:
    digest = hashlib.sha256(f"{ws.namespace}/{ws.name}".encode()).hexdigest()[:8]
    return f"{ws.name[: NAME_MAX - 9]}-{digest}"


def provisions_node(ws: Workspace, settings: Settings) -> bool:
    """Whether the controller brings up the Workspace's node (else it looks for a matching own node)."""
    return settings.auto_provisioning and ws.resource is not None and bool(ws.resource.instance_type)


def render_nodeclaim(ws: Workspace, settings: Settings) -> dict[str, Any]:
    """A NodeClaim for one node of ``resource.instanceType`` carrying the labelSelector's labels and a
    GPU taint, so only pods that tolerate GPUs (the tuning pod) land on it."""
    if ws.resource is None or not ws.resource.instance_type:
        raise ValueError(f"Workspace {ws.name!r} has no resource.instanceType to provision")
    selector = ws.resource.label_selector
    match_labels = dict(selector.match_labels) if selector else {}
    requirements: list[dict[str, Any]] = [
        {"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": [ws.resource.instance_type]},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    requirements += [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(match_labels.items())]
    return {
        "apiVersion": NODECLAIM_API_VERSION,
        "kind": "NodeClaim",
        "metadata": {
            "name": nodeclaim_name(ws),
            "labels": {**labels(ws, "gpu-node"), NAMESPACE_LABEL: ws.namespace, **match_labels},
        },
        "spec": {
            "nodeClassRef": {
                "group": settings.node_class_group,
                "kind": settings.node_class_kind,
                "name": settings.node_class_name,
            },
            "taints": [{"key": GPU_RESOURCE, "effect": "NoSchedule"}],
            "requirements": requirements,
            "resources": {"requests": {"storage": settings.node_disk_size}},
        },
    }
