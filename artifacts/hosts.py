"""Which hosts a tuning-input URL may point at (the SSRF policy), as pure functions.

Shared by the fetcher (``artifacts.fetch``, which also checks every address a name resolves to, so DNS
cannot smuggle a private address in) and the Workspace validator (which checks the literal host only).
The policy follows KAITO's: no localhost, loopback, private, link-local, shared (CGNAT), multicast,
reserved or unspecified addresses and no cloud metadata service names. ``allow_loopback`` exists for
local development and tests only.
"""

from __future__ import annotations

import ipaddress
import re

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


# Resolvers read "0177.1", "0x7f.1" or "2130706433" as 127.0.0.1; only canonical IP literals are accepted.
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def address_refusal(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why an IP address literal is refused, or None if it is a public address."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else f"{address} is a loopback address"
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


def host_refusal(host: str, *, allow_loopback: bool = False) -> str | None:
    """Why a URL host (name or IP literal, no port) is refused, or None if it may be fetched.

    Pure: names are not resolved here; callers that connect must also check the resolved addresses
    with :func:`address_refusal`.
    """
    name = host.strip().rstrip(".").lower()
    if not name:
        return "the URL has no host"
    if name == "localhost" or name.endswith(".localhost"):
        return None if allow_loopback else f"{host} is localhost"
    if name in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    if _NUMERIC_HOST.fullmatch(name) and not _is_ip(name):
        return f"{host} is a non-canonical IP address (octal, hex or integer); write the address plainly"
    return address_refusal(name, allow_loopback=allow_loopback)
