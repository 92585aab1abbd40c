"""Parsing references and matching docker config entries: the errors a user sees for bad input."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from artifacts.credentials import credential_for
from artifacts.errors import InvalidInputError
from artifacts.reference import Reference


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("myreg.azurecr.io/adapters/phi-3:v1", "myreg.azurecr.io", "adapters/phi-3", "v1", None),
        ("localhost:5000/a", "localhost:5000", "a", "latest", None),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io", "o/r", None, "sha256:" + "a" * 64),
        ("[::1]:5000/a:t", "[::1]:5000", "a", "t", None),
    ],
)
def test_references_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.target == (digest or tag)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("adapters/phi-3:v1", "does not name a registry"),
        ("https://myreg.io/a:v1", "must not have a scheme"),
        ("myreg.io/Adapters:v1", "must be lowercase"),
        ("myreg.io/a@sha256:1234", "is not sha256:<64 hex digits>"),
    ],
)
def test_bad_references_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Reference.parse(text)


def test_loopback_detection() -> None:
    assert Reference.parse("127.0.0.1:5000/a").is_loopback
    assert Reference.parse("localhost/a:v1").is_loopback
    assert Reference.parse("[::1]:5000/a").is_loopback
    assert not Reference.parse("myreg.io/a").is_loopback


def test_entries_match_with_scheme_path_and_docker_hub_aliases(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"user:pa:ss").decode()
    config.write_text(
        json.dumps(
            {"auths": {"https://index.docker.io/v1/": {"auth": auth}, "https://myreg.io/v2/": {"auth": auth}}}
        )
    )
    hub = credential_for(config, "docker.io")
    assert hub is not None and (hub.username, hub.password) == ("user", "pa:ss")
    assert credential_for(config, "myreg.io") is not None
    assert credential_for(config, "myreg.io:5000") is None
    assert "pa:ss" not in repr(hub)


def test_malformed_entries_are_named_without_their_content(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"myreg.io": {"auth": "not base64 secret!"}}}))
    with pytest.raises(InvalidInputError, match=r"entry 'myreg\.io': 'auth' is not base64") as caught:
        credential_for(config, "myreg.io")
    assert "secret" not in str(caught.value)
    config.write_text("{not json")
    with pytest.raises(InvalidInputError, match="is not readable JSON"):
        credential_for(config, "myreg.io")
