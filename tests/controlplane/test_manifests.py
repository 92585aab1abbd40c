"""hack/check-manifests.sh: helm lint/template and kubeconform against schemas taken from our own API
server and CRD (no downloads). Bad manifests must fail with the field named."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hack.operators import LOCAL_MODEL_REGISTRY
from tests.api.builders import TUNING_SEED, write_seed
from tests.controlplane.test_workspace_crd import TUNING_WORKSPACE
from tests.controlplane.workloads import job_manifest
from tests.fixtures.cluster import REPO_ROOT, check_manifests


def write(path: Path, *objects: dict) -> Path:
    path.write_text(yaml.safe_dump_all(objects))
    return path


def test_valid_job_and_workspace_pass(manifest_schemas, tmp_path):
    job = job_manifest("train", "python -m trainer.qlora")
    result = check_manifests(manifest_schemas, [write(tmp_path / "ok.yaml", job, TUNING_WORKSPACE)])

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid: 2, Invalid: 0, Errors: 0" in result.stdout


def test_misspelt_job_field_and_bad_workspace_fail(manifest_schemas, tmp_path):
    job = job_manifest("train", "true")
    job["spec"]["backofLimit"] = job["spec"].pop("backoffLimit")
    workspace = copy.deepcopy(TUNING_WORKSPACE)
    workspace["tuning"]["input"]["urls"] = "https://example.com/one.parquet"  # must be a list
    result = check_manifests(manifest_schemas, [write(tmp_path / "bad.yaml", job, workspace)])

    assert result.returncode != 0
    assert "Invalid: 2" in result.stdout
    assert "backofLimit" in result.stdout
    assert "/tuning/input/urls" in result.stdout


def test_kind_without_schema_is_an_error(manifest_schemas, tmp_path):
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    result = check_manifests(manifest_schemas, [write(tmp_path / "unknown.yaml", unknown)])

    assert result.returncode != 0
    assert "could not find schema for Gadget" in result.stdout


def make_chart(root: Path, job_template: str) -> Path:
    chart = root / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\ndescription: test chart\n")
    (chart / "values.yaml").write_text("backoffLimit: 2\nimage: kaito-tune/runtime:local\n")
    (chart / "templates" / "job.yaml").write_text(textwrap.dedent(job_template))
    return chart


JOB_TEMPLATE = """\
    apiVersion: batch/v1
    kind: Job
    metadata:
      name: {{ .Release.Name }}-demo
      namespace: {{ .Release.Namespace }}
    spec:
      {{ .Values.limitField }}: {{ .Values.backoffLimit }}
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: main
              image: {{ .Values.image }}
              command: [sh, -c, "echo ok"]
    """


def test_chart_is_linted_rendered_and_validated(manifest_schemas, tmp_path):
    good = make_chart(tmp_path / "good", JOB_TEMPLATE.replace("{{ .Values.limitField }}", "backoffLimit"))
    bad = make_chart(tmp_path / "bad", JOB_TEMPLATE.replace("{{ .Values.limitField }}", "retries"))

    ok = check_manifests(manifest_schemas, charts=[good])
    broken = check_manifests(manifest_schemas, charts=[bad])

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in ok.stdout
    assert "Valid: 1, Invalid: 0" in ok.stdout
    assert broken.returncode != 0
    assert "retries" in broken.stdout


def test_project_charts_lint_render_and_validate(manifest_schemas):
    charts = sorted(p.parent for p in (REPO_ROOT / "charts").glob("*/Chart.yaml"))
    assert charts, "no chart under charts/"

    result = check_manifests(manifest_schemas, charts=charts)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(charts)} chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "Invalid: 0, Errors: 0" in result.stdout


@pytest.mark.parametrize(
    "example", sorted(p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "examples").rglob("*.yaml")), ids=str
)
def test_objects_rendered_from_examples_validate(manifest_schemas, tmp_path, example):
    """Every object `kaito-tune render` prints is valid for the API server (schemas from our own). KAITO's
    tuning seed is rendered as a user applies it: its placeholder output image replaced (as written it
    is refused)."""
    path = write_seed(tmp_path) if REPO_ROOT / example == TUNING_SEED else REPO_ROOT / example
    rendered = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuning_controller.cli",
            "render",
            *("--allow-url-network", "127.0.0.0/8", "--model-registry", LOCAL_MODEL_REGISTRY),
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    assert rendered.returncode == 0, rendered.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered.stdout)

    result = check_manifests(manifest_schemas, [out])

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0" in result.stdout
