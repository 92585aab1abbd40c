"""Checks of single fields of a Workspace: names, image references, input URLs, volumes, data sources and
the adapter's destination. ``validation`` combines them with the Workspace-level rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from artifacts.errors import InvalidInputError
from artifacts.hosts import host_refusal, redact_url, registry_refusal
from artifacts.reference import Reference
from contract.problems import Problem, Severity
from contract.workspace import ALLOWED_VOLUME_TYPES, DataDestination, DataSource

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def name_problems(
    path: str, value: str, *, what: str, label: bool = True, placeholder_ok: bool = False
) -> list[Problem]:
    """DNS-1123 label (63) or subdomain (253) names.

    With ``placeholder_ok`` (names of Secrets the Workspace refers to, which KAITO's examples write as
    ``ACR_REGISTRY_SECRET_HERE``) a name wrong only in case is a placeholder and gets a warning; the
    Workspace's own names and the objects it creates must be valid, or the API server refuses them.
    """
    pattern, limit = (DNS1123_LABEL, 63) if label else (DNS1123_SUBDOMAIN, 253)
    if pattern.match(value) and len(value) <= limit:
        return []
    kind = "DNS-1123 label" if label else "DNS-1123 subdomain"
    rule = (
        f"a {kind}: lowercase letters, digits and '-'{'' if label else ' or .'}, at most {limit} characters"
    )
    if placeholder_ok and pattern.match(value.lower().replace("_", "-")) and len(value) <= limit:
        return [
            Problem(
                path,
                f"{what} names are lowercase ({rule}); a {what} with this name cannot exist",
                value,
                "replace the placeholder with the real name",
                Severity.WARNING,
            )
        ]
    return [Problem(path, f"must be {rule}", value, f"rename the {what}")]


def secret_name_problems(path: str, name: str, *, placeholder_ok: bool = True) -> list[Problem]:
    """A Secret the Workspace names (DNS-1123 subdomain); KAITO's placeholders only warn by default."""
    return name_problems(path, name, what="Secret", label=False, placeholder_ok=placeholder_ok)


def image_problems(path: str, image: str, *, placeholder_ok: bool = True) -> list[Problem]:
    """The reference must parse (registry/repository[:tag][@digest]) and name a possible registry host
    (no cloud metadata service, no link-local address). Uppercase is a placeholder (KAITO's examples
    carry ``ACR_REPO_HERE``): a warning where ``placeholder_ok``, else an error, as KAITO's validation
    has it for a tuning Workspace's input and output images (one that would train for hours and then
    fail at the push)."""
    try:
        refusal = registry_refusal(Reference.parse(image).host_name)
        if refusal:
            return [Problem(path, f"names no registry: {refusal}", image, "write your registry's host")]
    except InvalidInputError as exc:
        try:
            Reference.parse(image.lower())
        except InvalidInputError:
            return [
                Problem(
                    path,
                    str(exc),
                    None,
                    "write registry/repository:tag, e.g. myacr.azurecr.io/adapters/phi-3:v1",
                )
            ]
        return [
            Problem(
                path,
                "registries accept only lowercase repository names (the OCI distribution spec)",
                image,
                "replace the placeholder with the real lowercase repository",
                Severity.WARNING if placeholder_ok else Severity.ERROR,
            )
        ]
    return []


def url_problems(path: str, url: str, *, allowed_networks: Sequence[str] = ()) -> list[Problem]:
    """https (or http, warned) URLs to public hosts (or hosts in the admin's ``allowed_networks``) only,
    without credentials (they would sit in the spec)."""
    parts = urlsplit(url)
    shown = redact_url(url)  # the value as messages, Events and the status show it
    if parts.scheme not in ("http", "https"):
        return [
            Problem(path, "must be an http(s) URL", shown, "host the data on a web server or use input.image")
        ]
    problems = []
    if parts.username or parts.password:
        problems.append(
            Problem(path, "must not carry credentials", shown, "use input.image with imagePullSecrets")
        )
    refusal = host_refusal(parts.hostname or "", allowed_networks=allowed_networks)
    if refusal:
        problems.append(
            Problem(
                path,
                f"is refused: {refusal}",
                shown,
                "data URLs must point at public hosts (SSRF protection) or, for an in-cluster data server, "
                "the cluster admin allows its network with KAITO_TUNE_ALLOWED_URL_NETWORKS",
            )
        )
    elif parts.scheme == "http":
        problems.append(
            Problem(
                path, "uses plain http: the data travels unencrypted", shown, "use https", Severity.WARNING
            )
        )
    return problems


def volume_problems(path: str, volume: Mapping[str, Any]) -> list[Problem]:
    """A Workspace's volumeSource goes into pods the controller creates, so only volume types that give
    no access to the node or to objects the user might not read are allowed (ALLOWED_VOLUME_TYPES): a
    hostPath would hand the node to anyone allowed to create Workspaces; a secret or configMap volume
    would copy data the user's RBAC may hide into a trained, pushed adapter."""
    hint = "e.g. persistentVolumeClaim: {claimName: data}"
    if len(volume) != 1:
        return [Problem(path, "must name exactly one volume type", sorted(volume), hint)]
    (kind,) = volume
    if kind not in ALLOWED_VOLUME_TYPES:
        return [
            Problem(
                f"{path}.{kind}",
                f"is not an allowed volume type; allowed: {', '.join(ALLOWED_VOLUME_TYPES)}",
                kind,
                "put the data on a PersistentVolumeClaim (or a CSI or NFS volume) and name that",
            )
        ]
    return []


def data_source_problems(
    path: str, source: DataSource, *, allowed_networks: Sequence[str], for_adapter: bool
) -> list[Problem]:
    problems: list[Problem] = []
    given = [
        name
        for name, set_ in (
            ("urls", source.urls),
            ("image", source.image),
            ("volumeSource", source.volume_source),
        )
        if set_
    ]
    allowed = ("image", "volumeSource") if for_adapter else ("urls", "image", "volumeSource")
    if for_adapter and source.urls:
        problems.append(
            Problem(f"{path}.urls", "adapters are not fetched from URLs", None, "use image or volumeSource")
        )
    elif len(given) != 1:
        problems.append(
            Problem(
                path,
                f"set exactly one of {', '.join(allowed)}",
                given or None,
                "remove the others" if given else "",
            )
        )
    for i, url in enumerate(source.urls):
        problems += url_problems(f"{path}.urls[{i}]", url, allowed_networks=allowed_networks)
    if source.image:
        problems += image_problems(f"{path}.image", source.image, placeholder_ok=for_adapter)
    for i, secret in enumerate(source.image_pull_secrets):
        problems += secret_name_problems(f"{path}.imagePullSecrets[{i}]", secret)
    if source.volume_source is not None:
        problems += volume_problems(f"{path}.volumeSource", source.volume_source)
    return problems


def output_problems(output: DataDestination) -> list[Problem]:
    path = "tuning.output"
    problems = []
    if bool(output.image) == (output.volume_source is not None):
        problems.append(
            Problem(path, "set exactly one of image (with imagePushSecret) or volumeSource", None)
        )
    if output.image:
        problems += image_problems(f"{path}.image", output.image, placeholder_ok=False)
        if not output.image_push_secret:
            problems.append(
                Problem(
                    f"{path}.imagePushSecret",
                    "is required with tuning.output.image",
                    None,
                    "create a docker-registry Secret that may push there and name it here",
                )
            )
    if output.image_push_secret:
        problems += secret_name_problems(f"{path}.imagePushSecret", output.image_push_secret)
    if output.volume_source is not None:
        problems += volume_problems(f"{path}.volumeSource", output.volume_source)
    return problems
