"""A model cache shared by the Jobs and servers that mount it: one entry per content, filled once.

    <root>/entries/<key>/    complete entries only: a pull stages beside the entry and renames it in
    <root>/locks/<key>       flock held while the entry is filled, so concurrent fetches fill it once
    <root>/used/<key>        its mtime is the entry's last use, for least-recently-used eviction

Keys name content, never a tag: ``oci-<manifest sha256>`` or ``hub-<org>--<name>-<commit>``, so a moved
tag is a new entry and a cached entry is never stale. A reader needs no lock: entries appear whole and
eviction spares entries used within ``grace_seconds`` (a pod's containers start right after its
fetch-model step touched the entry).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

GRACE_SECONDS = 3600
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def oci_key(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"oci-{algorithm}-{hexdigest}"


def hub_key(repo_id: str, commit: str) -> str:
    return "hub-" + _UNSAFE.sub("_", repo_id.replace("/", "--")) + "-" + _UNSAFE.sub("_", commit)


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    size: int
    last_used: float


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class ModelCache:
    """The cache at ``root`` (a shared volume); created on first use."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.entries = self.root / "entries"
        self._locks = self.root / "locks"
        self._used = self.root / "used"

    def path(self, key: str) -> Path:
        return self.entries / key

    @contextmanager
    def _lock(self, key: str, *, wait: bool = True) -> Iterator[bool]:
        self._locks.mkdir(parents=True, exist_ok=True)
        with open(self._locks / key, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def touch(self, key: str) -> None:
        self._used.mkdir(parents=True, exist_ok=True)
        stamp = self._used / key
        stamp.touch()
        os.utime(stamp)

    def get_or_fill(self, key: str, fill: Callable[[Path], None]) -> tuple[Path, bool]:
        """The entry for ``key``, filled by ``fill(dest)`` unless present: (path, was it cached).

        ``fill`` must publish ``dest`` atomically (``artifacts.pull`` does); leftovers of a fill that
        was killed are removed under the lock before a new one starts.
        """
        self.entries.mkdir(parents=True, exist_ok=True)
        dest = self.path(key)
        with self._lock(key):
            if dest.is_dir():
                self.touch(key)
                return dest, True
            for leftover in self.entries.glob(f".{key}.*"):
                shutil.rmtree(leftover, ignore_errors=True)
            fill(dest)
            self.touch(key)
            return dest, False

    def listing(self) -> list[Entry]:
        if not self.entries.is_dir():
            return []
        found = []
        for path in self.entries.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            stamp = self._used / path.name
            used = stamp.stat().st_mtime if stamp.exists() else path.stat().st_mtime
            found.append(Entry(path.name, path, _size(path), used))
        return sorted(found, key=lambda e: e.last_used)

    def evict(self, max_bytes: int, *, keep: str = "", grace_seconds: float = GRACE_SECONDS) -> list[str]:
        """Delete least recently used entries while the cache holds more than ``max_bytes``; spares
        ``keep``, entries used within ``grace_seconds`` and entries being filled. Returns their keys."""
        entries = self.listing()
        total = sum(e.size for e in entries)
        evicted: list[str] = []
        now = time.time()
        for entry in entries:
            if total <= max_bytes:
                break
            if entry.key == keep or now - entry.last_used < grace_seconds:
                continue
            with self._lock(entry.key, wait=False) as locked:
                if not locked:
                    continue
                doomed = self.entries / f".{entry.key}.evicting"
                os.rename(entry.path, doomed)  # gone for readers at once; deleted below
                shutil.rmtree(doomed, ignore_errors=True)
                (self._used / entry.key).unlink(missing_ok=True)
            total -= entry.size
            evicted.append(entry.key)
        return evicted
