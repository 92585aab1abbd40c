"""Live progress into the Workspace's ``status.tuning.progress`` (the held-out evaluation into
``status.tuning.evaluation``, the MLflow run into ``status.tuning.tracking``), patched by the train
container itself.

In the controller's pods the environment names the Workspace (``contract.pod``: KAITO_WORKSPACE_NAME,
_NAMESPACE, _API_VERSION) and the container mounts a token of the Workspace's own ServiceAccount, which
may patch that status and nothing else. A patch goes out at most every KAITO_PROGRESS_INTERVAL_S seconds
(default 15, capped at 30), plus at start, evaluation and end. Progress is informative: a failed patch
is logged, never raised, and training goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from contract.pod import (
    PROGRESS_INTERVAL_ENV,
    WORKSPACE_API_VERSION_ENV,
    WORKSPACE_NAME_ENV,
    WORKSPACE_NAMESPACE_ENV,
)
from contract.reports import ProgressEvent, progress_status
from contract.workspace import API_VERSIONS, PLURAL

log = logging.getLogger("trainer")

FIELD_MANAGER = "kaito-tune-trainer"
MAX_INTERVAL_S = 30.0
REQUEST_TIMEOUT_S = 30


@dataclass(frozen=True)
class WorkspaceRef:
    api_version: str  # group/version, e.g. kaito.sh/v1beta1
    namespace: str
    name: str


class WorkspaceStatusSink:
    """Patches ``status.tuning.progress`` of one Workspace, and ``evaluation`` and ``tracking`` when an
    event carries them (a JSON merge patch of the status subresource: the controller's own writes leave
    them alone)."""

    def __init__(
        self, api: client.CustomObjectsApi, workspace: WorkspaceRef, interval_s: float = 15.0
    ) -> None:
        self.api = api
        self.workspace = workspace
        self.interval_s = min(max(interval_s, 1.0), MAX_INTERVAL_S)
        self.last = 0.0

    def emit(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.event == "progress" and now - self.last < self.interval_s:
            return
        self.last = now
        ws = self.workspace
        group, version = ws.api_version.split("/", 1)
        tuning: dict[str, Any] = {"progress": progress_status(event, dt.datetime.now(dt.UTC))}
        if event.evaluation is not None:
            tuning["evaluation"] = event.evaluation
        if event.tracking is not None:
            tuning["tracking"] = event.tracking
        body = {"status": {"tuning": tuning}}
        try:
            self.api.patch_namespaced_custom_object_status(
                group,
                version,
                ws.namespace,
                PLURAL,
                ws.name,
                body,
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except Exception as exc:  # progress is informative: training must go on without it
            log.warning("progress: cannot patch Workspace %s/%s status: %s", ws.namespace, ws.name, exc)

    def close(self) -> None:
        return None


def status_sinks_from_env(env: Mapping[str, str] = os.environ) -> list[WorkspaceStatusSink]:
    """A sink when the controller named a Workspace (in its pods), else none."""
    name = env.get(WORKSPACE_NAME_ENV)
    if not name:
        return []
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        log.warning("progress: no in-cluster credentials (%s); status will not show progress", exc)
        return []
    workspace = WorkspaceRef(
        env.get(WORKSPACE_API_VERSION_ENV, API_VERSIONS[-1]),
        env.get(WORKSPACE_NAMESPACE_ENV, "default"),
        name,
    )
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    return [WorkspaceStatusSink(api, workspace, float(env.get(PROGRESS_INTERVAL_ENV, "15")))]
