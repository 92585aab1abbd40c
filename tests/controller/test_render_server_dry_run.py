"""Every object `kaito-tune render` prints is accepted by the real API server (dry run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.api.builders import write_seed
from tests.controller.conftest import REPO_ROOT
from tests.fixtures.cluster import kube_json
from tuning_controller.kube import resource_path


def rendered(example: Path, **env: str) -> list[dict]:
    """What `kaito-tune render` prints for ``example`` (KAITO_TUNE_* settings in ``env``)."""
    out = subprocess.run(
        [sys.executable, "-m", "tuning_controller.cli", "render", str(example)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    return list(yaml.safe_load_all(out.stdout))


def dry_run(kube_client, namespace: str, objects: list[dict]) -> list[dict]:
    """Each object POSTed with dryRun=All in ``namespace`` (cluster-scoped ones as they are); the
    server's answers."""
    accepted = []
    for obj in objects:
        meta = obj["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespace
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        accepted.append(kube_json(kube_client, "POST", f"{path}?dryRun=All", obj))
        assert accepted[-1]["metadata"]["name"] == meta["name"]
    return accepted


def test_rendered_objects_pass_server_side_dry_run(kube_client, namespace, nodeclaim_crd, tmp_path):
    """KAITO's tuning example as a user applies it (its placeholder output image replaced), tracked in
    MLflow with credentials (the train container's secretKeyRef variables)."""
    objects = rendered(
        write_seed(tmp_path),
        KAITO_TUNE_AUTO_PROVISIONING="true",
        KAITO_TUNE_MLFLOW_TRACKING_URI="http://mlflow.mlflow:5000",
        KAITO_TUNE_MLFLOW_CREDENTIALS_SECRET="mlflow-auth",
    )
    kinds = [o["kind"] for o in objects]
    assert kinds == [
        "ConfigMap",
        "Secret",  # the input URLs
        "Job",
        "NodeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Job",
    ]
    dry_run(kube_client, namespace, objects)


def test_multi_node_objects_pass_server_side_dry_run(kube_client, namespace):
    """examples/tuning/multi-node.yaml: the headless Service, the Indexed Job and the push Job."""
    objects = rendered(REPO_ROOT / "examples" / "tuning" / "multi-node.yaml")
    ws = "workspace-tuning-multi-node"
    assert [(o["kind"], o["metadata"]["name"]) for o in objects][-4:] == [
        ("Service", f"{ws}-workers"),
        ("PersistentVolumeClaim", f"{ws}-results"),
        ("Job", ws),
        ("Job", f"{ws}-push"),
    ]
    indexed = dry_run(kube_client, namespace, objects)[-2]["spec"]
    assert (indexed["completionMode"], indexed["completions"], indexed["parallelism"]) == ("Indexed", 2, 2)
