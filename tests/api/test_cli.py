"""`kaito-tune validate | render | crd | presets` as a user runs them: files in, text and exit codes out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.training_config import default_training_config
from hack.operators import LOCAL_MODEL_REGISTRY
from tests.api.builders import ADAPTERS_SEED, EXAMPLES, TUNING_SEED, edit, load, write_seed
from tuning_controller.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def configmap(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"training_config.yaml": yaml.safe_dump(doc, sort_keys=False)},
    }


def write(tmp_path: Path, name: str, *docs: Any) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def test_validate_examples_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every example as written, the tuning seed with its placeholder output replaced (the placeholder
    itself is refused: test_examples)."""
    files = [str(write_seed(tmp_path) if p == TUNING_SEED else p) for p in sorted(EXAMPLES.rglob("*.yaml"))]
    # as the demo's cluster: loopback data and a mirror of the presets' weights
    code, out, _ = run(
        capsys,
        "validate",
        "--allow-url-network",
        "127.0.0.0/8",
        "--model-registry",
        LOCAL_MODEL_REGISTRY,
        *files,
    )
    assert code == 0, out
    assert out.splitlines()[-1].startswith("valid: ") and f" in {len(files)} file(s)," in out
    assert "error:" not in out


def test_learning_rat_is_unknown_and_learning_rate_suggested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = edit(default_training_config("qlora"), "training_config.TrainingArguments.learning_rat", 2.0e-4)
    path = write(tmp_path, "qlora-config.yaml", configmap("my-qlora", doc))
    code, out, _ = run(capsys, "validate", "--method", "qlora", path)
    assert code == 1
    line = next(x for x in out.splitlines() if "learning_rat:" in x)
    assert "unknown option of TrainingArguments" in line
    assert "did you mean 'learning_rate'?" in line
    assert "ConfigMap my-qlora" in line


def test_bare_training_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "lora.yaml", default_training_config("lora"))
    assert run(capsys, "validate", "--method", "lora", path)[0] == 0
    code, out, _ = run(capsys, "validate", "--method", "qlora", path)
    assert code == 1
    assert "needs quantised weights" in out


def test_yaml_syntax_error_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: kaito.sh/v1beta1\nkind: Workspace\nmetadata:\n  name: [unclosed\n")
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 1
    assert f"{path}: error: line 5, column 1: YAML syntax error: expected ',' or ']'" in out


def test_yaml_syntax_error_inside_a_configmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"training_config.yaml": "training_config:\n  LoraConfig: {r: 8\n"},
    }
    code, out, _ = run(capsys, "validate", write(tmp_path, "cm.yaml", broken))
    assert code == 1
    assert "data[training_config.yaml] line 3, column 1: YAML syntax error" in out


def test_multi_document_workspace_with_its_configmap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ConfigMap a Workspace names is checked with the Workspace's method (lora here) and GPU."""
    ws = edit(edit(load(TUNING_SEED), "tuning.config", "my-lora"), "tuning.method", "lora")
    bad = default_training_config("qlora")  # load_in_4bit: true contradicts method lora
    code, out, _ = run(capsys, "validate", write(tmp_path, "both.yaml", ws, configmap("my-lora", bad)))
    assert code == 1
    assert "configmap/my-lora[training_config.yaml].training_config.QuantizationConfig.load_in_4bit" in out
    assert "use method qlora" in out


def test_unknown_document_kind_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "validate", write(tmp_path, "svc.yaml", {"kind": "Service", "apiVersion": "v1"})
    )
    assert code == 1
    assert "is not a Workspace" in out


def training_configmap(out: str) -> dict[str, Any]:
    (obj,) = [o for o in yaml.safe_load_all(out) if o["kind"] == "ConfigMap"]
    return obj


def test_render_prints_the_training_configmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "render", str(write_seed(tmp_path)))
    assert code == 0
    obj = training_configmap(out)
    assert obj["kind"] == "ConfigMap"
    assert obj["metadata"]["name"] == "workspace-phi-3-mini-training-config"
    assert obj["metadata"]["annotations"]["kaito.sh/training-config-source"] == "qlora-params-template"
    assert yaml.safe_load(obj["data"]["training_config.yaml"]) == default_training_config("qlora")


def test_render_prints_every_object_of_tuning_and_inference_workspaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tuning, serving = load(TUNING_SEED), load(ADAPTERS_SEED)
    code, out, _ = run(capsys, "render", write(tmp_path, "both.yaml", tuning, serving))
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    kinds = [(o["kind"], o["metadata"]["labels"]["kaito.sh/workspace"]) for o in objects]
    job_kinds = [
        "ConfigMap",
        "Secret",
        "Job",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Job",
    ]
    assert kinds == [(k, tuning["metadata"]["name"]) for k in job_kinds] + [
        ("Service", serving["metadata"]["name"]),
        ("Deployment", serving["metadata"]["name"]),
    ]


def test_render_uses_the_named_configmap_and_refuses_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = edit(default_training_config("qlora"), "training_config.LoraConfig.r", 16)
    ws = edit(load(TUNING_SEED), "tuning.config", "own")
    code, out, _ = run(capsys, "render", write(tmp_path, "ok.yaml", ws, configmap("own", own)))
    assert code == 0
    obj = training_configmap(out)
    assert yaml.safe_load(obj["data"]["training_config.yaml"])["training_config"]["LoraConfig"]["r"] == 16
    assert obj["metadata"]["annotations"]["kaito.sh/training-config-source"] == "configmap/own"
    code, out, err = run(capsys, "render", write(tmp_path, "alone.yaml", ws))
    assert code == 1 and out == ""
    assert "tuning.config names ConfigMap 'own'" in err
    code, out, err = run(capsys, "render", write(tmp_path, "bad.yaml", edit(ws, "tuning.method", "dora")))
    assert code == 1 and out == ""
    assert "tuning.method" in err


def test_crd_prints_one_plain_yaml_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "crd")
    assert code == 0
    assert "&id" not in out and "*id" not in out
    (crd,) = list(yaml.safe_load_all(out))
    assert crd["kind"] == "CustomResourceDefinition"


def test_presets_json_for_phi3_mini(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "presets", "--json", "phi-3-mini-4k-instruct")
    assert code == 0
    report = json.loads(out)
    lora, qlora = report["methods"]["lora"], report["methods"]["qlora"]
    assert qlora["estimate_gib"]["total"] < lora["estimate_gib"]["total"]
    assert "Standard_NC6s_v3" in qlora["fitting_skus"]
    assert report["revision"] == "0a67737cc96d2554230f90338b163bc6380a2a85"


def test_presets_table_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "presets")
    assert code == 0
    assert "qwen2.5-coder-32b-instruct" in out and "tiny-llama" in out
    code, _, err = run(capsys, "presets", "phi-3-mini")
    assert code == 1
    assert "phi-3-mini-4k-instruct" in err


def test_console_script_runs_in_a_fresh_process(tmp_path: Path) -> None:
    """The installed entry point, as a user types it (the module form works without the script too)."""
    script = Path(sys.executable).with_name("kaito-tune")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tuning_controller.cli"]
    seed = str(write_seed(tmp_path))
    done = subprocess.run([*command, "validate", seed], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid: 1 document(s)" in done.stdout
