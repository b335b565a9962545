"""The keys greylisting and the rate limits count by: a client's network, a sender's stable form.

Both read outside bytes (the peer address, MAIL FROM), so both take any string without raising
(tests/unit/properties/test_check_keys.py).
"""
from __future__ import annotations

import ipaddress
import re

MAX_ADDRESS = 254          # RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets

_BATV = re.compile(r"^(?:prvs|msprvs1)=[0-9a-z]+=|^btv1==[^=]*==")   # draft-levine-smtp-batv
_TOKEN_WITH_DIGIT = re.compile(r"[a-z0-9]*[0-9][a-z0-9]*")
_TRAILING_DOTS = re.compile(r"[.\s]+$")


def network_key(peer: str, v4_prefix: int = 24, v6_prefix: int = 64) -> str:
    """The client's network as text: `192.0.2.0/24`, `2001:db8:1:2::/64`.

    Why networks, not addresses: a big sender retries from another address of the same farm
    (RFC 6647 4.1; postgrey's /24), and one IPv6 host owns a whole /64. An IPv4-mapped IPv6
    address counts as the IPv4 one. Anything that is no IP address (a test's peer name) is its
    own key.
    """
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer[:64]
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def normalize_sender(sender: str) -> str:
    """A sender address reduced to what stays the same from one message (or retry) to the next.

    Mailing lists and bulk senders put a fresh value into every envelope sender, which would
    make each retry a new greylisting triplet that never passes. postgrey's answer: drop the
    `+extension` and write every number as `#`. We do the same and a bit more, in this order:

    - BATV (`prvs=TAG=user`, `btv1==TAG==user`): the signing prefix changes daily; dropped.
    - SRS (`SRS0=HASH=TT=domain=user@forwarder`, `SRS1=...==HASH=TT=domain=user@fwd`): the hash
      and timestamp change; kept is `user=domain`, still at the forwarder's domain.
    - the extension after the first `+` (VERP: `bounces+123-user=x@list` is `bounces`).
    - every word holding a digit becomes `#` (postgrey only replaces whole numbers; bulk senders
      such as Amazon SES put hex ids in the local part, which letters would keep apart).

    The domain is kept (lower case): triplets only merge for the same sending domain. The null
    sender stays "" (greylisted by client and recipient).
    """
    text = sender.strip().lower()[:MAX_ADDRESS]
    if not text:
        return ""
    local, at, domain = text.rpartition("@")
    if not at:
        local, domain = text, ""
    local = _strip_signing(local)
    local = local.split("+", 1)[0]
    local = _TOKEN_WITH_DIGIT.sub("#", local)
    domain = _TRAILING_DOTS.sub("", domain)          # `example.test.` is `example.test`
    return f"{local}@{domain}" if at else local


def _strip_signing(local: str) -> str:
    """Remove BATV and SRS wrappings, however often nested (each pass shortens the text)."""
    while True:
        before = local
        local = _BATV.sub("", local, count=1)
        local = _unwrap_srs(local)
        if local == before:
            return local


def _unwrap_srs(local: str) -> str:
    """`srs0=hash=tt=domain=user` -> `user=domain`; `srs1=hash=fwd==hash=tt=domain=user` likewise."""
    if local.startswith("srs1=") and "==" in local:
        local = "srs0=" + local.split("==", 1)[1]
    if local.startswith("srs0="):
        parts = local.split("=", 4)
        if len(parts) == 5 and parts[3] and parts[4]:
            return f"{parts[4]}={parts[3]}"
    return local

