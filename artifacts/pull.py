"""Pull an artifact or image into a directory, verified and atomic; and describe one (inspect).

Every format lands as the files themselves:

- ``modelpack``, and ``files`` (what ``oras push`` makes): each layer is written to the path its
  annotation names (``org.cncf.model.filepath``, else ``org.opencontainers.image.title``), whatever
  its media type (``oras push`` labels a plain file ``application/vnd.oci.image.layer.v1.tar``); a tar
  layer with ``io.deis.oras.content.unpack: "true"`` (a folder ``oras push`` packed) is extracted into
  the folder its title names, as ``oras pull`` does;
- ``kaito`` (an image: image config, tar layers, files under ``/data``; a data image, or an adapter in
  KAITO's layout) is extracted with ``/data`` stripped.

Everything is written to a staging directory next to the destination and renamed into place only
after every blob's digest checked out; on any error the staging directory is removed and the
destination is untouched. The published directory gets the usual mode (``0777`` less the umask, so
0755), not the staging directory's 0700, so a server running as another user can read it.
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

from artifacts import layout
from artifacts import mediatypes as mt
from artifacts.errors import IntegrityError, InvalidInputError, SizeLimitError, UnsafeContentError
from artifacts.reference import Reference
from artifacts.registry import ClientOptions, Manifest, RegistryClient
from artifacts.tarlayer import extract_layer

PLATFORM = ("linux", "amd64")
# How a layer lands: a file written as it is, an image layer's data/ extracted, an oras folder unpacked.
FILE, DATA, FOLDER = "file", "data", "folder"


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


def layer_path(layer: dict[str, Any]) -> str | None:
    annotations = layer.get("annotations") or {}
    for key in (mt.ANNOTATION_FILEPATH, mt.ANNOTATION_TITLE):
        if key in annotations:
            return str(annotations[key])
    return None


def is_unpack_layer(layer: dict[str, Any]) -> bool:
    """A tar layer the ORAS file store unpacks into the folder its title names."""
    unpack = (layer.get("annotations") or {}).get(mt.ANNOTATION_ORAS_UNPACK) == "true"
    return unpack and mt.is_tar_layer(layer.get("mediaType", ""))


def detect_format(document: dict[str, Any]) -> str:
    """``modelpack``; ``kaito`` for an image (image config, or a tar layer with no path to place it at,
    which only an image layer's ``/data`` can give); else ``files``: layers placed by their titles."""
    config_type = (document.get("config") or {}).get("mediaType")
    if document.get("artifactType") == mt.MODEL_ARTIFACT or config_type == mt.MODEL_CONFIG:
        return "modelpack"
    tar_layers = [x for x in document.get("layers") or [] if mt.is_tar_layer(x.get("mediaType", ""))]
    if tar_layers and (
        config_type in mt.IMAGE_CONFIG_TYPES or any(layer_path(x) is None for x in tar_layers)
    ):
        return "kaito"
    return "files"


def plan_layers(document: dict[str, Any], label: str) -> list[tuple[dict[str, Any], str, str]]:
    """Each layer with how it lands (FILE, DATA, FOLDER) and its path ("" for DATA); refuses unsafe
    paths and two layers claiming one path."""
    image = detect_format(document) == "kaito"
    plan: list[tuple[dict[str, Any], str, str]] = []
    seen: set[str] = set()
    for index, layer in enumerate(document.get("layers") or []):
        media_type = layer.get("mediaType", "")
        path = layer_path(layer)
        if mt.is_tar_layer(media_type) and (path is None or (image and is_unpack_layer(layer))):
            plan.append((layer, DATA, ""))  # KAITO's layout (our kaito push is titled "data" too)
            continue
        if path is None:
            raise InvalidInputError(
                f"{label}: layer {index} ({media_type}) has neither a file path annotation "
                f"({mt.ANNOTATION_FILEPATH}) nor an image layer type; cannot place it"
            )
        relative = safe_relative(path, f"{label} layer {index}")
        if relative in seen:
            raise UnsafeContentError(f"{label}: two layers claim the path {relative!r}")
        seen.add(relative)
        plan.append((layer, FOLDER if is_unpack_layer(layer) else FILE, relative))
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


def stage(dest: Path) -> tuple[Path, bool]:
    """A scratch directory on dest's filesystem: beside it, or inside it when the parent is read-only."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent)), False
    except OSError:
        if not dest.is_dir():
            raise
        return Path(tempfile.mkdtemp(prefix=".partial-", dir=dest)), True


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def publish(staging: Path, dest: Path, inside: bool, replace: bool) -> None:
    """Make ``staging`` the content of ``dest``: a rename where possible, else entry by entry (a mount
    point cannot be renamed over)."""
    staging.chmod(0o777 & ~_umask())  # mkdtemp made it 0700; it becomes dest unless inside
    existing = [p for p in dest.iterdir() if p != staging] if dest.is_dir() else []
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    if existing and not replace:
        raise InvalidInputError(f"destination {dest} is not empty; empty it or pass --replace")
    if not inside and _renamed_into_place(staging, dest, bool(existing)):
        return
    for old in existing:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for entry in staging.iterdir():
        os.rename(entry, dest / entry.name)
    staging.rmdir()


def _renamed_into_place(staging: Path, dest: Path, existing: bool) -> bool:
    """Rename ``staging`` to ``dest`` (the old ``dest`` set aside first); False when ``dest`` is a mount
    point, which only entry-by-entry moves can fill."""
    if not existing:
        try:
            os.rename(staging, dest)  # creates dest, or replaces it if empty, atomically
            return True
        except OSError:
            return False
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    try:
        os.rename(dest, aside / "old")
    except OSError:  # a mount point
        aside.rmdir()
        return False
    try:
        os.rename(staging, dest)
    except OSError:
        os.rename(aside / "old", dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


def pull(
    reference: str,
    dest: Path,
    *,
    options: ClientOptions | None = None,
    replace: bool = False,
    progress: Callable[[int], None] | None = None,
    skip: Callable[[dict[str, Any], str], bool] | None = None,
) -> PullResult:
    """Pull ``reference`` (tag or digest) into ``dest``; the files appear all at once or not at all.

    ``skip(layer, path)`` leaves out single-file layers (a pre-flight needs a model's configs, not its
    weights); archive layers are always pulled whole."""
    options = options or ClientOptions()
    ref = Reference.parse(reference)
    client = RegistryClient(ref, options)
    manifest = resolve(client, ref)
    document = manifest.document
    label = f"{ref.registry}/{ref.repository}@{manifest.digest}"
    plan = plan_layers(document, label)
    if skip is not None:
        plan = [(layer, kind, path) for layer, kind, path in plan if kind != FILE or not skip(layer, path)]
    total = sum(int(layer.get("size", 0)) for layer, _, _ in plan)
    if total > options.max_bytes:
        raise SizeLimitError(
            f"{label} is {total} bytes, over the {options.max_bytes}-byte cap; raise --max-size-gib"
        )
    if dest.exists() and not replace and dest.is_dir() and any(dest.iterdir()):
        raise InvalidInputError(f"destination {dest} is not empty; empty it or pass --replace")
    staging, inside = stage(dest)
    try:
        budget = [options.max_bytes]
        files = 0
        for layer, kind, relative in plan:
            if kind != FILE:
                with client.open_blob(layer) as reader:
                    files += extract_layer(
                        reader,
                        "gzip" in layer["mediaType"],
                        staging,
                        budget,
                        label,
                        folder=relative or None,
                        uncompressed_digest=(layer.get("annotations") or {}).get(mt.ANNOTATION_ORAS_DIGEST),
                    )
                    while reader.read():  # the tar end may precede the blob end: verify it all
                        pass
                continue
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.realpath(target.parent).startswith(os.path.realpath(staging)):
                raise UnsafeContentError(f"{label}: path {relative!r} leads outside the destination")
            client.download_blob(layer, target, progress)
            files += 1
        publish(staging, dest, inside, replace)
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
    """Manifest facts, the tuning facts and the (small, JSON) config, without downloading any layer."""
    ref = Reference.parse(reference)
    client = RegistryClient(ref, options or ClientOptions())
    manifest = resolve(client, ref)
    document = manifest.document
    config_desc = document.get("config") or {}
    config: Any = None
    if config_desc.get("mediaType", "").endswith("json") and int(config_desc.get("size", 0)) <= 1 << 20:
        with client.open_blob(config_desc) as reader:
            config = json.loads(b"".join(iter(reader.read, b"")))
    annotations = document.get("annotations") or {}
    tuning = layout.tuning_from_annotations(annotations)
    if not tuning and isinstance(config, dict):  # pushed before the facts moved to annotations
        tuning = config.get(mt.LEGACY_CONFIG_TUNING_KEY) or {}
    return {
        "reference": f"{ref.registry}/{ref.repository}@{manifest.digest}",
        "digest": manifest.digest,
        "mediaType": manifest.media_type,
        "artifactType": document.get("artifactType") or config_desc.get("mediaType"),
        "format": detect_format(document),
        "annotations": annotations,
        "tuning": tuning,
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
