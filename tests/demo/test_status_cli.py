"""`kaito-tune status`: the pure view of a Workspace (lines, bar fields, outcome), the watch loop on a
scripted sequence, and the command against the local control plane while a status is patched."""

from __future__ import annotations

import io
import subprocess
import sys
import time

from contract.reports import evaluation_status, tracking_status
from tests.controller.conftest import API, REPO_ROOT, tuning_workspace
from tests.fixtures.cluster import kube_json, wait_for
from tuning_controller.cli_status import bar_fields, outcome, status_lines, watch

PROGRESS = {
    "step": 40,
    "totalSteps": 120,
    "percent": 33,
    "loss": 1.23456,
    "evalLoss": 1.5,
    "tokensPerSecond": 812.4,
    "etaSeconds": 3725,
}


def workspace(phase: str, succeeded: str = "Unknown", progress: dict | None = None, **tuning) -> dict:
    return {
        "metadata": {"name": "demo", "namespace": "team-a"},
        "status": {
            "state": "Running",
            "conditions": [
                {
                    "type": "WorkspaceSucceeded",
                    "status": succeeded,
                    "reason": "Busy",
                    "message": "train",
                }
            ],
            "tuning": {"phase": phase, **({"progress": progress} if progress else {}), **tuning},
        },
    }


def test_bar_fields_show_step_loss_eval_rate_and_eta():
    bar = bar_fields(PROGRESS)
    assert (bar.step, bar.total) == (40, 120)
    assert bar.postfix == "loss=1.235 eval_loss=1.5 tok/s=812 ETA 1:02:05"
    assert bar_fields({"step": 0, "totalSteps": 0}) is None and bar_fields(None) is None
    assert bar_fields({"step": 3, "totalSteps": 9, "etaSeconds": 75}).postfix == "ETA 1:15"


def test_status_lines_name_every_part():
    ws = workspace(
        "Succeeded",
        "True",
        PROGRESS,
        data={"ok": True, "rows": 96, "sha256": "ab" * 32},
        adapter={"image": "127.0.0.1:5000/adapters/demo:v1", "digest": "sha256:" + "c" * 64},
        message="pushed",
    )
    lines = status_lines(ws)
    assert lines[0] == "Workspace team-a/demo: Running"
    assert "  WorkspaceSucceeded=True (Busy) - train" in lines
    assert "Tuning phase: Succeeded" in lines
    assert "Data check: ok, 96 rows, sha256 abababababab" in lines
    split = workspace("Training", data={"ok": True, "rows": 96, "evalRows": 24, "evalFiles": []})
    assert "Data check: ok, 96 rows, 24 held out" in status_lines(split)
    files = workspace("Training", data={"ok": True, "rows": 30, "evalRows": 6, "evalFiles": ["eval.parquet"]})
    assert "Data check: ok, 30 rows, 6 held out (eval.parquet)" in status_lines(files)
    assert f"Adapter: 127.0.0.1:5000/adapters/demo:v1@sha256:{'c' * 64}" in lines
    assert "Progress: step 40/120 loss=1.235 eval_loss=1.5 tok/s=812 ETA 1:02:05" in lines
    assert lines[-1] == "Message: pushed"


def test_status_lines_show_the_evaluation_base_then_adapter():
    base = "Evaluation: held-out loss on 24 rows: base 2.312 (perplexity 10.1)"
    during = workspace("Training", evaluation=evaluation_status(2.3125, None, 24))
    assert f"{base}, the adapter's after the last step" in status_lines(during)
    done = workspace("Succeeded", "True", evaluation=evaluation_status(2.3125, 0.84, 24))
    assert f"{base} -> adapter 0.84 (perplexity 2.316)" in status_lines(done)
    nothing_held_out = workspace("Succeeded", "True", evaluation=evaluation_status(None, None, 0))
    assert any(
        line.startswith("Evaluation: none: no held-out rows") for line in status_lines(nothing_held_out)
    )
    assert not any(line.startswith("Evaluation") for line in status_lines(workspace("Training")))


def test_status_lines_show_the_mlflow_run_and_why_tracking_stopped():
    run = tracking_status("http://mlflow:5000", "kaito-tune", "4f1c")
    tracked = status_lines(workspace("Training", tracking=run))
    assert "Tracking: MLflow run 4f1c in experiment 'kaito-tune' at http://mlflow:5000" in tracked
    refused = workspace(
        "Training", tracking=tracking_status("http://mlflow:5000", "x", None, "starting: 403")
    )
    assert "Tracking: MLflow experiment 'x' at http://mlflow:5000; stopped: starting: 403" in status_lines(
        refused
    )
    assert not any(line.startswith("Tracking") for line in status_lines(workspace("Training")))


def test_outcome_follows_workspace_succeeded():
    assert outcome(workspace("Training")) is None
    assert outcome(workspace("Succeeded", "True")) == 0
    assert outcome(workspace("Failed", "False")) == 1
    assert outcome({"metadata": {}}) is None


def test_watch_draws_the_bar_until_the_workspace_fails():
    states = iter(
        [
            workspace("Pending"),
            workspace("Training", progress={**PROGRESS, "step": 10}),
            workspace("Training", progress={**PROGRESS, "step": 60}),
            workspace("Failed", "False", progress={**PROGRESS, "step": 60}),
        ]
    )
    out = io.StringIO()
    code, last = watch(lambda: next(states), out=out, interval_s=0)
    text = out.getvalue()
    assert code == 1 and last["status"]["tuning"]["phase"] == "Failed"
    assert "phase: Pending" in text and "phase: Training" in text and "phase: Failed" in text
    assert "60/120" in text and "loss=1.235" in text


def test_watch_on_the_control_plane(kube_client, namespace, workspace_crd, control_plane):
    """The command follows a Workspace whose status is patched as the trainer and controller would."""
    kube_json(
        kube_client, "POST", f"{API}/namespaces/{namespace}/workspaces", tuning_workspace("w", namespace)
    )
    path = f"{API}/namespaces/{namespace}/workspaces/w/status"

    def patch(status: dict) -> None:
        kube_json(kube_client, "PATCH", path, {"status": status}, "application/merge-patch+json")

    patch({"tuning": {"phase": "Training", "progress": {**PROGRESS, "step": 5}}})
    command = [sys.executable, "-m", "tuning_controller.cli", "status", "w", "-n", namespace, "--watch"]
    command += ["--kubeconfig", str(control_plane.kubeconfig), "--interval", "0.2"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        patch({"tuning": {"progress": {**PROGRESS, "step": 120}}})
        time.sleep(1)
        condition = {"type": "WorkspaceSucceeded", "status": "True", "reason": "WorkspaceSucceeded"}
        condition |= {"message": "tuning succeeded", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        patch({"conditions": [condition], "tuning": {"phase": "Succeeded"}})
        wait_for(lambda: proc.poll() is not None, 30, "kaito-tune status --watch to exit")
        stdout, stderr = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "phase: Training" in stderr and "120/120" in stderr and "phase: Succeeded" in stderr
    assert f"Workspace {namespace}/w" in stdout and "WorkspaceSucceeded=True" in stdout
