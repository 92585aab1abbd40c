"""KAITO's image layout: files under ``data/`` in a tar+gzip layer; writing one and extracting safely.

Writing is reproducible (sorted members, owner 0, mtime 0, gzip header mtime 0) so the same adapter
gives the same layer digest. gzip level 1: adapter weights barely compress, and level 6 would make
compression, not the network, the bottleneck.

Extraction streams (``tarfile`` ``r|`` modes) straight from the verifying blob reader, keeps only
members under ``data/`` (a data image built ``FROM`` a base image carries the base's files too), applies
OCI whiteouts, and lets Python's ``data`` extraction filter refuse absolute paths, ``..``, links that
resolve outside the destination and device files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from artifacts.errors import SizeLimitError, UnsafeContentError

DATA_PREFIX = "data/"
WHITEOUT = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


@dataclass(frozen=True)
class LayerFile:
    path: Path
    digest: str  # of the compressed bytes (the blob)
    size: int
    diff_id: str  # of the uncompressed tar (the image config's rootfs)


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def _info(name: str, kind: bytes, size: int = 0, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_data_layer(directory: Path, files: list[str], dest: Path) -> LayerFile:
    """Pack ``files`` (relative posix paths in ``directory``) under ``data/`` into ``dest`` (tar+gzip)."""
    parts = [name.split("/") for name in files]
    all_dirs = sorted({"/".join(p[:i]) for p in parts for i in range(1, len(p))})
    with dest.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            plain = _HashingWriter(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info(DATA_PREFIX, tarfile.DIRTYPE))
                for name in all_dirs:
                    tar.addfile(_info(DATA_PREFIX + name + "/", tarfile.DIRTYPE))
                for name in sorted(files):
                    source = directory / name
                    mode = 0o755 if os.access(source, os.X_OK) else 0o644
                    with source.open("rb") as handle:
                        size = os.fstat(handle.fileno()).st_size
                        tar.addfile(_info(DATA_PREFIX + name, tarfile.REGTYPE, size, mode), handle)
    return LayerFile(
        path=dest,
        digest="sha256:" + compressed.hasher.hexdigest(),
        size=compressed.size,
        diff_id="sha256:" + plain.hasher.hexdigest(),
    )


def _data_relative(name: str) -> str | None:
    """``./data/a/b`` -> ``a/b``; None for members outside ``data/``; raises on traversal."""
    clean = name.lstrip("/")
    while clean.startswith("./"):
        clean = clean[2:]
    if not (clean == "data" or clean.startswith(DATA_PREFIX)):
        return None
    relative = clean[len(DATA_PREFIX) :].rstrip("/")
    if relative and (
        posixpath.normpath(relative) != relative or relative.startswith("../") or relative == ".."
    ):
        raise UnsafeContentError(f"layer member {name!r} is not a plain path under /data; refusing it")
    return relative


def _remove(root: Path, relative: str) -> None:
    target = root / relative
    if not os.path.realpath(target).startswith(os.path.realpath(root) + os.sep):
        raise UnsafeContentError(f"whiteout {relative!r} points outside the destination; refusing it")
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def extract_data_layer(stream: BinaryIO, gzipped: bool, root: Path, budget: list[int], label: str) -> int:
    """Extract the ``data/`` members of one layer into ``root``; returns the files written.

    ``budget`` is a one-element list of bytes still allowed, shared across layers so the size cap
    holds for the whole pull (a gzip bomb stops at the cap, not at the disk's end).
    """
    written = 0
    with tarfile.open(fileobj=stream, mode="r|gz" if gzipped else "r|") as tar:
        for member in tar:
            budget[0] -= max(member.size, 0)
            if budget[0] < 0:
                raise SizeLimitError(
                    f"{label} unpacks to more than the size cap allows; raise --max-size-gib"
                )
            relative = _data_relative(member.name)
            if not relative:
                continue
            base = posixpath.basename(relative)
            if base.startswith(WHITEOUT):
                parent = posixpath.dirname(relative)
                if base == OPAQUE_WHITEOUT:
                    target = root / parent
                    for child in target.iterdir() if target.is_dir() else ():
                        _remove(root, posixpath.join(parent, child.name))
                else:
                    _remove(root, posixpath.join(parent, base[len(WHITEOUT) :]))
                continue
            entry = member.replace(name=relative, deep=False)
            if member.islnk():
                target = _data_relative(member.linkname)
                if not target:
                    raise UnsafeContentError(
                        f"{label}: hard link {member.name!r} -> {member.linkname!r} leaves /data; refusing it"
                    )
                entry.linkname = target
            try:
                tar.extract(entry, root, set_attrs=True, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeContentError(f"{label}: member {member.name!r} refused: {exc}") from None
            written += member.isfile()
    return written
