"""Errors raised by the artifact code, one category per thing a caller may want to catch.

::

    ArtifactError                 every failure; ``str(e)`` is one line fit for a Workspace status
    ├── RegistryError             the registry answered with an error the client cannot fix by retrying
    │   ├── AuthError             401/403: names the registry and the credential entry tried, never the secret
    │   └── NotFoundError         404: names the repository and the tag, digest or blob
    ├── RegistryUnavailableError  5xx or connection failures that outlived every retry
    ├── IntegrityError            a blob or manifest whose bytes do not match its digest or size
    ├── UnsafeContentError        a path that would land outside the destination (traversal, escaping links)
    ├── SizeLimitError            content larger than the configured cap
    ├── InvalidInputError         a bad reference, directory, docker config or flag value
    ├── NotBetterError            an adapter whose metadata.json says it failed the trainer's gate
    └── FetchError                a URL input that could not be downloaded
        └── BlockedHostError      a URL whose host is loopback, private, link-local or a metadata service
"""

from __future__ import annotations


class ArtifactError(Exception):
    """Base class; the message is a single line that says what failed and what to do."""


class RegistryError(ArtifactError):
    """The registry refused a request for a reason retrying will not fix."""


class AuthError(RegistryError):
    """401/403 from the registry or its token service."""


class NotFoundError(RegistryError):
    """404: the repository, tag, digest or blob does not exist."""


class RegistryUnavailableError(ArtifactError):
    """Server errors or connection failures persisted through all retries."""


class IntegrityError(ArtifactError):
    """Downloaded bytes do not match the digest or size the manifest promised."""


class UnsafeContentError(ArtifactError):
    """A file path or link in an artifact points outside the destination directory."""


class SizeLimitError(ArtifactError):
    """The artifact or download is larger than the allowed maximum."""


class InvalidInputError(ArtifactError):
    """A reference, directory, docker config or option the caller passed is unusable."""


class NotBetterError(ArtifactError):
    """The adapter did not beat the base model by EvaluationConfig.min_improvement (metadata.json's
    ``gate``): pushing it is refused, and retrying cannot change that."""


class FetchError(ArtifactError):
    """A tuning-input URL could not be downloaded."""


class BlockedHostError(FetchError):
    """A URL points at a host the SSRF policy refuses."""
