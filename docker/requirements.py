"""Print an image's pinned requirements, one a line, from pyproject.toml (the only copy of the pins).

    python3 docker/requirements.py pyproject.toml [EXTRA ...]

prints the build-system requirements (the images install the project with --no-build-isolation, so its
build backend lives in the venv), the project's dependencies and those of each EXTRA. The Dockerfiles run
it before their dependency layer; hack/images.sh runs it to fill the wheelhouse those layers install from.
Standard library only: it runs on the base image's python3 before any venv exists.
"""

from __future__ import annotations

import sys
import tomllib


def _extra(project: dict, extra: str) -> list[str]:
    """An extra's pins, with the project's own extras it names (``kaito-tune[preflight]``) expanded."""
    optional = project.get("optional-dependencies", {})
    if extra not in optional:
        raise SystemExit(f"requirements.py: pyproject.toml has no extra {extra}")
    lines: list[str] = []
    for line in optional[extra]:
        name, _, rest = line.partition("[")
        if name.strip() == project["name"]:
            for inner in rest.rstrip("]").split(","):
                lines += _extra(project, inner.strip())
        else:
            lines.append(line)
    return lines


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    lines = [*pyproject["build-system"]["requires"], *project["dependencies"]]
    for extra in extras:
        lines += _extra(project, extra)
    return list(dict.fromkeys(lines))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        pyproject = tomllib.load(f)
    print("\n".join(requirements(pyproject, argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
