"""An image reference (``registry/repository:tag`` or ``@digest``) as a value object.

Parsing is oras-py's (``oras.container.Container``); this adds the checks a pull or push needs
(a registry must be named, digests are well formed) and whether the registry is on loopback (where
the client may fall back to plain http, as docker does for local registries).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import oras.container

from artifacts.errors import InvalidInputError

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# Docker Hub's API lives on another host than its name.
_API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port], as written
    repository: str  # namespace/name
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        text = text.strip()
        if "://" in text:
            raise InvalidInputError(
                f"image reference {text!r} must not have a scheme; write registry/repository:tag"
            )
        first = text.split("/", 1)[0]
        if "/" not in text or not ("." in first or ":" in first or first == "localhost"):
            raise InvalidInputError(
                f"image reference {text!r} does not name a registry; write e.g. "
                "myregistry.azurecr.io/adapters/phi-3:v1"
            )
        try:
            container = oras.container.Container(text)
        except ValueError as exc:
            raise InvalidInputError(f"image reference {text!r} is not valid: {exc}") from None
        repository = (
            f"{container.namespace}/{container.repository}" if container.namespace else container.repository
        )
        if repository != repository.lower():
            raise InvalidInputError(f"repository {repository!r} in {text!r} must be lowercase")
        digest = container.digest
        if digest is not None and not DIGEST_RE.match(digest):
            raise InvalidInputError(f"digest {digest!r} in {text!r} is not sha256:<64 hex digits>")
        has_tag = ":" in text.rsplit("/", 1)[-1].split("@", 1)[0]
        tag = container.tag if has_tag or digest is None else None
        return cls(registry=container.registry, repository=repository, tag=tag, digest=digest)

    @property
    def target(self) -> str:
        """What the manifest endpoint is asked for: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return _API_HOSTS.get(self.registry, self.registry)

    @property
    def host_name(self) -> str:
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def is_loopback(self) -> bool:
        name = self.host_name
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        base = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag or 'latest'}"
