"""Which hosts a tuning-input URL may point at (the SSRF policy), as pure functions.

Shared by the fetcher (``artifacts.fetch``, which also checks every address a name resolves to, so DNS
cannot smuggle a private address in) and the Workspace validator (which checks the literal host only).
The policy follows KAITO's: no localhost, loopback, private, link-local, shared (CGNAT), multicast,
reserved or unspecified addresses and no cloud metadata service names.

``allowed_networks`` lists networks a cluster admin allows despite that policy: an in-cluster or
air-gapped data server on a private address, or 127.0.0.0/8 for local development. It is a controller
setting (``KAITO_TUNE_ALLOWED_URL_NETWORKS``), never part of a Workspace. Cloud metadata service names
stay refused always, and a link-local address (169.254.0.0/16, fe80::/10) only passes when a listed
network is itself link-local, so allowing 10.0.0.0/8 or even 0.0.0.0/0 never opens 169.254.169.254.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names of cloud instance-metadata services (their addresses are link-local and refused anyway).
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Resolvers read "0177.1", "0x7f.1" or "2130706433" as 127.0.0.1; only canonical IP literals are accepted.
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_network(text: str) -> str:
    """``text`` (a CIDR or a single address) as a canonical network string, e.g. ``10.250.0.1/32``.

    Host bits are ignored (``10.1.2.3/8`` is ``10.0.0.0/8``); anything else raises ValueError.
    """
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP network: write a CIDR such as 10.250.0.0/24 or an address such as "
            "10.250.0.1"
        ) from None


def _allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed_networks: Sequence[str]) -> bool:
    """Whether ``ip`` is inside one of the networks; a link-local ``ip`` needs a link-local network."""
    for text in allowed_networks:
        network: Network = ipaddress.ip_network(text, strict=False)
        if ip.version != network.version or ip not in network:
            continue
        if ip.is_link_local and not (
            network.network_address.is_link_local and network.broadcast_address.is_link_local
        ):
            continue
        return True
    return False


def address_refusal(address: str, *, allowed_networks: Sequence[str] = ()) -> str | None:
    """Why an IP address literal is refused, or None if it is a public address or in an allowed network."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):  # IPv4 inside IPv6 (mapped, 6to4, NAT64) is that IPv4
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        ip = embedded or ip
    if _allowed(ip, allowed_networks):
        return None
    if ip.is_loopback:
        return f"{address} is a loopback address"
    checks = (
        (ip.is_link_local, "link-local (cloud metadata services live here)"),
        (ip.is_private, "private"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_reserved, "reserved"),
        (
            isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"),
            "shared (CGNAT)",
        ),
    )
    for refused, kind in checks:
        if refused:
            return f"{address} is a {kind} address"
    return None


def host_refusal(host: str, *, allowed_networks: Sequence[str] = ()) -> str | None:
    """Why a URL host (name or IP literal, no port) is refused, or None if it may be fetched.

    ``localhost`` names count as 127.0.0.1. Pure: names are not resolved here; callers that connect
    must also check the resolved addresses with :func:`address_refusal`.
    """
    name = host.strip().rstrip(".").lower()
    if not name:
        return "the URL has no host"
    if name == "localhost" or name.endswith(".localhost"):
        if _allowed(ipaddress.ip_address("127.0.0.1"), allowed_networks):
            return None
        return f"{host} is localhost"
    if name in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    if _NUMERIC_HOST.fullmatch(name) and not _is_ip(name):
        return f"{host} is a non-canonical IP address (octal, hex or integer); write the address plainly"
    return address_refusal(name, allowed_networks=allowed_networks)


def registry_refusal(host: str, *, allowed_networks: Sequence[str] = ()) -> str | None:
    """Why a registry or token-service host is refused, or None. Registries on private addresses are
    normal (air-gapped mirrors, the local node), so only what no registry is refuses: cloud metadata
    names, link-local, multicast and unspecified addresses."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    refusal = address_refusal(name, allowed_networks=allowed_networks)
    if refusal and any(k in refusal for k in ("link-local", "multicast", "unspecified")):
        return refusal
    return None


def redact_url(url: str) -> str:
    """``url`` fit for a message, a log, an Event or a status: credentials in the userinfo and the query
    (signed URLs carry their token there) and the fragment replaced; scheme, host, port and path kept."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = ("<redacted>@" if parts.username or parts.password else "") + host
    if port is not None:
        netloc += f":{port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, "<redacted>" if parts.fragment else ""))
