"""A small OCI distribution client: auth, retries, streaming resumable blob upload, verified download.

oras-py's push reads each blob whole into memory and sends it in one request; adapters and data
images can be many GiB, so blobs here are hashed and sent from disk in chunks (``PATCH`` with
``Content-Range``), and a failed chunk is resumed from the offset the registry reports for the upload
session (``GET`` on the upload URL) instead of starting over. Downloads are verified while they stream
and resume with ``Range`` requests after a dropped connection.

Auth follows the distribution spec: an anonymous request, then on 401 the ``WWW-Authenticate``
challenge decides between Basic (credentials from the docker config) and Bearer (a token from the
challenge's realm, obtained with the username/password, an identity token or anonymously).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import oras.auth.utils
import requests
from requests.adapters import HTTPAdapter

from artifacts import mediatypes
from artifacts.blob_io import IO_BLOCK, TRANSIENT_ERRORS, BlobReader, FileSlice, Progress
from artifacts.credentials import Credential, credential_for, describe_missing
from artifacts.errors import (
    AuthError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    SizeLimitError,
)
from artifacts.hosts import registry_refusal
from artifacts.reference import Reference

MIB = 1 << 20
GIB = 1 << 30
MAX_MANIFEST_BYTES = 4 * MIB
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the registry. Defaults suit a push container; tests shrink chunk and backoff."""

    docker_config: Path | None = None
    plain_http: bool = False  # http even for non-loopback registries
    ca_bundle: str | None = None  # PEM file for registries with a private CA
    retries: int = 5  # attempts after the first, for 5xx/429 and connection errors
    backoff_s: float = 0.5  # first wait; doubles each retry, with jitter
    backoff_max_s: float = 10.0
    timeout_s: float = 60.0  # per socket read, not per transfer
    chunk_bytes: int = 64 * MIB  # PATCH size: the unit a failed upload re-sends at most
    max_bytes: int = 20 * GIB  # pull size cap (compressed blobs and extracted bytes)


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    media_type: str
    digest: str

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.raw)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


class Session(requests.Session):
    """A requests session whose ``verify`` (a CA bundle) is not overridden by ``REQUESTS_CA_BUNDLE``.

    requests lets that environment variable beat ``Session.verify``; passing it per request does not.
    """

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


class _LargeBlockAdapter(HTTPAdapter):
    """Sends request bodies in 1 MiB writes instead of http.client's 16 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = IO_BLOCK
        super().init_poolmanager(*args, **kwargs)


def _registry_message(response: requests.Response) -> str:
    """The distribution error code and message, if the body has them."""
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return ""
    return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors[:3])


class RegistryClient:
    """One repository on one registry, with the credentials the docker config holds for it."""

    def __init__(self, ref: Reference, options: ClientOptions, *, push: bool = False) -> None:
        self.ref = ref
        self.options = options
        self.actions = "pull,push" if push else "pull"
        self._base: str | None = None
        self.credential: Credential | None = (
            credential_for(options.docker_config, ref.registry) if options.docker_config else None
        )
        self.session = Session()
        self.session.verify = options.ca_bundle or True
        self.session.headers["User-Agent"] = "kaito-tune-artifacts"
        self.session.mount("http://", _LargeBlockAdapter())
        self.session.mount("https://", _LargeBlockAdapter())
        self._authorization: str | None = None

    # -- transport, auth and retries -------------------------------------------------------------

    @property
    def base(self) -> str:
        """``<scheme>://<host>/v2/<repository>``: https, or http when asked for or on loopback without TLS."""
        if self._base is None:
            scheme = (
                "http"
                if self.options.plain_http or (self.ref.is_loopback and not self._speaks_tls())
                else "https"
            )
            self._base = f"{scheme}://{self.ref.api_host}/v2/{self.ref.repository}"
        return self._base

    def _speaks_tls(self) -> bool:
        """Whether a loopback registry answers TLS (a certificate problem still counts as TLS)."""
        try:
            self.session.get(f"https://{self.ref.api_host}/v2/", timeout=(5, 10)).close()
        except requests.exceptions.SSLError as exc:
            return "CERTIFICATE_VERIFY_FAILED" in str(exc)
        except TRANSIENT_ERRORS:
            return False
        return True

    def _tls_failure(self, exc: requests.exceptions.SSLError) -> RegistryError:
        reason = (
            "certificate verification failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "TLS failed"
        )
        return RegistryError(
            f"{reason} for registry {self.ref.registry}; if it uses a private CA pass --ca-bundle "
            "(or KAITO_TUNE_CA_BUNDLE), if it serves plain http pass --plain-http"
        )

    def _credential_text(self) -> str:
        if self.credential is not None:
            return f"credential {self.credential.source}"
        return describe_missing(self.options.docker_config, self.ref.registry)

    def _sleep(self, attempt: int) -> None:
        delay = min(self.options.backoff_s * (2**attempt), self.options.backoff_max_s)
        time.sleep(delay * (0.75 + random.random() / 2))

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        body: Callable[[], Any] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One request, answering at most two auth challenges (a first login and a token refresh)."""
        for _ in range(3):
            merged = dict(headers or {})
            if self._authorization and urlsplit(url).netloc == self.ref.api_host:  # never to other hosts
                merged["Authorization"] = self._authorization
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body() if body else None,
                    headers=merged,
                    timeout=(10, self.options.timeout_s),
                    **kwargs,
                )
            except requests.exceptions.SSLError as exc:
                raise self._tls_failure(exc) from None
            if response.status_code != 401:
                return response
            response.close()
            self._authenticate(response, what)
        raise AuthError(
            f"registry {self.ref.registry} kept answering 401 to {what} with {self._credential_text()}"
        )

    def _authenticate(self, response: requests.Response, what: str) -> None:
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        previous = self._authorization
        if scheme == "basic":
            if self.credential is None or not self.credential.has_basic:
                raise AuthError(
                    f"registry {self.ref.registry} requires a login for {what}; {self._credential_text()}"
                )
            pair = f"{self.credential.username}:{self.credential.password}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
        elif scheme == "bearer":
            self._authorization = "Bearer " + self._fetch_token(challenge, what)
        else:
            raise AuthError(f"registry {self.ref.registry} answered 401 to {what} without a usable challenge")
        if self._authorization == previous:
            raise AuthError(
                f"registry {self.ref.registry} rejected {self._credential_text()} for {what} (HTTP 401); "
                "check the username and password of the image push/pull secret"
            )

    def _fetch_token(self, challenge: str, what: str) -> str:
        header = oras.auth.utils.parse_auth_header(challenge)
        if not header.realm:
            raise AuthError(f"registry {self.ref.registry} sent a Bearer challenge without a realm")
        realm = urlsplit(header.realm)
        refusal = registry_refusal(realm.hostname or "")
        schemes = ("https", "http") if self.base.startswith("http://") else ("https",)  # plain-HTTP registry
        if realm.scheme not in schemes or not realm.hostname or refusal:
            raise AuthError(
                f"registry {self.ref.registry} sent the token service {header.realm!r}, which gets no "
                f"credentials: {refusal or 'it must be an https URL'}"
            )
        scope = header.scope or f"repository:{self.ref.repository}:{self.actions}"
        credential = self.credential
        if credential is not None and credential.registry_token:
            return credential.registry_token
        params = {"service": header.service or "", "scope": scope}
        try:
            if credential is not None and credential.identity_token:
                form = {
                    **params,
                    "grant_type": "refresh_token",
                    "refresh_token": credential.identity_token,
                    "client_id": "kaito-tune",
                }
                response = self.session.post(header.realm, data=form, timeout=(10, self.options.timeout_s))
            else:
                auth = (
                    (credential.username, credential.password or "")
                    if credential and credential.username and credential.has_basic
                    else None
                )
                response = self.session.get(
                    header.realm, params=params, auth=auth, timeout=(10, self.options.timeout_s)
                )
        except TRANSIENT_ERRORS as exc:
            raise RegistryUnavailableError(
                f"token service {header.realm} of {self.ref.registry} unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            raise AuthError(
                f"token service {header.realm} of registry {self.ref.registry} refused "
                f"{self._credential_text()} for {what} (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryError(
                f"token service {header.realm} of registry {self.ref.registry} answered HTTP "
                f"{response.status_code} for {what}"
            )
        try:
            payload = response.json()
            return payload.get("token") or payload["access_token"]
        except (ValueError, KeyError):
            raise RegistryError(f"token service {header.realm} answered without a token") from None

    def _error(self, response: requests.Response, what: str) -> RegistryError:
        detail = _registry_message(response)
        suffix = f": {detail}" if detail else ""
        status = response.status_code
        if status == 404:
            return NotFoundError(
                f"{what}: not found in repository {self.ref.repository} "
                f"on registry {self.ref.registry}{suffix}"
            )
        if status in (401, 403):
            return AuthError(
                f"registry {self.ref.registry} denied {what} on repository {self.ref.repository} "
                f"(HTTP {status}) with {self._credential_text()}{suffix}"
            )
        return RegistryError(f"{what}: registry {self.ref.registry} answered HTTP {status}{suffix}")

    def request(
        self, method: str, url: str, *, what: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> requests.Response:
        """A request retried with backoff on 5xx/429 and connection errors; other failures raise."""
        last = ""
        for attempt in range(self.options.retries + 1):
            if attempt:
                self._sleep(attempt - 1)
            try:
                response = self._send(method, url, what=what, **kwargs)
            except TRANSIENT_ERRORS as exc:
                last = type(exc).__name__
                continue
            if response.status_code in ok:
                return response
            if response.status_code in RETRY_STATUSES:
                last = f"HTTP {response.status_code}"
                response.close()
                continue
            raise self._error(response, what)
        raise RegistryUnavailableError(
            f"registry {self.ref.registry} unavailable for {what} after "
            f"{self.options.retries + 1} attempts (last: {last})"
        )

    # -- manifests --------------------------------------------------------------------------------

    def get_manifest(self, target: str) -> Manifest:
        what = f"manifest {self.ref.repository}{'@' if target.startswith('sha256:') else ':'}{target}"
        response = self.request(
            "GET",
            f"{self.base}/manifests/{target}",
            what=what,
            headers={"Accept": ", ".join(mediatypes.MANIFEST_ACCEPT)},
            stream=True,
        )
        with response:
            raw = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise SizeLimitError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        digest = sha256_digest(raw)
        if target.startswith("sha256:") and digest != target:
            raise IntegrityError(f"{what}: registry returned a manifest whose digest is {digest}")
        try:
            media_type = json.loads(raw).get("mediaType") or response.headers.get("Content-Type", "")
        except ValueError:
            raise IntegrityError(f"{what} is not JSON") from None
        return Manifest(raw=raw, media_type=media_type.split(";")[0].strip(), digest=digest)

    def put_manifest(self, raw: bytes, media_type: str, tag: str) -> str:
        digest = sha256_digest(raw)
        self.request(
            "PUT",
            f"{self.base}/manifests/{tag}",
            what=f"manifest {self.ref.repository}:{tag}",
            ok=(201,),
            headers={"Content-Type": media_type},
            body=lambda: raw,
        )
        return digest

    # -- blob upload ------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        response = self.request("HEAD", f"{self.base}/blobs/{digest}", what=f"blob {digest}", ok=(200, 404))
        return response.status_code == 200

    def put_small_blob(self, data: bytes, digest: str) -> None:
        """Monolithic upload for config blobs and other bytes already in memory."""
        if self.blob_exists(digest):
            return
        location, _ = self._start_upload()
        self.request(
            "PUT",
            location,
            what=f"blob {digest}",
            ok=(201,),
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            body=lambda: data,
        )

    def _start_upload(self) -> tuple[str, int]:
        """A new upload session's URL and the chunk size to use (at least the registry's minimum)."""
        response = self.request(
            "POST", f"{self.base}/blobs/uploads/", what="starting a blob upload", ok=(202,)
        )
        minimum = int(response.headers.get("OCI-Chunk-Min-Length", "0") or 0)
        return urljoin(response.url, response.headers["Location"]), max(self.options.chunk_bytes, minimum)

    def _upload_offset(self, location: str) -> tuple[str, int] | None:
        """Where an interrupted upload session stands, or None if the registry forgot it."""
        try:
            response = self.request("GET", location, what="resuming a blob upload", ok=(204,))
        except NotFoundError:
            return None
        end = response.headers.get("Range", "0--1").removeprefix("bytes=").split("-", 1)[1]
        return urljoin(response.url, response.headers.get("Location", location)), int(end) + 1

    def upload_blob(self, path: Path, digest: str, size: int, progress: Progress | None = None) -> bool:
        """Upload a file in chunks unless the registry has it; True if bytes were sent."""
        if self.blob_exists(digest):
            if progress:
                progress(size)
            return False
        what = f"uploading {path.name} ({digest})"
        (location, chunk), offset, failures = self._start_upload(), 0, 0
        while offset < size:
            end = min(offset + chunk, size)
            start = offset
            try:
                response = self._send(
                    "PATCH",
                    location,
                    what=what,
                    body=functools.partial(FileSlice, path, start, end, progress),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{end - 1}",
                    },
                )
                transient = response.status_code in RETRY_STATUSES or response.status_code == 416
            except TRANSIENT_ERRORS:
                transient, response = True, None
            if not transient and response is not None:
                if response.status_code != 202:
                    raise self._error(response, what)
                location, offset = urljoin(response.url, response.headers["Location"]), end
                continue
            failures += 1
            if failures > self.options.retries:
                raise RegistryUnavailableError(
                    f"registry {self.ref.registry} kept failing while {what} at byte {offset} of {size}"
                )
            self._sleep(failures - 1)
            state = self._upload_offset(location)
            if state is None:  # the session is gone (registry lost its state): start again
                (location, chunk), offset = self._start_upload(), 0
            else:
                location, offset = state
        self.request(
            "PUT",
            location,
            what=what,
            ok=(201,),
            params={"digest": digest},
            headers={"Content-Length": "0"},
        )
        return True

    # -- blob download ----------------------------------------------------------------------------

    def open_blob(self, descriptor: dict[str, Any]) -> BlobReader:
        return BlobReader(self, descriptor)

    def download_blob(self, descriptor: dict[str, Any], dest: Path, progress: Progress | None = None) -> None:
        with self.open_blob(descriptor) as reader, dest.open("wb") as out:
            while chunk := reader.read(IO_BLOCK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))
