"""Input URLs reach fetch-data through a Secret, not the pod's argv.

A signed URL's query is a credential. In a container's argv it shows in ``kubectl get pod -o yaml``
(which Kubernetes' ``view`` role grants) and in every process listing on the node; a Secret is readable
only where Secrets are.

The controller never reads Secrets (the chart grants it ``create`` on them and nothing else), so it
cannot look at a namesake before using it: someone could create ``<ws>-input-<rev>`` first, with URLs of
their choosing. So the Secret is created blind (an existing one is left unread) and fetch-data checks
what it mounted against the sha256 of the URL list, which the controller puts in the argv (a digest of a
signed URL tells nothing of its token). One Secret per revision, immutable, owned by the Workspace:
Kubernetes deletes them with it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from contract.pod import INPUT_URLS_FILE, urls_sha256, urls_text
from contract.workspace import Workspace
from tuning_controller.render.meta import bounded_name, metadata

URLS_DIR, URLS_KEY = posixpath.split(INPUT_URLS_FILE)
VOLUME = "input-urls"


def secret_name(ws: Workspace, rev: str) -> str:
    """Per revision: changed URLs get a new Secret (they are immutable), the Jobs of one share it."""
    return bounded_name(ws.name, f"-input-{rev[:8]}")


def render_urls_secret(ws: Workspace, rev: str) -> dict[str, Any] | None:
    """The revision's URL list as a Secret; None when the input is not URLs."""
    tuning = ws.require_tuning()
    urls = tuning.input.urls if tuning.input else None
    if not urls:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(ws, secret_name(ws, rev), "input"),
        "type": "Opaque",
        "immutable": True,
        "stringData": {URLS_KEY: urls_text(urls)},
    }


def urls_volume(ws: Workspace, rev: str) -> dict[str, Any]:
    """Only the URL list, readable by the pods' group (fsGroup) and nobody else."""
    items = [{"key": URLS_KEY, "path": URLS_KEY}]
    secret = {"secretName": secret_name(ws, rev), "items": items, "defaultMode": 0o440}
    return {"name": VOLUME, "secret": secret}


def fetch_args(urls: Sequence[str]) -> list[str]:
    return ["--urls-file", INPUT_URLS_FILE, "--expect-urls-sha256", urls_sha256(urls)]
