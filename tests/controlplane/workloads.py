"""Manifests of Jobs for the manifest checks (hack/check-manifests.sh)."""

from __future__ import annotations


def container(name: str, script: str, **extra) -> dict:
    return {
        "name": name,
        "image": "ghcr.io/kaito-tune/runtime:0.1.0",
        "command": ["sh", "-c", script],
        **extra,
    }


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
