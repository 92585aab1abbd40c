"""Pull an artifact or image into a directory, verified and atomic; and describe one (inspect).

Both formats land the same way: ModelPack (or any oras-style artifact whose layers carry a file path
annotation) writes each layer to its path; KAITO's layout (image layers with files under ``/data``) is
extracted with ``/data`` stripped. So ``pull`` of an adapter in either format, and of a data image,
yields the files themselves.

Everything is written to a staging directory next to the destination and renamed into place only
after every blob's digest checked out; on any error the staging directory is removed and the
destination is untouched.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts import mediatypes as mt
from artifacts.errors import IntegrityError, InvalidInputError, SizeLimitError, UnsafeContentError
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, Manifest, RegistryClient
from artifacts.tarlayer import extract_data_layer

PLATFORM = ("linux", "amd64")


@dataclass(frozen=True)
class PullResult:
    reference: str  # registry/repository@digest actually pulled
    digest: str
    format: str  # "modelpack", "kaito" or "files"
    files: int
    bytes_total: int  # of the blobs downloaded


def safe_relative(path: str, where: str) -> str:
    """A relative posix path that stays inside the destination, else :class:`UnsafeContentError`."""
    normal = posixpath.normpath(path) if path else ""
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or normal != path.rstrip("/")
        or normal == ".."
        or normal.startswith("../")
        or normal == "."
    ):
        raise UnsafeContentError(f"{where}: path {path!r} is not a plain relative path; refusing it")
    return normal


def detect_format(document: dict[str, Any]) -> str:
    config_type = document.get("config", {}).get("mediaType")
    if document.get("artifactType") == mt.MODEL_ARTIFACT or config_type == mt.MODEL_CONFIG:
        return "modelpack"
    if any(mt.is_tar_layer(layer.get("mediaType", "")) for layer in document.get("layers", [])):
        return "kaito"
    return "files"


def layer_path(layer: dict[str, Any]) -> str | None:
    annotations = layer.get("annotations") or {}
    for key in (mt.ANNOTATION_FILEPATH, mt.ANNOTATION_TITLE):
        if key in annotations:
            return annotations[key]
    return None


def plan_layers(document: dict[str, Any], label: str) -> list[tuple[dict[str, Any], str | None]]:
    """Each layer with its destination path (None: a tar layer to extract); refuses unsafe paths."""
    plan: list[tuple[dict[str, Any], str | None]] = []
    seen: set[str] = set()
    for index, layer in enumerate(document.get("layers") or []):
        media_type = layer.get("mediaType", "")
        if mt.is_tar_layer(media_type) and layer_path(layer) is None:
            plan.append((layer, None))
            continue
        path = layer_path(layer)
        if path is None:
            raise InvalidInputError(
                f"{label}: layer {index} ({media_type}) has neither a file path annotation "
                f"({mt.ANNOTATION_FILEPATH}) nor an image layer type; cannot place it"
            )
        relative = safe_relative(path, f"{label} layer {index}")
        if relative in seen:
            raise UnsafeContentError(f"{label}: two layers claim the path {relative!r}")
        seen.add(relative)
        plan.append((layer, relative))
    if not plan:
        raise InvalidInputError(f"{label} has no layers")
    return plan


def resolve(client: RegistryClient, ref: Reference) -> Manifest:
    """The image manifest for ``ref``; an index resolves to its linux/amd64 entry (or its only one)."""
    manifest = client.get_manifest(ref.target)
    if manifest.media_type not in mt.INDEX_TYPES:
        return manifest
    entries = manifest.document.get("manifests") or []
    chosen = [
        e
        for e in entries
        if (e.get("platform", {}).get("os"), e.get("platform", {}).get("architecture")) == PLATFORM
    ] or entries[:1]
    if not chosen or (len(entries) > 1 and not chosen[0].get("platform")):
        raise InvalidInputError(f"{ref} is an index without a {'/'.join(PLATFORM)} manifest")
    resolved = client.get_manifest(chosen[0]["digest"])
    if resolved.digest != chosen[0]["digest"]:
        raise IntegrityError(f"{ref}: index entry {chosen[0]['digest']} resolved to {resolved.digest}")
    return resolved


def _staging(dest: Path) -> tuple[Path, bool]:
    """A scratch directory on dest's filesystem: beside it, or inside it when the parent is read-only."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent)), False
    except OSError:
        if not dest.is_dir():
            raise
        return Path(tempfile.mkdtemp(prefix=".partial-", dir=dest)), True


def _publish(staging: Path, dest: Path, inside: bool, replace: bool) -> None:
    existing = [p for p in dest.iterdir() if p != staging] if dest.is_dir() else []
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    if existing and not replace:
        raise InvalidInputError(f"destination {dest} is not empty; empty it or pass --replace")
    if not inside and not existing:
        try:
            os.rename(staging, dest)  # creates dest, or replaces it if empty, atomically
            return
        except OSError:
            pass  # dest is a mount point: move the entries in instead
    if not inside and existing:
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        try:
            os.rename(dest, aside / "old")
        except OSError:  # a mount point
            aside.rmdir()
        else:
            try:
                os.rename(staging, dest)
            except OSError:
                os.rename(aside / "old", dest)
                raise
            shutil.rmtree(aside, ignore_errors=True)
            return
    for old in existing:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for entry in staging.iterdir():
        os.rename(entry, dest / entry.name)
    staging.rmdir()


def pull(
    reference: str,
    dest: Path,
    *,
    options: ClientOptions | None = None,
    replace: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PullResult:
    """Pull ``reference`` (tag or digest) into ``dest``; the files appear all at once or not at all."""
    options = options or ClientOptions()
    ref = Reference.parse(reference)
    client = RegistryClient(ref, options)
    manifest = resolve(client, ref)
    document = manifest.document
    label = f"{ref.registry}/{ref.repository}@{manifest.digest}"
    plan = plan_layers(document, label)
    total = sum(int(layer.get("size", 0)) for layer, _ in plan)
    if total > options.max_bytes:
        raise SizeLimitError(
            f"{label} is {total} bytes, over the {options.max_bytes}-byte cap; raise --max-size-gib"
        )
    if dest.exists() and not replace and dest.is_dir() and any(dest.iterdir()):
        raise InvalidInputError(f"destination {dest} is not empty; empty it or pass --replace")
    staging, inside = _staging(dest)
    try:
        budget = [options.max_bytes]
        files = 0
        for layer, relative in plan:
            if relative is None:
                with client.open_blob(layer) as reader:
                    gzipped = "gzip" in layer["mediaType"]
                    files += extract_data_layer(reader, gzipped, staging, budget, label)
                    while reader.read():  # the tar end may precede the blob end: verify it all
                        pass
                continue
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.realpath(target.parent).startswith(os.path.realpath(staging)):
                raise UnsafeContentError(f"{label}: path {relative!r} leads outside the destination")
            client.download_blob(layer, target, progress)
            files += 1
        _publish(staging, dest, inside, replace)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return PullResult(
        reference=f"{ref.registry}/{ref.repository}@{manifest.digest}",
        digest=manifest.digest,
        format=detect_format(document),
        files=files,
        bytes_total=total,
    )


def inspect(reference: str, *, options: ClientOptions | None = None) -> dict[str, Any]:
    """Manifest facts and the (small, JSON) config, without downloading any layer."""
    ref = Reference.parse(reference)
    client = RegistryClient(ref, options or ClientOptions())
    manifest = resolve(client, ref)
    document = manifest.document
    config_desc = document.get("config") or {}
    config: Any = None
    if config_desc.get("mediaType", "").endswith("json") and int(config_desc.get("size", 0)) <= 1 << 20:
        with client.open_blob(config_desc) as reader:
            config = json.loads(b"".join(iter(reader.read, b"")))
    return {
        "reference": f"{ref.registry}/{ref.repository}@{manifest.digest}",
        "digest": manifest.digest,
        "mediaType": manifest.media_type,
        "artifactType": document.get("artifactType") or config_desc.get("mediaType"),
        "format": detect_format(document),
        "annotations": document.get("annotations") or {},
        "config": config,
        "layers": [
            {
                "mediaType": layer.get("mediaType"),
                "digest": layer.get("digest"),
                "size": layer.get("size"),
                "path": layer_path(layer),
            }
            for layer in document.get("layers") or []
        ],
    }
