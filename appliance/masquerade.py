"""Masquerading: internal host names leave as the public domain (sendmail's MASQUERADE_AS).

`user@pc12.lan.example.test` becomes `user@example.test` in the envelope sender and in the
From, Sender, Reply-To and Resent-From headers of mail we submit or relay, as sendmail does
with MASQUERADE_AS, MASQUERADE_DOMAIN, FEATURE(masquerade_entire_domain) and
FEATURE(masquerade_envelope). Local parts listed in `exceptions` (root) keep their host so an
administrator can tell which machine a cron mail came from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from appliance import address
from appliance.message import rewrite

HEADERS = (b"from", b"sender", b"reply-to", b"resent-from", b"resent-sender")
# An addr-spec in a header: a dot-atom local part, "@", a domain. Quoted local parts are left alone.
_ADDR = re.compile(rb"(?<![\w.!#$%&'*+/=?^`{|}~-])([\w.!#$%&'*+/=?^`{|}~-]+)@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)")


@dataclass(frozen=True)
class Masquerader:
    domains: tuple[str, ...]        # hosts/domains to hide, each with every sub-domain
    as_domain: str
    exceptions: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.domains and self.as_domain)

    def hides(self, domain: str) -> bool:
        """True for a listed domain or any host below it."""
        domain = address.normalise_domain(domain)
        return any(domain == d or domain.endswith("." + d) for d in self.domains)

    def rewrite_address(self, addr: str) -> str:
        """The public form of one address; unchanged when it is not masqueraded."""
        if not self.enabled or not addr:
            return addr
        try:
            local, domain = address.split(addr)
        except address.AddressSyntaxError:
            return addr
        if not self.hides(domain) or local.lower() in self.exceptions:
            return addr
        return f"{local}@{self.as_domain}"

    def rewrite_headers(self, message: bytes) -> tuple[bytes, list[tuple[str, str]]]:
        """Rewrite the address headers; return the new message and (old, new) pairs for the log."""
        if not self.enabled:
            return message, []
        changes: list[tuple[str, str]] = []
        message = rewrite(message, HEADERS, lambda field: _ADDR.sub(lambda m: self._swap(m, changes), field))
        return message, changes

    def _swap(self, match: re.Match, changes: list[tuple[str, str]]) -> bytes:
        old = match.group(0).decode("ascii", "replace")
        new = self.rewrite_address(old)
        if new == old:
            return match.group(0)
        changes.append((old, new))
        return new.encode("ascii", "replace")
