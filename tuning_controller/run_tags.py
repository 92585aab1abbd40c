"""The pushed adapter's reference (image@digest) in the Workspace's MLflow run.

The trainer logs the run, but the digest exists only after the push, which runs after the trainer
exited, in the tools image, without MLflow or the tracker's credentials. The controller sees the digest
first (the push container's termination message, ``status.tuning.adapter``), so it tags the run: one
``runs/set-tag`` call of MLflow's REST API, by ``requests`` (the controller image has no MLflow client:
mlflow-skinny would bring some thirty packages for one POST). Credentials come from the controller's own
environment under MLflow's names (MLFLOW_TRACKING_TOKEN, or _USERNAME and _PASSWORD: the chart maps the
``settings.mlflow.credentialsSecret`` of the release's namespace), never from the Workspaces' Secrets,
which the controller may not read.

One call per pushed adapter, bounded: up to ``ATTEMPTS`` tries of ``TIMEOUT_S`` each, on a refused or
dropped connection or an answer that says "try again" (429, 502-504), backing off 0, 2 and 4 s (setting
the same tag twice is harmless, so the POST may be retried). The tag is recorded in
``status.tuning.tracking.adapter``; a failure goes into ``status.tuning.tracking.error`` and is not tried
again later (as a tracking failure in the trainer: a tracker never holds a Workspace up).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from artifacts.reference import Reference

ADAPTER_TAG = "kaito.sh/adapter"  # the pushed adapter, image@sha256:...
TIMEOUT_S = 10.0
ATTEMPTS = 4
RETRY = Retry(
    total=ATTEMPTS - 1,
    backoff_factor=1.0,  # urllib3: no wait before the first retry, then 2 s, 4 s
    status_forcelist=(429, 502, 503, 504),
    allowed_methods=None,  # POST too: set-tag is idempotent
    raise_on_status=False,  # the last answer is reported as it came
)
ERROR_PREFIX = "the adapter's digest was not logged to the run"


@dataclass(frozen=True)
class AdapterTag:
    """A run to tag with the pushed adapter's reference."""

    uri: str
    run_id: str
    reference: str


def adapter_tag_due(tuning: Mapping[str, Any]) -> AdapterTag | None:
    """The tag to set once a tracked revision's adapter is pushed: not yet done (``tracking.adapter``)
    nor tried (``tracking.error``, which also stands when the trainer's tracking stopped)."""
    tracking, adapter = tuning.get("tracking") or {}, tuning.get("adapter") or {}
    if tuning.get("phase") != "Succeeded" or not adapter.get("digest") or not adapter.get("image"):
        return None
    if (
        not tracking.get("runId")
        or not tracking.get("uri")
        or tracking.get("adapter")
        or tracking.get("error")
    ):
        return None
    # the tag goes: the digest names the content
    reference = Reference.parse(adapter["image"]).with_digest(adapter["digest"])
    return AdapterTag(tracking["uri"], tracking["runId"], str(reference))


def auth_headers(env: Mapping[str, str]) -> dict[str, str]:
    """MLflow's client rules: a token is a bearer token; else a user and password are basic auth."""
    if env.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"}
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def set_adapter_tag(tag: AdapterTag, env: Mapping[str, str] = os.environ) -> None:
    """Tag the run; raises RuntimeError saying what MLflow answered."""
    url = f"{tag.uri.rstrip('/')}/api/2.0/mlflow/runs/set-tag"
    body = {"run_id": tag.run_id, "key": ADAPTER_TAG, "value": tag.reference}
    with requests.Session() as session:
        session.mount(tag.uri, HTTPAdapter(max_retries=RETRY))
        try:
            answer = session.post(url, json=body, headers=auth_headers(env), timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
    if answer.status_code != 200:
        raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")


def tracking_patch(ws_obj: Mapping[str, Any], tag: AdapterTag, error: str | None) -> dict[str, Any]:
    """The status patch that records the attempt, conditional on the Workspace's resourceVersion (a new
    revision meanwhile resets tracking, and this record must not land on it)."""
    record = {"error": f"{ERROR_PREFIX}: {error}"[:500]} if error else {"adapter": tag.reference}
    return {
        "metadata": {"resourceVersion": ws_obj["metadata"]["resourceVersion"]},
        "status": {"tuning": {"tracking": record}},
    }
