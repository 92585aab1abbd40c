"""Manifests of Jobs and pods the pod executor can run, and waits on their outcome."""

from __future__ import annotations

from kubernetes import client as k8s_client

from tests.fixtures.cluster import kube_json, wait_for


def container(name: str, script: str, **extra) -> dict:
    return {"name": name, "image": "kaito-tune/runtime:local", "command": ["sh", "-c", script], **extra}


def job_manifest(name: str, script: str, backoff_limit: int = 0, **pod_spec) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [container("main", script)], **pod_spec}
            },
        },
    }


def job_condition(api: k8s_client.ApiClient, namespace: str, name: str, timeout: float = 60) -> dict:
    """The Job's first terminal condition (Complete or Failed) once the Job controller sets it."""

    def terminal() -> dict | None:
        job = kube_json(api, "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        for cond in job.get("status", {}).get("conditions") or []:
            if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
                return {**cond, "job": job}
        return None

    return wait_for(terminal, timeout, f"Job {namespace}/{name} to complete or fail")


def pod_done(api: k8s_client.ApiClient, namespace: str, name: str, timeout: float = 30) -> dict:
    def finished() -> dict | None:
        pod = kube_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    return wait_for(finished, timeout, f"pod {namespace}/{name} to finish")
