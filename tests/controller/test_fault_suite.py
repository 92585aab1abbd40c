"""Issue 15's fault suite without a node: benchmarks/fault_suite.py --quick (hostile Workspaces, the
operator SIGKILLed mid-burst, Workspaces deleted mid-reconcile, kube-apiserver restarted mid-burst)
against a control plane of its own; every Workspace ends right, nothing is duplicated or orphaned and
no secret shows up in a status, an Event, an object the controller made or the operator's log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.own_cluster
def test_quick_fault_suite_ends_every_workspace_right():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fault_suite.py"), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    faults = result["faults"]
    assert result["secrets_found"] == 0, result["secrets_where"]
    assert result["nodeclaims_left"] == 0, json.dumps(faults["deleted_mid_reconcile"])
    assert all(f.get("duplicates", 0) == 0 for f in faults.values()), faults
    assert result["all_right"], json.dumps(faults, indent=1)
