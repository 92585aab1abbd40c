"""``kaito-tune model push``: a base model (a directory or a hub snapshot) as an OCI model artifact.

This is how a cluster's model registry gets the presets' weights (KAITO_TUNE_MODEL_REGISTRY): one layer
per file, streamed from disk, and a re-run sends only the files the registry lacks. Every safetensors
file is checked for a parsable header first, so a truncated download is refused here, not in a pod.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

from artifacts.errors import InvalidInputError
from artifacts.push import PushResult, list_files, push
from artifacts.registry import ClientOptions

# A safetensors file starts with the header's length (u64, little endian) and the JSON header.
_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors(path: Path) -> None:
    """Refuse a file whose header is missing, truncated or not JSON, or whose tensors overrun it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InvalidInputError(f"{path}: {size} bytes is too short for a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_MAX_HEADER, size - 8):
            raise InvalidInputError(f"{path}: header length {length} does not fit the {size}-byte file")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise InvalidInputError(f"{path}: the safetensors header is not JSON ({exc})") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t]
    if ends and 8 + length + max(ends) > size:
        raise InvalidInputError(
            f"{path}: tensors need {8 + length + max(ends)} bytes, the file has {size} (truncated?)"
        )


def push_model(
    source: str,
    reference: str,
    *,
    fmt: str = "modelpack",
    options: ClientOptions | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    preset: str | None = None,
) -> PushResult:
    """Push ``source`` (a directory, or ``REPO_ID@REVISION`` on the hub) to ``reference``."""
    directory = Path(source)
    if directory.is_dir():
        return _push_directory(directory, reference, fmt, options, preset or directory.name, None)
    repo_id, at, revision = source.partition("@")
    if not at or not repo_id or not revision or source.startswith(("/", ".")):
        raise InvalidInputError(
            f"model source {source!r} is neither a directory nor REPO_ID@REVISION (e.g. org/model@<commit>)"
        )
    from artifacts.hub import fetch_hub_snapshot  # huggingface_hub: 0.3 s to import, only for the hub

    with tempfile.TemporaryDirectory(prefix="kaito-model-") as scratch:
        snapshot = fetch_hub_snapshot(
            repo_id, revision, Path(scratch) / "model", token=token, endpoint=endpoint
        )
        name = preset or repo_id.rsplit("/", 1)[-1].lower()
        return _push_directory(Path(scratch) / "model", reference, fmt, options, name, snapshot.commit)


def _push_directory(
    directory: Path,
    reference: str,
    fmt: str,
    options: ClientOptions | None,
    preset: str,
    revision: str | None,
) -> PushResult:
    for name in list_files(directory):
        if name.endswith(".safetensors"):
            check_safetensors(directory / name)
    overrides = {"preset": preset, "model_revision": revision}
    return push(directory, reference, fmt=fmt, options=options, overrides=overrides)
