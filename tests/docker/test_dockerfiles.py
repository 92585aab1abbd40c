"""The images: hack/images.sh builds them here with buildah on a Debian base made with mmdebstrap (no
Docker engine, nothing pulled from a container registry). The static checks hold for any builder: every
module an image runs exists, every directory it copies exists, every package pyproject ships is copied,
the pins come from pyproject.toml alone, the big dependency layer sits under the project's sources, and
the images run as the pods' uid. The smoke tests run the built images (``hack/images.sh build`` first)
and skip where buildah or the images are not there."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tuning_controller.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGES_SH = ROOT / "hack" / "images.sh"
VERSION = PYPROJECT["project"]["version"]

# docker/requirements.py, which the Dockerfiles run (not a package: loaded from its path).
_spec = importlib.util.spec_from_file_location("docker_requirements", ROOT / "docker" / "requirements.py")
requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(requirements)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def project_pins() -> dict[str, str]:
    requirements = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        pins[name.lower().replace("_", "-")] = version
    return pins


def shipped_packages() -> set[str]:
    return {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}


def requirement_extras(dockerfile: Path) -> list[str]:
    """The extras a Dockerfile's dependency layer asks docker/requirements.py for."""
    runs = [a for w, a in instructions(dockerfile) if w == "RUN" and "requirements.py" in a]
    assert len(runs) == 1, f"{dockerfile.name}: expected one RUN that derives the requirements"
    match = re.search(r"requirements\.py\s+\S*pyproject\.toml((?:\s+[\w-]+)*)\s*>", runs[0])
    assert match, f"{dockerfile.name}: requirements.py is not run on pyproject.toml"
    return match.group(1).split()


def test_there_are_the_four_images():
    assert {p.name for p in DOCKERFILES} == {
        "controller.Dockerfile",
        "tools.Dockerfile",
        "preflight.Dockerfile",
        "runtime.Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_command_an_image_runs_exists(dockerfile: Path):
    scripts = PYPROJECT["project"]["scripts"]
    commands = [exec_form(args) for word, args in instructions(dockerfile) if word in ("ENTRYPOINT", "CMD")]
    assert commands, f"{dockerfile.name} runs nothing"
    for argv in commands:
        if argv[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(argv[2]) is not None, f"{dockerfile.name}: no module {argv[2]}"
        elif argv[0] != "python":
            assert argv[0] in scripts, f"{dockerfile.name}: {argv[0]} is not a console script of the project"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_copy_every_shipped_package_and_nothing_missing(dockerfile: Path):
    copied = set()
    for word, args in instructions(dockerfile):
        if word == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                copied.add(source)
    assert shipped_packages() <= copied, (
        f"{dockerfile.name} does not copy {sorted(shipped_packages() - copied)}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_versions_match_the_project(dockerfile: Path):
    pins = project_pins()
    for word, args in instructions(dockerfile):
        if word != "RUN" or "pip install" not in args:
            continue
        for name, version in re.findall(r"([A-Za-z0-9_.\-]+)==([^\s\"']+)", args):
            key = name.lower().replace("_", "-")
            assert key in pins, f"{dockerfile.name} installs {name}, which pyproject.toml does not list"
            assert pins[key] == version, f"{dockerfile.name} pins {name}=={version}, pyproject {pins[key]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_is_an_argument_defaulting_to_the_python_image(dockerfile: Path):
    """A patch release, not the floating 3.11 tag: 3.11.13 fixed tarfile's filter="data" escapes
    (CVE-2025-4517 and its kin); our tar reader refuses escaping links by itself as well."""
    steps = instructions(dockerfile)
    assert steps[0] == ("ARG", "BASE=python:3.11.14-slim-bookworm"), dockerfile.name
    assert steps[1] == ("FROM", "${BASE}"), dockerfile.name
    assert [w for w, _ in steps].count("FROM") == 1, dockerfile.name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_sit_in_a_venv_layer_below_the_sources(dockerfile: Path):
    steps = instructions(dockerfile)
    env = " ".join(a for w, a in steps if w == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env, f"{dockerfile.name}: the venv is not first on PATH"
    words = [w for w, _ in steps]
    deps = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "requirements.py" in a)
    assert "python3 -m venv /opt/venv" in steps[deps][1]
    assert "pip install" in steps[deps][1] and "-r " in steps[deps][1]
    # Only pyproject.toml and the script that reads it come in before the dependency layer.
    before = [shlex.split(a)[:-1] for w, a in steps[:deps] if w == "COPY"]
    assert before == [["pyproject.toml", "docker/requirements.py"]], f"{dockerfile.name}: {before}"
    sources = [
        i for i, (w, a) in enumerate(steps) if w == "COPY" and shipped_packages() & set(shlex.split(a))
    ]
    assert sources and min(sources) > deps, f"{dockerfile.name}: sources are copied below the dependencies"
    project = [a for w, a in steps[max(sources) :] if w == "RUN" and "pip install" in a]
    assert len(project) == 1 and "--no-deps" in project[0], f"{dockerfile.name}: {project}"
    assert words.index("USER") > deps


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_the_pods_user(dockerfile: Path):
    users = [a for w, a in instructions(dockerfile) if w == "USER"]
    uid = Settings().run_as_user
    assert users and users[-1] == f"{uid}:{uid}", f"{dockerfile.name} runs as {users}"


def test_only_the_runtime_image_installs_the_training_extra():
    extras = {p.name: requirement_extras(p) for p in DOCKERFILES}
    assert extras == {
        "runtime.Dockerfile": ["train"],
        "preflight.Dockerfile": ["preflight"],
        "tools.Dockerfile": [],
        "controller.Dockerfile": [],
    }


def test_requirements_are_pyprojects_pins():
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    slim = requirements.requirements(PYPROJECT, [])
    preflight = requirements.requirements(PYPROJECT, ["preflight"])
    runtime = requirements.requirements(PYPROJECT, ["train"])
    assert slim == [*PYPROJECT["build-system"]["requires"], *project["dependencies"]]
    assert preflight == slim + optional["preflight"]
    # train names the project's own preflight extra: expanded in place, so the runtime has both
    assert optional["train"][0] == "kaito-tune[preflight]"
    assert runtime == preflight + optional["train"][1:]
    assert not any(r.startswith("torch") for r in preflight)
    assert "torch==" + project_pins()["torch"] in runtime


def test_requirements_script_prints_one_a_line_and_refuses_an_unknown_extra():
    script = ROOT / "docker" / "requirements.py"
    out = subprocess.run(
        [sys.executable, script, ROOT / "pyproject.toml", "train"], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == requirements.requirements(PYPROJECT, ["train"])
    bad = subprocess.run(
        [sys.executable, script, ROOT / "pyproject.toml", "nope"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "nope" in bad.stderr


def fake_buildah(tmp_path: Path, stored: list[str]) -> dict[str, str]:
    """An environment whose buildah reports `stored` as the images in its storage."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "buildah"
    script.write_text("#!/bin/sh\n" + "".join(f"echo {shlex.quote(name)}\n" for name in stored))
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KAITO_TUNE_CACHE": str(tmp_path)}


def test_images_list_maps_each_built_image_to_its_path_in_the_registry(tmp_path: Path):
    names = [
        "localhost/kaito-tune/pause:3.10",
        f"ghcr.io/kaito-tune/controller:{VERSION}",
        f"ghcr.io/kaito-tune/tools:{VERSION}",
        f"ghcr.io/kaito-tune/preflight:{VERSION}",
        f"ghcr.io/kaito-tune/runtime:{VERSION}",
        "localhost/kaito-tune/base:bookworm-py311",  # built upon, never pushed
        "docker.io/library/unrelated:1",
    ]
    out = subprocess.run(
        ["bash", IMAGES_SH, "list"],
        env=fake_buildah(tmp_path, names),
        capture_output=True,
        text=True,
        check=True,
    )
    listed = dict(line.split() for line in out.stdout.splitlines())
    assert listed == {
        "localhost/kaito-tune/pause:3.10": "kaito-tune/pause:3.10",
        f"ghcr.io/kaito-tune/controller:{VERSION}": f"kaito-tune/controller:{VERSION}",
        f"ghcr.io/kaito-tune/tools:{VERSION}": f"kaito-tune/tools:{VERSION}",
        f"ghcr.io/kaito-tune/preflight:{VERSION}": f"kaito-tune/preflight:{VERSION}",
        f"ghcr.io/kaito-tune/runtime:{VERSION}": f"kaito-tune/runtime:{VERSION}",
    }
    assert "not built: localhost/kaito-tune/busybox" in out.stderr  # and says what it left out


def test_images_are_named_as_the_chart_and_settings_expect():
    settings = Settings()
    assert settings.trainer_image == f"ghcr.io/kaito-tune/runtime:{VERSION}"
    assert settings.tools_image == f"ghcr.io/kaito-tune/tools:{VERSION}"
    assert settings.preflight_image == f"ghcr.io/kaito-tune/preflight:{VERSION}"
    chart = yaml.safe_load((ROOT / "charts" / "kaito-tune" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "kaito-tune" / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION
    for name in ("controller", "tools", "preflight", "runtime"):
        assert values["image"][name]["repository"] == f"ghcr.io/kaito-tune/{name}"
    assert 'project_image() { echo "ghcr.io/kaito-tune/$1:$PROJECT_VERSION"; }' in IMAGES_SH.read_text()


def test_images_sh_refuses_a_bad_command_and_a_bad_registry(tmp_path: Path):
    env = fake_buildah(tmp_path, [])
    usage = subprocess.run(["bash", IMAGES_SH, "bogus"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "Usage: hack/images.sh" in usage.stderr
    bad = subprocess.run(["bash", IMAGES_SH, "push", "http://x/"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "expected HOST:PORT" in bad.stderr


# ---- the built images ------------------------------------------------------------------------------


def buildah_images() -> set[str]:
    if shutil.which("buildah") is None or os.geteuid() != 0:
        return set()
    out = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True, check=False
    )
    return set(out.stdout.split())


CHECKS = {
    "controller": "import tuning_controller.operator",
    "tools": "import artifacts, tuning_controller.cli",
    "preflight": "import transformers, tokenizers, pyarrow, jinja2, trainer.qlora",
    "runtime": "import torch, transformers, peft, trl, bitsandbytes, inference.server, trainer.qlora",
}


RUN = ["buildah", "run", "--runtime", os.environ.get("BUILDAH_RUNTIME", "runc"), "--network", "none"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_built_image_runs_as_uid_1000_with_the_venv(name: str):
    image = f"ghcr.io/kaito-tune/{name}:{VERSION}"
    if image not in buildah_images():
        pytest.skip(f"{image} is not built here (hack/images.sh build; needs buildah, as root)")
    has_torch = "import importlib.util as u; print('torch' if u.find_spec('torch') else 'no-torch')"
    script = f"""set -e
id -u; id -g
command -v python
command -v kaito-tune
touch /tmp/probe && echo tmp-writable
python -c "{has_torch}"
python -c "{CHECKS[name]}"
kaito-tune --help >/dev/null && echo cli-ok
"""
    container = subprocess.run(
        ["buildah", "from", "--quiet", "--pull-never", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        run = subprocess.run(
            [*RUN, "--user", "1000:1000", container, "--", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    assert lines[:4] == ["1000", "1000", "/opt/venv/bin/python", "/opt/venv/bin/kaito-tune"], run.stdout
    assert "tmp-writable" in lines and "cli-ok" in lines
    assert ("torch" if name == "runtime" else "no-torch") in lines
