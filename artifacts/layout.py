"""The JSON documents an adapter artifact is made of (config blobs, manifests), as pure functions.

See :mod:`artifacts.mediatypes` for the two formats and why the types were chosen. The tuning facts
come from the ``metadata.json`` the trainer writes next to the adapter (keys ``preset``,
``model_revision``, ``method``, ``config_sha256``, ``data_sha256``, ``metrics``), each overridable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from artifacts import mediatypes as mt
from artifacts.errors import InvalidInputError

METADATA_FILE = "metadata.json"
TUNING_KEYS = ("preset", "model_revision", "method", "config_sha256", "data_sha256")


@dataclass(frozen=True)
class TuningFacts:
    """What produced the adapter; the config blob and the annotations name these."""

    preset: str | None = None
    model_revision: str | None = None
    method: str | None = None
    config_sha256: str | None = None
    data_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        keys = {"preset": "basePreset", "model_revision": "modelRevision", "method": "method"}
        keys |= {"config_sha256": "configSha256", "data_sha256": "dataSha256"}
        document: dict[str, Any] = {keys[k]: getattr(self, k) for k in TUNING_KEYS if getattr(self, k)}
        if self.metrics:
            document["metrics"] = self.metrics
        return document


def tuning_facts(metadata: dict[str, Any], overrides: dict[str, Any]) -> TuningFacts:
    """Facts from ``metadata.json`` with non-None ``overrides`` (CLI flags) taking precedence."""
    merged = {k: metadata.get(k) for k in (*TUNING_KEYS, "metrics")}
    merged |= {k: v for k, v in overrides.items() if v is not None}
    metrics = merged.pop("metrics") or {}
    if not isinstance(metrics, dict):
        raise InvalidInputError(f"metadata.json 'metrics' must be an object of name: value, got {metrics!r}")
    return TuningFacts(**{k: (str(v) if v is not None else None) for k, v in merged.items()}, metrics=metrics)


def descriptor(media_type: str, digest: str, size: int, annotations: dict[str, str] | None = None) -> dict:
    desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        desc["annotations"] = annotations
    return desc


def encode(document: dict[str, Any]) -> bytes:
    """Canonical bytes: the same document always has the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def file_layer(relative: str, digest: str, size: int) -> dict:
    """A ModelPack raw layer for one file, its path in both the ModelPack and the OCI title key."""
    annotations = {mt.ANNOTATION_FILEPATH: relative, mt.ANNOTATION_TITLE: relative}
    return descriptor(mt.layer_media_type(relative), digest, size, annotations)


def modelpack_config(facts: TuningFacts, layers: list[dict], created: str, name: str) -> bytes:
    descriptor_fields = {
        "createdAt": created,
        "name": name,
        "family": facts.preset,
        "revision": facts.model_revision,
    }
    model_format = (
        "safetensors" if any(layer["mediaType"] == mt.MODEL_WEIGHT_RAW for layer in layers) else None
    )
    return encode(
        {
            "descriptor": {k: v for k, v in descriptor_fields.items() if v},
            "config": {"format": model_format} if model_format else {},
            "modelfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            mt.CONFIG_TUNING_KEY: facts.as_json(),
        }
    )


def image_config(diff_ids: list[str], created: str, facts: TuningFacts) -> bytes:
    """An OCI image config, so KAITO-layout artifacts are images runtimes and skopeo accept."""
    labels = {mt.ANNOTATION_KAITO_MODEL: facts.preset} if facts.preset else {}
    return encode(
        {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": labels} if labels else {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )


def manifest_annotations(
    facts: TuningFacts, created: str, title: str, version: str | None, extra: dict[str, str]
) -> dict[str, str]:
    annotations = {mt.ANNOTATION_CREATED: created, mt.ANNOTATION_TITLE: title}
    if version:
        annotations[mt.ANNOTATION_VERSION] = version
    if facts.preset:
        annotations[mt.ANNOTATION_KAITO_MODEL] = facts.preset
        annotations[mt.ANNOTATION_DESCRIPTION] = f"{facts.method or 'LoRA'} adapter for {facts.preset}"
    return annotations | extra


def manifest(
    config: dict, layers: list[dict], annotations: dict[str, str], artifact_type: str | None
) -> bytes:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        document["artifactType"] = artifact_type
    document |= {"config": config, "layers": layers, "annotations": annotations}
    return encode(document)
