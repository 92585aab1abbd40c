"""The Karpenter NodeClaim (karpenter.sh/v1) that brings up the GPU node of a Workspace's instanceType.

NodeClaims are cluster-scoped, so they cannot be owned by a namespaced Workspace: the controller finds
its claim by name (``<ws>-<hash of namespace/name>``, unique across namespaces, stable across restarts)
and deletes it when the training Job ends or the Workspace goes. The claim carries the Workspace's
labels and its uid as an annotation (``kaito.sh/workspace-uid``): a claim of that name with another uid
(a deleted namesake Workspace's), or made by someone else, is never read as the Workspace's, nor
deleted (``claimed_by``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from contract.workspace import GROUP, Workspace
from tuning_controller.render import node_count
from tuning_controller.render.meta import NAME_MAX, WORKSPACE_LABEL, labels
from tuning_controller.render.pod import GPU_RESOURCE
from tuning_controller.settings import Settings

NODECLAIM_API_VERSION = "karpenter.sh/v1"
NAMESPACE_LABEL = f"{GROUP}/workspacenamespace"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
OWNER_ANNOTATION = f"{GROUP}/workspace-uid"
NODE_IMAGE_FAMILY_ANNOTATION = f"{GROUP}/node-image-family"


def nodeclaim_name(ws: Workspace, index: int = 0) -> str:
    """The name of the Workspace's ``index``-th NodeClaim (resource.count nodes: 0..count-1)."""
    digest = hashlib.sha256(f"{ws.namespace}/{ws.name}".encode()).hexdigest()[:8]
    suffix = f"-{index}" if index else ""
    return f"{ws.name[: NAME_MAX - 9 - len(suffix)]}-{digest}{suffix}"


def nodeclaim_names(ws: Workspace) -> list[str]:
    """Every NodeClaim name of a Workspace: one per node of resource.count (a multi-node training's pods,
    or an inference StatefulSet's)."""
    return [nodeclaim_name(ws, i) for i in range(node_count(ws))]


def nodeclaim_selector(ws: Workspace) -> str:
    """The labels every NodeClaim of the Workspace carries, as a list's label selector."""
    return f"{WORKSPACE_LABEL}={ws.name},{NAMESPACE_LABEL}={ws.namespace}"


def surplus_nodeclaims(ws: Workspace, uid: str, found: Iterable[Mapping[str, Any]]) -> list[str]:
    """The Workspace's NodeClaims among ``found`` (listed by ``nodeclaim_selector``) beyond its
    resource.count: what a larger count requested, each a GPU node billing for nothing."""
    wanted = set(nodeclaim_names(ws))
    return sorted(
        claim["metadata"]["name"]
        for claim in found
        if claim["metadata"]["name"] not in wanted and claimed_by(claim, ws.namespace, ws.name, uid)
    )


def provisions_node(ws: Workspace, settings: Settings) -> bool:
    """Whether the controller brings up the Workspace's node (else it looks for a matching own node)."""
    return settings.auto_provisioning and ws.resource is not None and bool(ws.resource.instance_type)


def claimed_by(claim: Mapping[str, Any], namespace: str, name: str, uid: str) -> bool:
    """Whether ``claim`` is the NodeClaim of the Workspace ``namespace/name`` with ``uid``: its owner
    annotation names that uid. A claim without the annotation (made before the controller wrote it)
    counts when the controller's labels name the Workspace."""
    meta = claim.get("metadata") or {}
    owner = (meta.get("annotations") or {}).get(OWNER_ANNOTATION)
    if owner:
        return bool(uid) and owner == uid
    found = meta.get("labels") or {}
    return (
        found.get("app.kubernetes.io/managed-by") == "kaito-tune"
        and found.get(WORKSPACE_LABEL) == name
        and found.get(NAMESPACE_LABEL) == namespace
    )


def render_nodeclaim(ws: Workspace, settings: Settings, index: int = 0) -> dict[str, Any]:
    """A NodeClaim for one node of ``resource.instanceType`` (the ``index``-th of a multi-node tuning)
    carrying the labelSelector's labels and a GPU taint, so only pods that tolerate GPUs (the tuning
    pods) land on it."""
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
    meta: dict[str, Any] = {
        "name": nodeclaim_name(ws, index),
        # the controller's labels last: a matchLabel cannot pass for them (validation refuses such keys)
        "labels": {**match_labels, **labels(ws, "gpu-node"), NAMESPACE_LABEL: ws.namespace},
    }
    annotations = {}
    uid = ws.metadata.get("uid")
    if uid:
        annotations[OWNER_ANNOTATION] = uid
    family = (ws.metadata.get("annotations") or {}).get(NODE_IMAGE_FAMILY_ANNOTATION)
    if family:  # KAITO's: the node class provisions this OS image (validated: ubuntu or azurelinux)
        annotations[NODE_IMAGE_FAMILY_ANNOTATION] = str(family).lower()
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": NODECLAIM_API_VERSION,
        "kind": "NodeClaim",
        "metadata": meta,
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
