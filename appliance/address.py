"""The only place that parses, normalises and compares mail addresses and domains."""
from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable


_CONTROL = re.compile("[\x00-\x20\x7f]")    # a control character or a blank: never in an address


class AddressSyntaxError(ValueError):
    """The text is not an address we accept."""


@functools.lru_cache(maxsize=4096)
def normalise_domain(domain: str) -> str:
    """Lower-case, strip a trailing dot, and encode international names as IDNA (A-labels).

    Cached: the same few domains come back on every command, and IDNA encoding is slow."""
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("[") and domain.endswith("]"):
        return domain
    try:
        return domain.encode("idna").decode("ascii").rstrip(".")   # "x.test\u3002" maps to "x.test."
    except UnicodeError:
        return domain


def split(address: str) -> tuple[str, str]:
    """Split `local@domain` at the last `@`; the domain is normalised, the local part kept as sent."""
    local, at, domain = address.rpartition("@")
    domain = normalise_domain(domain) if domain else ""
    if not at or not local or not domain:      # "a@." has no domain once its trailing dot is dropped
        raise AddressSyntaxError(f"not a full address: {address!r}")
    return local, domain


def normalise(address: str) -> str:
    """The form used for comparison and lookups: lower-case local part and domain.

    Local parts are compared case-insensitively, as Postfix and Dovecot do for local users.
    """
    local, domain = split(address.strip())
    return f"{local.lower()}@{domain}"


def is_valid(address: str) -> bool:
    """True when the address has a non-empty local part, a domain, and no control characters.

    The limits hold for the normalised form too: lower-casing can lengthen a local part ("İ").
    """
    if not address or len(address) > 254 or _CONTROL.search(address):
        return False
    try:
        local, domain = split(address)
    except AddressSyntaxError:
        return False
    # IDNA maps some characters to blanks ("\u00b4" is " \u0301"): the normalised domain is checked too.
    return (len(local) <= 64 and len(local.lower()) <= 64 and len(domain) <= 253
            and not _CONTROL.search(domain))


def domain_of(address: str) -> str:
    """The normalised domain of an address."""
    return split(address)[1]


def in_domains(address: str, domains: Iterable[str]) -> bool:
    """True when the address's domain is one of `domains` (already normalised)."""
    try:
        return domain_of(address) in domains
    except AddressSyntaxError:
        return False


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a comma-separated list of CIDR networks; raises ValueError on a bad entry."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def in_networks(host: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True when the peer address `host` lies in one of `networks` (IPv4-mapped IPv6 counts as IPv4)."""
    if not networks:
        return False
    ip = _peer_ip(host)
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


@functools.lru_cache(maxsize=4096)
def _peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address parsed once (the same clients come back on every command and connection)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip
