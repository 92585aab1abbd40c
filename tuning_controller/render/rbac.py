"""Least privilege for progress reports: a ServiceAccount per Workspace that may patch only its status.

    Role <ws>-tuning:  kaito.sh workspaces/status, resourceNames [<ws>], verbs get, patch

The train container alone mounts this account's token; the push container never sees it, and the
pre-flight pod has no token at all.
"""

from __future__ import annotations

from typing import Any

from contract.workspace import GROUP, Workspace
from tuning_controller.render.job import service_account_name
from tuning_controller.render.meta import metadata


def render_progress_rbac(ws: Workspace) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding (all named ``<ws>-tuning``, owned by the Workspace)."""
    name = service_account_name(ws)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(ws, name, "progress"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(ws, name, "progress"),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["workspaces/status"],
                    "resourceNames": [ws.name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(ws, name, "progress"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ws.namespace}],
        },
    ]
