"""Which adapters to serve: directories under the adapter root and the strength of each.

Pure functions (no torch), shared by the server and by the vLLM merge step, so both runtimes read the
same layout and the same strengths:

    /mnt/adapter/<name>/adapter_config.json          (``kaito-tune pull`` output)
    /mnt/adapter/<name>/data/adapter_config.json     (a KAITO adapter image mounted as an image volume)

Strengths come as ``NAME=VALUE`` items (``--adapter-strength``, or the comma-separated
``KAITO_ADAPTER_STRENGTHS`` env the controller sets), read by ``contract.pod.parse_strengths``; an
adapter without one is served at 1.0, KAITO's default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from contract.pod import DEFAULT_STRENGTH

ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(ValueError):
    """The adapter directories or strengths are unusable; the message says which and what to do."""


@dataclass(frozen=True)
class Adapter:
    """One adapter to serve: its Workspace name, the directory with adapter_config.json, its weight."""

    name: str
    path: Path
    strength: float


def adapter_dir(directory: Path) -> Path | None:
    """The directory holding adapter_config.json: ``directory`` itself or its ``data/`` (KAITO layout)."""
    for candidate in (directory, directory / "data"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return None


def discover(root: Path, strengths: Mapping[str, float], reserved: Iterable[str] = ()) -> list[Adapter]:
    """Every adapter directory under ``root`` (sorted by name) with its strength.

    A directory without adapter_config.json, a strength naming no directory, or a name that collides
    with ``reserved`` model ids is an error: serving silently without an adapter the Workspace asked for
    would answer with the wrong model.
    """
    root = Path(root)
    if not root.is_dir():
        if strengths:
            raise AdapterError(f"strengths given for {sorted(strengths)} but {root} does not exist")
        return []
    adapters: list[Adapter] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = adapter_dir(directory)
        if found is None:
            raise AdapterError(
                f"adapter {directory.name!r}: no {ADAPTER_CONFIG} in {directory} or {directory / 'data'}; "
                "the adapter image must hold a PEFT adapter (adapter_config.json + adapter_model.safetensors)"
            )
        adapters.append(Adapter(directory.name, found, strengths.get(directory.name, DEFAULT_STRENGTH)))
    names = {a.name for a in adapters}
    missing = sorted(set(strengths) - names)
    if missing:
        raise AdapterError(
            f"strengths given for {missing} but no such directory under {root} (found: {sorted(names)})"
        )
    clashes = sorted(names & set(reserved))
    if clashes:
        raise AdapterError(f"adapter names {clashes} clash with served model ids; rename the adapters")
    return adapters
