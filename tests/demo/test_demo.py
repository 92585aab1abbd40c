"""The demo (`make demo` -> hack/demo.py) as a test: the example Workspaces as written (hosts templated),
through the operator and pods in real containers on the local node, the adapter answering held-out
questions the base model cannot; afterwards nothing of the stack is left running."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from hack.cluster import REPO_ROOT
from hack.demo import main as demo_main
from hack.demo import run_demo, templated, with_steps
from hack.operators import LOCAL_MODEL_REGISTRY
from tuning_controller.cli_workspace import check_documents, load_documents

pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]


def test_the_demo_trains_pushes_serves_and_stops_everything(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", steps=80)
    out = capsys.readouterr().out

    assert re.fullmatch(r"10\.250\.0\.1:\d+/adapters/tiny-llama-demo@sha256:[0-9a-f]{64}", result["adapter"])
    assert result["asked"] == 24
    assert result["right"] >= 18, result["answers"]
    assert sum(a["base"] == a["expected"] for a in result["answers"]) <= 2  # the base model cannot know
    assert result["answers"][0]["chat"] == result["answers"][0]["adapter"]
    assert "Tuning phase: Succeeded" in out and "Data check: ok, 72 rows" in out
    assert "80/80" in out  # the progress bar reached the last step
    evaluation = result["evaluation"]  # status.tuning.evaluation: 7 of the 72 rows held out
    assert evaluation["heldOutRows"] == 7 and evaluation["adapterLoss"] < evaluation["baseLoss"]
    assert "Evaluation: held-out loss on 7 rows: base" in out and evaluation["summary"] in out
    assert f"{result['adapter'].split('@')[1]}" in out.split("Summary", 1)[1]
    # every process the stack started is gone: node, operator, registry, control plane
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and str(tmp_path) in _cmdline(p)]
    assert leftovers == [], [_cmdline(p) for p in leftovers]


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_failing_demo_says_where_the_logs_are(tmp_path, capsys, monkeypatch):
    """A broken step (here: a training config the controller refuses) ends the demo with exit 1, the
    controller's reason and the log folder, and stops the stack."""

    def misspelt(docs: list[dict], steps: int) -> list[dict]:
        (configmap,) = [d for d in with_steps(docs, steps) if d["kind"] == "ConfigMap"]
        config = yaml.safe_load(configmap["data"]["training_config.yaml"])
        config["training_config"]["TrainingArguments"]["learning_rat"] = 0.1
        configmap["data"]["training_config.yaml"] = yaml.safe_dump(config)
        return docs

    monkeypatch.setattr("hack.demo.with_steps", misspelt)
    code = demo_main(["--steps", "1", "--state-dir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 1
    assert "learning_rat" in out and "demo failed" in out and str(tmp_path / "demo") in out
    assert not [p for p in os.listdir("/proc") if p.isdigit() and str(tmp_path) in _cmdline(p)]


def test_the_templated_examples_still_validate():
    """Only the hosts change: the documents the demo applies pass the same checks as the files."""
    docs = with_steps(templated(REPO_ROOT / "examples/tuning/tiny-llama-demo.yaml", "127.0.0.1:1", "r:2"), 9)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Workspace"]
    assert docs[1]["tuning"]["input"]["urls"] == ["http://127.0.0.1:1/code-words.parquet"]
    assert docs[1]["tuning"]["output"]["image"] == "r:2/adapters/tiny-llama-demo:v1"
    loaded = load_documents(str(REPO_ROOT / "examples/tuning/tiny-llama-demo.yaml"))
    assert not [
        p
        for _, p in check_documents(loaded, None, ("127.0.0.0/8",), LOCAL_MODEL_REGISTRY)
        if p.severity.name == "ERROR"
    ]
