"""Issue 15's node-backed fault suite: benchmarks/fault_suite.py --node --quick on a local cluster of its
own with the node, the chart's operator and the authenticated registry, the tiny preset really training:
the operator SIGKILLed mid-run, kube-apiserver and etcd restarted mid-training, the registry down for 30 s
mid-push and answering 500, the finished Job and the user's ConfigMap deleted after success. Every
Workspace ends right (Succeeded with the registry's digest, one training Job), nothing is duplicated and no
secret shows up in a status, an Event, an object, the operator's log or a container log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]


def test_quick_node_fault_suite_ends_every_workspace_right():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fault_suite.py"), "--node", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    faults = result["faults"]
    assert set(faults) == {
        "operator_sigkill_training",
        "api_server_restart_training",
        "etcd_restart_training",
        "registry_down_mid_push",
        "registry_500",
        "finished_job_deleted",
        "configmap_deleted_after_training",
    }
    assert all(f["injected"] > 0 for f in faults.values()), faults
    assert result["secrets_found"] == 0, result["secrets_where"]
    assert not result["nodeclaims_left"]
    assert all(f.get("duplicates", 0) == 0 for f in faults.values()), faults
    assert result["all_right"], json.dumps(faults, indent=1)
