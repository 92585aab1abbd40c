"""The labels, owner and metadata every object rendered for a Workspace carries.

Labels let ``kubectl get -l kaito.sh/workspace=<ws>`` find everything of one Workspace; the owner
reference makes Kubernetes delete the namespaced objects with their Workspace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from contract.workspace import GROUP, Workspace

WORKSPACE_LABEL = f"{GROUP}/workspace"
NAME_MAX = 63  # DNS label: Job names end up in their pods' job-name label, container names are labels


def bounded_name(name: str, suffix: str = "") -> str:
    """``<name><suffix>``, with ``name`` cut and a hash of the whole added when it would exceed 63
    characters (distinct long names stay distinct; the suffix stays readable)."""
    full = f"{name}{suffix}"
    if len(full) <= NAME_MAX:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{name[: NAME_MAX - len(suffix) - 9]}-{digest}{suffix}"


def labels(ws: Workspace, component: str) -> dict[str, str]:
    """app.kubernetes.io labels shared by every object rendered for a Workspace."""
    return {
        "app.kubernetes.io/name": "kaito-tune",
        "app.kubernetes.io/instance": ws.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "kaito-tune",
        "app.kubernetes.io/part-of": "kaito",
        WORKSPACE_LABEL: ws.name,
    }


def owner_references(ws: Workspace) -> list[dict[str, Any]]:
    """The Workspace as controlling owner, when it has a uid (objects read from the API server do)."""
    uid = ws.metadata.get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": ws.api_version,
            "kind": ws.kind,
            "name": ws.name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def metadata(
    ws: Workspace, name: str, component: str, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A namespaced object's metadata: name, the Workspace's namespace, labels, owner."""
    meta: dict[str, Any] = {"name": name, "namespace": ws.namespace, "labels": labels(ws, component)}
    if annotations:
        meta["annotations"] = dict(annotations)
    owners = owner_references(ws)
    if owners:
        meta["ownerReferences"] = owners
    return meta
