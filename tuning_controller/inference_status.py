"""Inference Workspace status from the server's Deployment/StatefulSet and pods: pure functions, no client.

What the controller writes (``status.inference``; conditions beside it)::

    inference:
      workload: Deployment/my-ws     replicas: 1     readyReplicas: 0
      phase: Starting                message: "pull-my-adapter: error: unauthorized: ... (restarts: 2)"
      service: my-ws.default.svc:80  adapters: {my-adapter: "0.5"}
      model: {source: oci, reference: registry/repo@sha256:..., digest: sha256:...}

InferenceReady is True when every replica of the current template is ready (observedGeneration caught
up, updated == ready == desired); WorkspaceSucceeded follows it, as in KAITO. A pod whose init or server
container fails shows its termination message, so a bad pull secret or adapter is read off the
Workspace instead of hunted in pod logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuning_controller import conditions as c
from tuning_controller.render.model import FETCH_MODEL
from tuning_controller.status import model_summary

REASON_INFERENCE_READY = "WorkspaceInferenceStatusSuccess"  # KAITO
REASON_INFERENCE_NOT_READY = "InferenceNotReady"
REASON_INFERENCE_FAILING = "InferenceFailing"
READY, STARTING, FAILING = "Ready", "Starting", "Failing"
STATES = {READY: "Ready", STARTING: "Pending", FAILING: "NotReady"}
_WAITING_FAILURES = (
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
)


def _container_problem(status: Mapping[str, Any]) -> str | None:
    """``name: message`` for a container that failed or keeps failing; None when it is fine."""
    name = status.get("name", "?")
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    terminated = state.get("terminated") or {}
    waiting = state.get("waiting") or {}
    restarts = int(status.get("restartCount") or 0)
    suffix = f" (restarts: {restarts})" if restarts else ""
    if terminated and terminated.get("exitCode", 0) != 0:
        detail = (terminated.get("message") or terminated.get("reason") or "").strip()
        return f"{name}: exit {terminated.get('exitCode')}: {detail}{suffix}"
    if waiting.get("reason") in _WAITING_FAILURES:
        detail = (last.get("message") or waiting.get("message") or "").strip()
        return f"{name}: {waiting['reason']}: {detail}{suffix}".rstrip(": ")
    return None


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Failing containers of the pods, init containers first (they block the server)."""
    problems: list[str] = []
    for pod in pods:
        status = pod.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            problem = _container_problem(cs)
            if problem:
                problems.append(f"pod {pod['metadata']['name']}: {problem}")
    return problems


def pod_model(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The weights a server pod fetched: its fetch-model step's summary (source, pinned reference)."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == FETCH_MODEL and term.get("exitCode") == 0:
                summary = model_summary(term.get("message") or "")
                if summary:
                    return summary
    return None


def inference_status(
    workload: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    generation: int,
    now: str,
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(InferenceReady and WorkspaceSucceeded conditions, status.inference, status.state)."""
    spec = (workload or {}).get("spec") or {}
    status = (workload or {}).get("status") or {}
    desired = int(spec.get("replicas") or 1)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = workload is not None and status.get("observedGeneration") == workload["metadata"].get(
        "generation"
    )
    problems = pod_problems(pods)
    if current and ready >= desired and updated >= desired:
        phase, reason, message = READY, REASON_INFERENCE_READY, f"{ready}/{desired} server pods ready"
    elif problems:
        phase, reason, message = FAILING, REASON_INFERENCE_FAILING, "; ".join(problems)
    else:
        phase, reason = STARTING, REASON_INFERENCE_NOT_READY
        message = f"{ready}/{desired} server pods ready, {updated}/{desired} on the current template"
    ok = phase == READY
    conds = [
        c.condition(c.INFERENCE_READY, ok, reason, message, generation, now),
        c.condition(
            c.WORKSPACE_SUCCEEDED, ok, c.REASON_SUCCEEDED if ok else reason, message, generation, now
        ),
    ]
    summary = {
        "phase": phase,
        "message": c.clip(message),
        "replicas": desired,
        "readyReplicas": ready,
    }
    if workload is not None:
        summary["workload"] = f"{workload['kind']}/{workload['metadata']['name']}"
    return conds, summary, STATES[phase]
