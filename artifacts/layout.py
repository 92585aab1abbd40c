"""The JSON documents an adapter artifact is made of (config blobs, manifests), as pure functions.

See :mod:`artifacts.mediatypes` for the two formats and why the types were chosen. The tuning facts
come from the ``metadata.json`` the trainer writes next to the adapter (keys ``preset``,
``model_revision``, ``method``, ``config_sha256``, ``data_sha256``, ``metrics``, ``evaluation``: the
held-out loss of the base model and of the adapter), each overridable; a
plain PEFT adapter without a preset names its base model in ``adapter_config.json``
(``base_model_name_or_path``, ``revision``). They travel as manifest annotations (``sh.kaito.tuning.*``),
not in the config: ModelPack's config schema allows no extension keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from artifacts import mediatypes as mt
from artifacts.errors import InvalidInputError
from artifacts.tarlayer import DATA_PREFIX

METADATA_FILE = "metadata.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's
TUNING_KEYS = ("preset", "base_model", "model_revision", "method", "config_sha256", "data_sha256")
# TuningFacts field -> its JSON key (inspect's "tuning") and annotation suffix (sh.kaito.tuning.<key>).
TUNING_JSON_KEYS = {
    "preset": "basePreset",
    "base_model": "baseModel",
    "model_revision": "modelRevision",
    "method": "method",
    "config_sha256": "configSha256",
    "data_sha256": "dataSha256",
}
# TuningFacts fields that are JSON objects -> their annotation (the object as one JSON string).
JSON_FACTS = {"metrics": mt.ANNOTATION_TUNING_METRICS, "evaluation": mt.ANNOTATION_TUNING_EVALUATION}


@dataclass(frozen=True)
class TuningFacts:
    """What produced the adapter; the config blob and the annotations name these."""

    preset: str | None = None
    base_model: str | None = None  # a hub id or path, when no preset names the base (plain PEFT)
    model_revision: str | None = None
    method: str | None = None
    config_sha256: str | None = None
    data_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)  # base vs adapter on held-out rows

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            TUNING_JSON_KEYS[k]: getattr(self, k) for k in TUNING_KEYS if getattr(self, k)
        }
        return document | {k: getattr(self, k) for k in JSON_FACTS if getattr(self, k)}

    def base_name(self) -> str | None:
        """What the adapter adapts: the preset, else the base model's id."""
        return self.preset or self.base_model


def tuning_facts(
    metadata: dict[str, Any], overrides: dict[str, Any], adapter_config: dict[str, Any] | None = None
) -> TuningFacts:
    """Facts from ``metadata.json`` with non-None ``overrides`` (CLI flags) taking precedence.

    Without a preset, PEFT's ``adapter_config`` (``base_model_name_or_path``, ``revision``) names the base
    model, so a plain PEFT directory is not pushed anonymous.
    """
    merged = {k: metadata.get(k) for k in (*TUNING_KEYS, *JSON_FACTS)}
    merged |= {k: v for k, v in overrides.items() if v is not None}
    if not merged.get("preset") and adapter_config:
        base = adapter_config.get("base_model_name_or_path")
        revision = adapter_config.get("revision")
        if isinstance(base, str) and base and not merged.get("base_model"):
            merged["base_model"] = base
        if isinstance(revision, str) and revision and not merged.get("model_revision"):
            merged["model_revision"] = revision
    objects: dict[str, Any] = {k: merged.pop(k) or {} for k in JSON_FACTS}
    for key, value in objects.items():
        if not isinstance(value, dict):
            raise InvalidInputError(f"metadata.json {key!r} must be an object of name: value, got {value!r}")
    scalars: dict[str, Any] = {k: (str(v) if v is not None else None) for k, v in merged.items()}
    return TuningFacts(**scalars, **objects)


def tuning_annotations(facts: TuningFacts) -> dict[str, str]:
    """The facts as manifest annotations: ``sh.kaito.tuning.<jsonKey>``, metrics and evaluation as one
    JSON string each."""
    annotations = {
        mt.ANNOTATION_TUNING_PREFIX + TUNING_JSON_KEYS[k]: getattr(facts, k)
        for k in TUNING_KEYS
        if getattr(facts, k)
    }
    for key, annotation in JSON_FACTS.items():
        if getattr(facts, key):
            annotations[annotation] = json.dumps(getattr(facts, key), sort_keys=True, separators=(",", ":"))
    return annotations


def tuning_from_annotations(annotations: dict[str, str]) -> dict[str, Any]:
    """The facts :func:`tuning_annotations` wrote, back in :meth:`TuningFacts.as_json` form."""
    document: dict[str, Any] = {
        key: annotations[mt.ANNOTATION_TUNING_PREFIX + key]
        for key in TUNING_JSON_KEYS.values()
        if mt.ANNOTATION_TUNING_PREFIX + key in annotations
    }
    for key, annotation in JSON_FACTS.items():
        if annotation in annotations:
            try:
                document[key] = json.loads(annotations[annotation])
            except ValueError:
                document[key] = annotations[annotation]  # shown as it is
    return document


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


def data_layer(digest: str, size: int, diff_id: str) -> dict:
    """KAITO's tar+gzip layer, with what the ORAS file store needs to restore it: ``oras pull`` unpacks
    it into the folder its title names (``data``, as the members are), after checking ``diff_id``."""
    annotations = {
        mt.ANNOTATION_TITLE: DATA_PREFIX.rstrip("/"),
        mt.ANNOTATION_ORAS_UNPACK: "true",
        mt.ANNOTATION_ORAS_DIGEST: diff_id,
    }
    return descriptor(mt.OCI_LAYER_TAR_GZIP, digest, size, annotations)


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
            "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
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
    if facts.base_name():
        annotations[mt.ANNOTATION_DESCRIPTION] = f"{facts.method or 'LoRA'} adapter for {facts.base_name()}"
    return annotations | tuning_annotations(facts) | extra


def manifest(
    config: dict, layers: list[dict], annotations: dict[str, str], artifact_type: str | None
) -> bytes:
    document: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        document["artifactType"] = artifact_type
    document |= {"config": config, "layers": layers, "annotations": annotations}
    return encode(document)
