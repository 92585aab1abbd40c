"""Blob bodies: a file slice an upload sends from disk, and the download stream that resumes and verifies."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import urllib3

from artifacts.errors import IntegrityError, InvalidInputError, RegistryUnavailableError, SizeLimitError

if TYPE_CHECKING:
    from artifacts.registry import RegistryClient

IO_BLOCK = 1 << 20
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
)

Progress = Callable[[int], None]


class FileSlice:
    """``path[start:end]`` as an iterable body with a length, so requests sends Content-Length."""

    def __init__(self, path: Path, start: int, end: int, progress: Progress | None) -> None:
        self.path, self.start, self.end, self.progress = path, start, end, progress

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[memoryview]:
        buffer = bytearray(IO_BLOCK)
        view = memoryview(buffer)
        remaining = self.end - self.start
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            while remaining:
                count = handle.readinto(view[: min(IO_BLOCK, remaining)])
                if not count:
                    raise InvalidInputError(f"{self.path} shrank while it was being uploaded")
                remaining -= count
                yield view[:count]
                if self.progress:
                    self.progress(count)


class BlobReader:
    """A blob as a read-only stream: resumes with Range after connection loss, checks size and digest.

    ``read`` raises :class:`IntegrityError` the moment more bytes arrive than the descriptor's size, and
    at end of stream if the sha256 differs, so nothing unverified is ever reported as complete.
    """

    def __init__(self, client: RegistryClient, descriptor: dict[str, Any]) -> None:
        self.client = client
        self.digest: str = descriptor["digest"]
        self.size: int = int(descriptor["size"])
        if not self.digest.startswith("sha256:"):
            raise IntegrityError(f"blob digest {self.digest!r} is not sha256; only sha256 is supported")
        if self.size > client.options.max_bytes:
            raise SizeLimitError(
                f"blob {self.digest} is {self.size} bytes, over the {client.options.max_bytes}-byte cap"
            )
        self.url = f"{client.base}/blobs/{self.digest}"
        self.offset = 0
        self.hasher = hashlib.sha256()
        self.failures = 0
        self.response: requests.Response | None = None
        self.verified = False

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    def _open(self) -> requests.Response:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        response = self.client.request(
            "GET", self.url, what=f"blob {self.digest}", ok=(200, 206), stream=True, headers=headers
        )
        if self.offset and response.status_code == 200:  # no range support: skip what we have
            skip = self.offset
            while skip:
                skipped = response.raw.read(min(IO_BLOCK, skip))
                if not skipped:
                    break
                skip -= len(skipped)
        self.response = response
        return response

    def read(self, size: int = IO_BLOCK) -> bytes:
        if self.offset >= self.size:
            self._verify()
            return b""
        while True:
            try:
                response = self.response or self._open()
                chunk = response.raw.read(min(size, self.size - self.offset + 1))
                if chunk:
                    break
                raise ConnectionError("stream ended early")
            except TRANSIENT_ERRORS as exc:
                self.close()
                self.failures += 1
                if self.failures > self.client.options.retries:
                    raise RegistryUnavailableError(
                        f"download of blob {self.digest} from {self.client.ref.registry} kept failing at "
                        f"byte {self.offset} of {self.size} ({type(exc).__name__})"
                    ) from None
                self.client._sleep(self.failures - 1)
        if self.offset + len(chunk) > self.size:
            raise IntegrityError(
                f"blob {self.digest} is longer than the {self.size} bytes its descriptor says"
            )
        self.offset += len(chunk)
        self.hasher.update(chunk)
        if self.offset == self.size:
            self._verify()
        return chunk

    def _verify(self) -> None:
        if self.verified:
            return
        actual = "sha256:" + self.hasher.hexdigest()
        if actual != self.digest:
            raise IntegrityError(
                f"blob {self.digest} from {self.client.ref.registry}/{self.client.ref.repository} "
                f"has digest {actual}: the content was altered; pull again or push it again"
            )
        self.verified = True
