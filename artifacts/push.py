"""Push an adapter (or any directory) as an OCI artifact, in the ModelPack or the KAITO layout.

The directory is only read: a failed push leaves it exactly as it was, and the KAITO layer is built
in a temporary directory elsewhere. Blobs the registry already has (an unchanged tokenizer, a
re-pushed adapter) are not sent again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artifacts import layout
from artifacts import mediatypes as mt
from artifacts.errors import InvalidInputError, NotBetterError
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, RegistryClient, file_digest, sha256_digest
from artifacts.tarlayer import write_data_layer


@dataclass(frozen=True)
class PushResult:
    reference: str  # registry/repository@digest
    digest: str
    bytes_total: int  # of all layers
    bytes_sent: int  # of layers the registry did not have yet


def list_files(directory: Path) -> list[str]:
    """Relative posix paths of the regular files under ``directory``, sorted; links are refused."""
    if not directory.is_dir():
        raise InvalidInputError(f"{directory} is not a directory; push takes the adapter directory")
    found: list[str] = []
    for current, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = Path(current, name)
            if path.is_symlink():
                raise InvalidInputError(
                    f"{path} is a symbolic link; push only regular files (copy it instead)"
                )
            if name in files:
                if not path.is_file():
                    raise InvalidInputError(f"{path} is not a regular file")
                found.append(path.relative_to(directory).as_posix())
    if not found:
        raise InvalidInputError(f"{directory} holds no files to push")
    return sorted(found)


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not valid JSON ({exc}); fix it or remove it") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"{path} must hold a JSON object")
    return document


def read_metadata(directory: Path) -> dict[str, Any]:
    """The trainer's ``metadata.json`` (preset, method, hashes, metrics); {} when there is none."""
    return _read_json_object(directory / layout.METADATA_FILE)


def refuse_failed_gate(directory: Path) -> None:
    """NotBetterError when the trainer's verdict in metadata.json (``contract.reports.improvement_gate``)
    says the adapter failed EvaluationConfig.min_improvement; the directory is left as it is."""
    gate = read_metadata(directory).get("gate")
    if isinstance(gate, dict) and gate.get("passed") is False:
        raise NotBetterError(
            f"not pushed: {gate.get('message')}; the adapter stays in {directory} "
            "(to ship it anyway: kaito-tune push --ignore-gate)"
        )


def read_facts(directory: Path, overrides: dict[str, Any]) -> layout.TuningFacts:
    """The tuning facts; PEFT's ``adapter_config.json`` is read only when no preset is named."""
    metadata = read_metadata(directory)
    named = metadata.get("preset") or overrides.get("preset")
    adapter_config = None if named else _read_json_object(directory / layout.ADAPTER_CONFIG_FILE)
    return layout.tuning_facts(metadata, overrides, adapter_config)


def push(
    directory: Path,
    reference: str,
    *,
    fmt: str = "modelpack",
    options: ClientOptions | None = None,
    overrides: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    ignore_gate: bool = False,
) -> PushResult:
    """Push ``directory`` to ``reference`` (which needs a tag); returns the manifest digest. An adapter
    that failed the trainer's gate is refused (NotBetterError) unless ``ignore_gate``."""
    if fmt not in mt.FORMATS:
        raise InvalidInputError(f"format {fmt!r} is not one of {', '.join(mt.FORMATS)}")
    ref = Reference.parse(reference)
    if ref.digest or not ref.tag:
        raise InvalidInputError(
            f"push needs a tag, not a digest: write {ref.registry}/{ref.repository}:<tag>"
        )
    files = list_files(directory)
    if not ignore_gate:
        refuse_failed_gate(directory)
    facts = read_facts(directory, overrides or {})
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    client = RegistryClient(ref, options or ClientOptions(), push=True)
    sent = 0

    if fmt == "modelpack":
        layers = []
        # A blob's digest must be known before its upload (the registry may have it already); hashing
        # the next files in a thread while this one uploads keeps that pass off the critical path
        # (benchmarks/model_fetch.py, 4 GiB: push went from 0.87x skopeo to a median of 1.21x in 3 runs).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash") as hasher:
            digests = [hasher.submit(file_digest, directory / name) for name in files]
            for name, pending in zip(files, digests, strict=True):
                path = directory / name
                size = path.stat().st_size
                digest = pending.result()
                sent += size if client.upload_blob(path, digest, size, progress) else 0
                layers.append(layout.file_layer(name, digest, size))
        config_bytes = layout.modelpack_config(facts, layers, created, ref.repository.rsplit("/", 1)[-1])
        config_type, artifact_type = mt.MODEL_CONFIG, mt.MODEL_ARTIFACT
    else:
        with tempfile.TemporaryDirectory(prefix="kaito-layer-") as scratch:
            layer = write_data_layer(directory, files, Path(scratch) / "layer.tar.gz")
            sent += layer.size if client.upload_blob(layer.path, layer.digest, layer.size, progress) else 0
        layers = [layout.data_layer(layer.digest, layer.size, layer.diff_id)]
        config_bytes = layout.image_config([layer.diff_id], created, facts)
        config_type, artifact_type = mt.OCI_IMAGE_CONFIG, None

    config_digest = sha256_digest(config_bytes)
    client.put_small_blob(config_bytes, config_digest)
    manifest_annotations = layout.manifest_annotations(
        facts, created, ref.repository.rsplit("/", 1)[-1], ref.tag, annotations or {}
    )
    raw = layout.manifest(
        layout.descriptor(config_type, config_digest, len(config_bytes)),
        layers,
        manifest_annotations,
        artifact_type,
    )
    digest = client.put_manifest(raw, mt.OCI_MANIFEST, ref.tag)
    return PushResult(
        reference=str(ref.with_digest(digest)),
        digest=digest,
        bytes_total=sum(layer["size"] for layer in layers),
        bytes_sent=sent,
    )
