"""Download tuning-input URLs into the data directory: host policy, retries, resume, size cap.

Each URL's host is checked with :func:`artifacts.hosts.host_refusal`, and so is every address it
resolves to, every redirect hop, and the address each direct connection actually reached (a resolver
that answers differently between the check and the connection, DNS rebinding, is caught there), so
neither DNS nor a redirect can lead to a private or metadata address. Through an HTTP(S) proxy the
proxy resolves the host, and the cluster's egress policy is the backstop. ``allowed_networks`` (the
controller's admin setting KAITO_TUNE_ALLOWED_URL_NETWORKS, passed as ``--allow-network``) opens networks
of in-cluster or air-gapped data servers, or loopback for local development and tests.
Files are written as ``.<name>.partial`` and renamed when complete, so a half-written file is never
mistaken for data.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from artifacts.blob_io import IO_BLOCK, TRANSIENT_ERRORS
from artifacts.errors import BlockedHostError, FetchError, SizeLimitError
from artifacts.hosts import address_refusal, host_refusal, redact_url
from artifacts.registry import GIB, RETRY_STATUSES, Session

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int = 20 * GIB  # for all URLs together
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 60.0
    # CIDRs allowed despite the host policy (in-cluster/air-gapped data servers, local development)
    allowed_networks: tuple[str, ...] = ()
    ca_bundle: str | None = None


def check_url(url: str, allowed_networks: Sequence[str] = ()) -> None:
    """Refuse non-http(s) URLs and hosts (or their addresses) that the SSRF policy forbids.

    Both the literal host and every address it resolves to must be public or inside ``allowed_networks``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(
            f"URL {redact_url(url)!r} must use http or https, not {parts.scheme or 'no scheme'!r}"
        )
    host = parts.hostname or ""
    reason = host_refusal(host, allowed_networks=allowed_networks)
    if reason:
        raise BlockedHostError(f"URL {redact_url(url)!r} refused: {reason}; data URLs must be public hosts")
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise FetchError(
            f"URL {redact_url(url)!r}: host {host!r} does not resolve ({exc.strerror})"
        ) from None
    for info in infos:
        reason = address_refusal(str(info[4][0]), allowed_networks=allowed_networks)
        if reason:
            raise BlockedHostError(f"URL {redact_url(url)!r} refused: {host} resolves to {reason}")


def file_name(url: str, index: int, taken: set[str]) -> str:
    """A safe local name from the URL's last path segment, unique in this fetch."""
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    name = "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in segment).lstrip(".") or f"data-{index}"
    if name in taken:
        name = f"{index}-{name}"
    taken.add(name)
    return name


def _checked(connection: Any, allowed_networks: tuple[str, ...]) -> type[HTTPConnection]:
    """``connection`` that checks the address it actually connected to against the host policy.

    ``check_url`` resolves the host before the request, and the connection resolves it again: a DNS
    answer that changes in between (DNS rebinding) would reach a refused address. The peer of the
    connected socket is what counts."""

    class Checked(connection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            peer = str(sock.getpeername()[0])
            reason = address_refusal(peer, allowed_networks=allowed_networks)
            if reason:
                sock.close()
                raise BlockedHostError(
                    f"host {self.host} connected to {reason}; data URLs must be public hosts"
                )
            return sock

    return Checked


class _PolicyAdapter(HTTPAdapter):
    """Direct connections (not through a proxy, which resolves for itself) checked at connect time."""

    def __init__(self, allowed_networks: tuple[str, ...]) -> None:
        self.allowed_networks = allowed_networks
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pools = {}
        for scheme, pool in (("http", HTTPConnectionPool), ("https", HTTPSConnectionPool)):
            conn = _checked(pool.ConnectionCls, self.allowed_networks)
            pools[scheme] = type(f"Checked{pool.__name__}", (pool,), {"ConnectionCls": conn})
        self.poolmanager.pool_classes_by_scheme = pools


class _Downloader:
    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self.session = Session()
        adapter = _PolicyAdapter(tuple(options.allowed_networks))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = options.ca_bundle or True
        self.session.headers["User-Agent"] = "kaito-tune-fetch"
        self.session.headers["Accept-Encoding"] = "identity"  # byte offsets must match the file for Range
        self.remaining = options.max_bytes

    def _get(self, url: str, offset: int) -> requests.Response:
        """GET following redirects by hand, checking every hop against the host policy."""
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, self.options.allowed_networks)
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            response = self.session.get(
                url, headers=headers, stream=True, allow_redirects=False, timeout=(10, self.options.timeout_s)
            )
            if response.is_redirect:
                url = urljoin(url, response.headers["Location"])
                response.close()
                continue
            return response
        raise FetchError(f"URL {redact_url(url)!r} redirected more than {MAX_REDIRECTS} times")

    def download(self, url: str, target: Path) -> int:
        partial = target.with_name(f".{target.name}.partial")
        failures, last = 0, ""
        try:
            with partial.open("wb") as out:
                while True:
                    if failures > self.options.retries:
                        raise FetchError(
                            f"URL {redact_url(url)!r} kept failing after {failures} attempts (last: {last})"
                        )
                    if failures:
                        time.sleep(
                            self.options.backoff_s * 2 ** (failures - 1) * (0.75 + random.random() / 2)
                        )
                    try:
                        retry = self._attempt(url, out)
                    except TRANSIENT_ERRORS as exc:
                        retry = type(exc).__name__
                    if retry is None:
                        break
                    failures, last = failures + 1, retry
                size = out.tell()
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)
        return size

    def _attempt(self, url: str, out: BinaryIO) -> str | None:
        """One GET from what ``out`` holds; None when the body is complete, else why to retry.

        ``out``'s position is the resume offset: a dropped connection keeps every byte that arrived.
        """
        offset = out.tell()
        response = self._get(url, offset)
        if response.status_code in RETRY_STATUSES:
            return f"HTTP {response.status_code}"
        if response.status_code not in (200, 206):
            raise FetchError(
                f"URL {redact_url(url)!r} answered HTTP {response.status_code}; check that it is public"
            )
        if response.status_code == 200 and offset:  # no resume support: start over
            out.seek(0)
            out.truncate()
            self.remaining += offset
            offset = 0
        length = int(response.headers.get("Content-Length", "0") or 0)
        if length > self.remaining:
            raise SizeLimitError(
                f"URL {redact_url(url)!r} is {length + offset} bytes, over what the "
                "size cap leaves; raise --max-size-gib"
            )
        with response:  # read1: a dropped connection keeps every byte that arrived
            while chunk := response.raw.read1(IO_BLOCK):
                self.remaining -= len(chunk)
                if self.remaining < 0:
                    raise SizeLimitError(
                        f"URL {redact_url(url)!r} exceeds the size cap; raise --max-size-gib"
                    )
                out.write(chunk)
        if length and out.tell() - offset < length:
            raise ConnectionError("body ended early")
        return None


def fetch_urls(urls: Sequence[str], dest: Path, options: FetchOptions | None = None) -> list[Path]:
    """Download every URL into ``dest`` (created if missing); all hosts are checked before any download."""
    options = options or FetchOptions()
    for url in urls:
        check_url(url, options.allowed_networks)
    dest.mkdir(parents=True, exist_ok=True)
    downloader, taken, written = _Downloader(options), set[str](), []
    for index, url in enumerate(urls):
        target = dest / file_name(url, index, taken)
        downloader.download(url, target)
        written.append(target)
    return written
