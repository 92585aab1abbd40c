"""Where a Workspace's base-model weights come from, and the rules that keep that choice honest.

In order: the Workspace's ``presetOptions.image`` (an OCI model artifact or a KAITO-layout image, with
``presetOptions.imagePullSecrets``); the cluster's mirror ``<model_registry>/<preset>:<revision>``
(the controller's KAITO_TUNE_MODEL_REGISTRY, filled by ``kaito-tune model push``); else the hub
repository at the catalog's pinned revision, with ``presetOptions.modelAccessSecret`` as the token.
KAITO's rule holds both ways: a gated hub repository needs ``modelAccessSecret``, and packaged (OCI)
weights refuse one, because it would never be used.

    >>> from presets.catalog import get_model
    >>> model_source(get_model("phi-3-mini-4k-instruct"), None, "mirror.example/models").reference
    'mirror.example/models/phi-3-mini-4k-instruct:0a67737cc96d2554230f90338b163bc6380a2a85'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from artifacts.reference import TAG_RE
from contract.problems import Problem
from contract.workspace import PresetOptions
from presets.catalog import ModelPreset

HUB_TOKEN_KEY = "HF_TOKEN"
"""The key of ``modelAccessSecret`` that holds the hub token (KAITO's)."""


@dataclass(frozen=True)
class ModelSource:
    """One place to fetch the weights from, with the Secret that unlocks it (if any)."""

    kind: Literal["oci", "hub"]
    reference: str  # registry/repository:tag|@digest, or hub repo_id@revision
    pull_secret: str = ""  # dockerconfigjson Secret for an OCI source
    token_secret: str = ""  # Secret with HF_TOKEN for the hub

    @property
    def hub_repo(self) -> tuple[str, str]:
        repo, _, revision = self.reference.partition("@")
        return repo, revision


def mirror_reference(preset: ModelPreset, model_registry: str) -> str:
    """``<model_registry>/<preset name>:<revision>``: where ``kaito-tune model push`` puts a mirror."""
    tag = preset.revision if TAG_RE.match(preset.revision) else "latest"
    return f"{model_registry.rstrip('/')}/{preset.name}:{tag}"


def model_source(preset: ModelPreset, options: PresetOptions | None, model_registry: str) -> ModelSource:
    """The weights' source for ``preset`` (assumes ``source_problems`` found no errors)."""
    if options is not None and options.image:
        secret = options.image_pull_secrets[0] if options.image_pull_secrets else ""
        return ModelSource("oci", options.image, pull_secret=secret)
    if model_registry:
        return ModelSource("oci", mirror_reference(preset, model_registry))
    token = options.model_access_secret if options is not None else ""
    return ModelSource("hub", f"{preset.repo_id}@{preset.revision}", token_secret=token)


def source_problems(
    path: str, preset: ModelPreset, options: PresetOptions | None, model_registry: str
) -> list[Problem]:
    """What is wrong with the choice of the weights' source (``path`` is the preset field's path); the
    reference and Secret names are checked with the other names, in validation."""
    problems: list[Problem] = []
    image = options.image if options is not None else ""
    secret = options.model_access_secret if options is not None else ""
    packaged = image or (f"the cluster's model registry {model_registry}" if model_registry else "")
    if secret and packaged:
        where = f"image {image}" if image else packaged
        problems.append(
            Problem(
                f"{path}.presetOptions.modelAccessSecret",
                f"is not used: {preset.name}'s weights come from {where}, not the hub",
                secret,
                "remove modelAccessSecret (registry credentials go in presetOptions.imagePullSecrets)",
            )
        )
    if packaged:
        return problems
    if preset.local_build:
        problems.append(
            Problem(
                f"{path}.name",
                f"{preset.name} is built locally and has no hub repository to fetch",
                preset.name,
                "publish it with `kaito-tune model push` and set the chart's settings.modelRegistry, "
                "or set presetOptions.image",
            )
        )
    elif preset.gated and not secret:
        problems.append(
            Problem(
                f"{path}.presetOptions.modelAccessSecret",
                f"is required: {preset.repo_id} is gated on the hub",
                None,
                f"create a Secret with key {HUB_TOKEN_KEY} holding a token that accepted the model's "
                "license, and name it here; or mirror the weights (`kaito-tune model push`)",
            )
        )
    return problems
