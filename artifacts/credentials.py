"""Credentials from a dockerconfigjson file, matched to a registry host.

The file is the ``.dockerconfigjson`` key of a ``kubernetes.io/dockerconfigjson`` Secret as mounted
(or a ``~/.docker/config.json``): ``{"auths": {"<registry>": {"auth": base64(user:pass)} |
{"username", "password"} | {"identitytoken"} | {"registrytoken"}}}``. A :class:`Credential` remembers
which ``auths`` key it came from so errors can name it; its secrets never appear in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from artifacts.errors import InvalidInputError

_DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/")


@dataclass(frozen=True)
class Credential:
    source: str  # "<file> entry '<auths key>'" for messages
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token
    registry_token: str | None = field(default=None, repr=False)  # bearer token used as is

    @property
    def has_basic(self) -> bool:
        return bool(self.username and self.password is not None)


def _normalize(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``."""
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    return "docker.io" if key in _DOCKER_HUB_KEYS or host in _DOCKER_HUB_KEYS else host


def load_auths(path: Path) -> dict[str, dict]:
    """The ``auths`` map of a dockerconfigjson file; errors name the file, never its content."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"docker config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"docker config {path} is not readable JSON ({type(exc).__name__}); "
            "it must be the .dockerconfigjson of a kubernetes.io/dockerconfigjson Secret"
        ) from None
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise InvalidInputError(f"docker config {path} has no 'auths' object")
    return auths


def credential_for(path: Path, registry: str) -> Credential | None:
    """The credential whose ``auths`` key matches ``registry`` (host[:port]), or None."""
    auths = load_auths(path)
    wanted = _normalize(registry)
    for key, entry in auths.items():
        if _normalize(key) != wanted or not isinstance(entry, dict):
            continue
        source = f"{path} entry {key!r}"
        username, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
                username, _, password = decoded.partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise InvalidInputError(f"{source}: 'auth' is not base64 of 'username:password'") from None
        return Credential(
            source=source,
            username=username or None,
            password=password,
            identity_token=entry.get("identitytoken") or None,
            registry_token=entry.get("registrytoken") or None,
        )
    return None


def describe_missing(path: Path | None, registry: str) -> str:
    """Says why no credential was used, for 401 messages."""
    if path is None:
        return "no credentials (no docker config given; pass --docker-config)"
    keys = sorted(load_auths(path))
    return f"no credentials: {path} has no entry for {registry!r} (entries: {', '.join(keys) or 'none'})"
