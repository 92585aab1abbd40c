"""Tar layers: KAITO's image layout (files under ``data/``, tar+gzip), writing one and extracting safely;
and the folders ``oras push`` packs (members under the folder's name, the layer titled with it).

Writing is reproducible (sorted members, owner 0, mtime 0, gzip header mtime 0) so the same adapter
gives the same layer digest. gzip level 1: adapter weights barely compress, and level 6 would make
compression, not the network, the bottleneck. The tar ends right after its two zero blocks, without the
record padding Python's ``tarfile`` adds: the ORAS file store checks the uncompressed digest annotation
against the bytes it reads up to that end marker, as Go's ``archive/tar`` writes them.

Extraction streams (``tarfile`` ``r|``) straight from the verifying blob reader. An image layer keeps
only members under ``data/`` (a data image built ``FROM`` a base image carries the base's files too) and
applies OCI whiteouts; an oras folder keeps its members under the folder's name and refuses any other.
Python's ``data`` extraction filter refuses absolute paths, ``..``, links that resolve outside the
destination and device files. When the layer names its uncompressed digest (oras's annotation), the
whole uncompressed stream must match it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from artifacts.errors import IntegrityError, InvalidInputError, SizeLimitError, UnsafeContentError

DATA_PREFIX = "data/"
WHITEOUT = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
IO_BLOCK = 1 << 20
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}  # what go-digest parses


@dataclass(frozen=True)
class LayerFile:
    path: Path
    digest: str  # of the compressed bytes (the blob)
    size: int
    diff_id: str  # of the uncompressed tar (the image config's rootfs)


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: _Writable) -> None:
        self.target = target
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


class _HashingReader:
    """A read-only stream that hashes what is read through it (the uncompressed tar, for its digest)."""

    def __init__(self, source: _Readable, algorithm: str) -> None:
        self.source = source
        self.hasher = hashlib.new(algorithm)

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.hasher.update(data)
        return data


def _info(name: str, kind: bytes, size: int = 0, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_member(out: _HashingWriter, info: tarfile.TarInfo, handle: BinaryIO | None = None) -> None:
    """One tar member: its (PAX) header, then its data padded to a whole block."""
    out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    if handle is None:
        return
    left = info.size
    while left and (chunk := handle.read(min(left, IO_BLOCK))):
        out.write(chunk)
        left -= len(chunk)
    if left or handle.read(1):
        raise InvalidInputError(f"{info.name} changed size while it was being packed; push again")
    if info.size % tarfile.BLOCKSIZE:
        out.write(tarfile.NUL * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE))


def write_data_layer(directory: Path, files: list[str], dest: Path) -> LayerFile:
    """Pack ``files`` (relative posix paths in ``directory``) under ``data/`` into ``dest`` (tar+gzip)."""
    parts = [name.split("/") for name in files]
    all_dirs = sorted({"/".join(p[:i]) for p in parts for i in range(1, len(p))})
    with dest.open("wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            plain = _HashingWriter(gz)
            _add_member(plain, _info(DATA_PREFIX, tarfile.DIRTYPE))
            for name in all_dirs:
                _add_member(plain, _info(DATA_PREFIX + name + "/", tarfile.DIRTYPE))
            for name in sorted(files):
                source = directory / name
                mode = 0o755 if os.access(source, os.X_OK) else 0o644
                with source.open("rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    _add_member(plain, _info(DATA_PREFIX + name, tarfile.REGTYPE, size, mode), handle)
            plain.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))  # the end; no record padding after it
    return LayerFile(
        path=dest,
        digest="sha256:" + compressed.hasher.hexdigest(),
        size=compressed.size,
        diff_id="sha256:" + plain.hasher.hexdigest(),
    )


def _relative_to(name: str, folder: str) -> str | None:
    """``./data/a/b`` -> ``a/b`` for folder ``data``; None for members outside it; raises on traversal."""
    clean = name.lstrip("/")
    while clean.startswith("./"):
        clean = clean[2:]
    if not (clean.rstrip("/") == folder or clean.startswith(folder + "/")):
        return None
    relative = clean[len(folder) + 1 :].rstrip("/")
    if relative and (
        posixpath.normpath(relative) != relative or relative.startswith("../") or relative == ".."
    ):
        raise UnsafeContentError(f"layer member {name!r} is not a plain path under {folder}/; refusing it")
    return relative


def _remove(root: Path, relative: str) -> None:
    target = root / relative
    if not os.path.realpath(target).startswith(os.path.realpath(root) + os.sep):
        raise UnsafeContentError(f"whiteout {relative!r} points outside the destination; refusing it")
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def _uncompressed_hash(expected: str | None, label: str) -> tuple[str, str] | None:
    """(algorithm, hex) of an ``io.deis.oras.content.digest`` value; None when absent. Like oras-go, a
    value that does not parse as a digest is ignored; a digest of an unknown algorithm is refused."""
    algorithm, _, hexdigest = (expected or "").partition(":")
    if not algorithm or not re.fullmatch(r"[0-9a-f]+", hexdigest):
        return None
    if algorithm not in _HEX_LENGTHS:
        raise IntegrityError(f"{label}: uncompressed digest {expected!r} uses an unsupported algorithm")
    return (algorithm, hexdigest) if len(hexdigest) == _HEX_LENGTHS[algorithm] else None


def extract_layer(
    stream: _Readable,
    gzipped: bool,
    root: Path,
    budget: list[int],
    label: str,
    *,
    folder: str | None = None,
    uncompressed_digest: str | None = None,
) -> int:
    """Extract one tar layer into ``root``; returns the files written.

    ``folder=None``: an image layer in KAITO's layout, its ``data/`` members land in ``root`` (whiteouts
    applied). ``folder="name"``: a folder ``oras push`` packed, its ``name/`` members land in
    ``root/name``, and a member outside it is refused. ``uncompressed_digest``, if given, is checked
    against the whole uncompressed stream. ``budget`` is a one-element list of bytes still allowed,
    shared across layers so the size cap holds for the whole pull (a gzip bomb stops at the cap, not at
    the disk's end).
    """
    expected = _uncompressed_hash(uncompressed_digest, label)
    # GzipFile seeks only to rewind, which reading a layer once never does.
    source = gzip.GzipFile(fileobj=stream, mode="rb") if gzipped else stream  # type: ignore[call-overload]
    plain = _HashingReader(source, expected[0] if expected else "sha256")
    try:
        # A stream ("r|") is only read, so the reader needs no seek/tell/write.
        with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
            written = _extract_members(tar, root, budget, label, folder)
        while plain.read(IO_BLOCK):  # the tar's end may precede the stream's: hash it all
            pass
    except (tarfile.ReadError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        kind = "tar+gzip" if gzipped else "tar"
        raise InvalidInputError(f"{label}: a layer is not a valid {kind} archive ({exc})") from None
    if expected and plain.hasher.hexdigest() != expected[1]:
        raise IntegrityError(
            f"{label}: layer unpacks to {expected[0]}:{plain.hasher.hexdigest()}, not the "
            f"{uncompressed_digest} its annotation names; refusing it"
        )
    return written


def _extract_members(
    tar: tarfile.TarFile, root: Path, budget: list[int], label: str, folder: str | None
) -> int:
    written = 0
    prefix = folder or DATA_PREFIX.rstrip("/")
    # Symbolic links may only point down, never with '..' nor absolute, and nothing may be written
    # beneath one: then no chain of links can climb out, whatever the tarfile filter of this Python
    # does (its "data" filter missed chains before 3.11.13: CVE-2025-4517).
    links: set[str] = set()
    for member in tar:
        budget[0] -= max(member.size, 0)
        if budget[0] < 0:
            raise SizeLimitError(f"{label} unpacks to more than the size cap allows; raise --max-size-gib")
        relative = _member_path(member, prefix, folder, label)
        if folder is not None and member.isdir() and relative == folder:
            (root / folder).mkdir(parents=True, exist_ok=True)
            continue
        if not relative or (folder is None and _applied_whiteout(root, relative)):
            continue
        entry = _checked_entry(member, relative, links, prefix, folder, label)
        try:
            tar.extract(entry, root, set_attrs=True, filter="data")
        except tarfile.FilterError as exc:
            raise UnsafeContentError(f"{label}: member {member.name!r} refused: {exc}") from None
        written += member.isfile()
    return written


def _member_path(member: tarfile.TarInfo, prefix: str, folder: str | None, label: str) -> str | None:
    """Where a member lands under the destination: below ``folder`` when the layer is titled with one."""
    relative = _relative_to(member.name, prefix)
    if folder is None:
        return relative
    if relative is None:
        raise UnsafeContentError(
            f"{label}: member {member.name!r} is outside the folder {folder!r} the layer is titled "
            "with; refusing it"
        )
    return posixpath.join(folder, relative) if relative else folder


def _applied_whiteout(root: Path, relative: str) -> bool:
    """Apply an OCI whiteout (``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` empties the folder)."""
    base = posixpath.basename(relative)
    if not base.startswith(WHITEOUT):
        return False
    parent = posixpath.dirname(relative)
    if base == OPAQUE_WHITEOUT:
        target = root / parent
        for child in target.iterdir() if target.is_dir() else ():
            _remove(root, posixpath.join(parent, child.name))
    else:
        _remove(root, posixpath.join(parent, base[len(WHITEOUT) :]))
    return True


def _checked_entry(
    member: tarfile.TarInfo, relative: str, links: set[str], prefix: str, folder: str | None, label: str
) -> tarfile.TarInfo:
    """The member renamed to ``relative``, after the link rules (``links`` collects the symlinks)."""
    if any(relative == link or relative.startswith(link + "/") for link in links):
        raise UnsafeContentError(f"{label}: member {member.name!r} lies beneath a symbolic link; refusing it")
    if member.issym():
        if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
            raise UnsafeContentError(
                f"{label}: symbolic link {member.name!r} -> {member.linkname!r} is absolute or climbs "
                "with '..'; refusing it"
            )
        links.add(relative)
    entry = member.replace(name=relative, deep=False)
    if member.islnk():
        target = _relative_to(member.linkname, prefix)
        if not target:
            raise UnsafeContentError(
                f"{label}: hard link {member.name!r} -> {member.linkname!r} leaves {prefix}/; refusing it"
            )
        entry.linkname = posixpath.join(folder, target) if folder else target
    return entry
