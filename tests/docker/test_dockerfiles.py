"""The images cannot be built here (no Docker engine), so check what a build would rely on: every module
an image runs exists, every directory it copies exists, every package pyproject ships is copied, and any
version an image pins equals the project's pin."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


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


def test_there_are_the_three_images():
    assert {p.name for p in DOCKERFILES} == {
        "controller.Dockerfile",
        "tools.Dockerfile",
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
    shipped = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert shipped <= copied, f"{dockerfile.name} does not copy {sorted(shipped - copied)}"


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


def test_runtime_image_installs_the_training_extra_and_the_slim_images_do_not():
    runs = {p.name: " ".join(a for w, a in instructions(p) if w == "RUN") for p in DOCKERFILES}
    assert ".[train]" in runs["runtime.Dockerfile"]
    assert "[train]" not in runs["tools.Dockerfile"]
    assert "[train]" not in runs["controller.Dockerfile"]
