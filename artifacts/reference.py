"""An image reference (``registry/repository:tag`` or ``@digest``) as a value object.

The registry must be named (no implicit Docker Hub: a push secret belongs to one registry), the
repository, tag and digest follow the distribution reference grammar. oras-py's parser is not used
here: it reads ``localhost/a`` as a Docker Hub repository. The value also says whether the registry
is on loopback, where the client may fall back to plain http as docker does for local registries.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from artifacts.errors import InvalidInputError

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# distribution/reference grammar: path components and tags
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
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
        registry, _, rest = text.partition("/")
        if not rest or not ("." in registry or ":" in registry or registry == "localhost"):
            raise InvalidInputError(
                f"image reference {text!r} does not name a registry; write e.g. "
                "myregistry.azurecr.io/adapters/phi-3:v1"
            )
        name, _, digest = rest.partition("@")
        repository, _, tag = name.partition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        if repository != repository.lower():
            raise InvalidInputError(f"repository {repository!r} in {text!r} must be lowercase")
        if not REPOSITORY_RE.match(repository):
            raise InvalidInputError(
                f"repository {repository!r} in {text!r} is not valid: use lowercase letters, digits and "
                "separators (. _ -) in /-separated components"
            )
        if tag and not TAG_RE.match(tag):
            raise InvalidInputError(f"tag {tag!r} in {text!r} is not valid: up to 128 of [A-Za-z0-9_.-]")
        if digest and not DIGEST_RE.match(digest):
            raise InvalidInputError(f"digest {digest!r} in {text!r} is not sha256:<64 hex digits>")
        return cls(
            registry=registry,
            repository=repository,
            tag=tag or (None if digest else "latest"),
            digest=digest or None,
        )

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
