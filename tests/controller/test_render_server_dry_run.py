"""Every object `kaito-tune render` prints is accepted by the real API server (dry run)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.api.builders import write_seed
from tests.controller.conftest import REPO_ROOT
from tests.fixtures.cluster import kube_json
from tuning_controller.kube import resource_path


def test_rendered_objects_pass_server_side_dry_run(kube_client, namespace, nodeclaim_crd, tmp_path):
    """KAITO's tuning example as a user applies it (its placeholder output image replaced)."""
    example = write_seed(tmp_path)
    env = {**os.environ, "KAITO_TUNE_AUTO_PROVISIONING": "true", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "tuning_controller.cli", "render", str(example)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    objects = list(yaml.safe_load_all(out.stdout))
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
    for obj in objects:
        meta = obj["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespace
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        created = kube_json(kube_client, "POST", f"{path}?dryRun=All", obj)
        assert created["metadata"]["name"] == meta["name"]
