"""Resolving a preset name to its weights: the trainer and the inference server share this.

A preset is a catalog name (repository id at its pinned revision), ``tiny-llama`` (built locally by
``presets.tiny``) or a local directory holding a model (for development). In a pod the catalog name comes
with ``--weights``: the directory the fetch-model step filled, read offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.problems import InvalidSpec, Problem


class PresetNotFound(InvalidSpec):
    """No weights for the preset; its one problem says where the weights were looked for."""

    def __init__(self, problem: Problem):
        super().__init__([problem])


@dataclass(frozen=True)
class ResolvedPreset:
    name: str
    source: str  # local directory or repository id
    revision: str | None
    target_modules: list[str] | str


def resolve_preset(name: str, weights: Path | None = None) -> ResolvedPreset:
    """Find the weights for ``name`` (in ``weights`` when given); PresetNotFound names the nearest
    catalog entries, or says what the weights directory lacks."""
    from presets.catalog import UnknownName, get_model

    if weights is not None:
        if not (Path(weights) / "config.json").is_file():
            hint = "the fetch-model step fills it; check its log, or point --weights at a model directory"
            raise PresetNotFound(Problem("--weights", "holds no model (no config.json)", str(weights), hint))
        try:
            preset = get_model(name)
        except UnknownName as exc:
            raise PresetNotFound(Problem("tuning.preset.name", str(exc), None)) from exc
        return ResolvedPreset(preset.name, str(weights), None, list(preset.target_modules))
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            hint = "point --preset at a directory written by save_pretrained, or use a catalog name"
            raise PresetNotFound(Problem("--preset", "not a model directory (no config.json)", name, hint))
        return ResolvedPreset(
            name=Path(name).name, source=str(name), revision=None, target_modules="all-linear"
        )
    try:
        preset = get_model(name)
    except UnknownName as exc:
        hint = "use a name from `kaito-tune presets`, or a local model directory"
        raise PresetNotFound(Problem("tuning.preset.name", str(exc), None, hint)) from exc
    if preset.local_build:
        from presets.tiny import ensure_tiny_preset

        return ResolvedPreset(preset.name, str(ensure_tiny_preset()), "local", list(preset.target_modules))
    return ResolvedPreset(preset.name, preset.repo_id, preset.revision, list(preset.target_modules))
