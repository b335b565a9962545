"""Forward-confirmed reverse DNS of the client (the iprev method of RFC 8601 3).

The PTR names of the client's address are looked up forward; the first name one of whose
addresses is the client's is confirmed. Mail servers on the Internet have one; a hijacked
home computer usually has none or a generic one that does not resolve back. So a client
without it is doubtful (suspicious greylisting and pregreet read `facts.doubts`), never
refused: many small legitimate senders get this wrong too.

`facts.ptr` is the confirmed name, "" when there is none, None when the DNS could not tell;
a DNS outage adds no doubt, or every client would be greylisted while the resolver is down.
"""
from __future__ import annotations

import ipaddress
from twisted.internet import defer

from appliance.filters.base import AuthResult, Check, Facts, Verdict
from appliance.filters.dns import DNSUnsure, Lookups

MAX_NAMES = 3                 # PTR names looked up forward, at once (a PTR set of hundreds must not cost hundreds of queries)
PENDING = "fcrdns.pending"    # facts.notes: the lookup started by start(), awaited at connect
NO_FCRDNS = "no forward-confirmed reverse DNS"


def same_address(a: str, b: str) -> bool:
    """Equal as addresses (::ffff:192.0.2.1 is 192.0.2.1; IPv6 spellings differ)."""
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    x = x.ipv4_mapped or x if x.version == 6 else x
    y = y.ipv4_mapped or y if y.version == 6 else y
    return x == y


class FCrDNS(Check):
    """Sets facts.ptr, facts.notes["iprev"]; a TAG verdict (one log line, no header) when the client is doubtful.

    A TAG, not None, for the doubtful case: the operator then finds in the log why a client was
    greylisted or held at the banner. A confirmed name or an unsure DNS says nothing.
    """

    name = "fcrdns"

    def __init__(self, lookups: Lookups, max_names: int = MAX_NAMES) -> None:
        self.lookups = lookups
        self.max_names = max_names

    def start(self, facts: Facts) -> defer.Deferred:
        """Begin the lookups (once per session) so they run alongside the DNSBL queries; connect awaits them."""
        pending = facts.notes.get(PENDING)
        if pending is None:
            pending = facts.notes[PENDING] = defer.ensureDeferred(self._confirm(facts.peer))
            # PTR then forward: two lookups in a row, bounded together by one dns_timeout
            pending.addTimeout(self.lookups.timeout, self.lookups.clock,
                               onTimeoutCancel=lambda result, timeout: ("temperror", "", "timed out"))
        return pending

    async def connect(self, facts: Facts) -> Verdict | None:
        result, name, detail = await self.start(facts)
        peer = unmapped(facts.peer)
        facts.notes["iprev"] = AuthResult("iprev", result, (("policy.iprev", peer),), reason=detail)
        if result == "temperror":
            return None
        facts.ptr = name
        if result == "pass":
            return None
        facts.doubts.append(NO_FCRDNS)
        return Verdict.tag(f"{NO_FCRDNS}: {detail}")

    async def _confirm(self, peer: str) -> tuple[str, str, str]:
        """(iprev result, confirmed name or "", why) for the log and Authentication-Results."""
        peer = unmapped(peer)
        try:
            names = await self.lookups.ptr(peer)
        except DNSUnsure as problem:
            return "temperror", "", f"PTR of {peer}: {problem}"
        if not names:
            return "permerror", "", f"{peer} has no PTR record"    # RFC 8601 3: no PTR data published
        forward = self.lookups.a if ipaddress.ip_address(peer).version == 4 else self.lookups.aaaa
        names = names[:self.max_names]
        results = await defer.DeferredList([forward(name) for name in names], consumeErrors=True)
        for name, (ok, addresses) in zip(names, results):
            if ok and any(same_address(peer, found) for found in addresses):
                return "pass", name, ""
        unsure = [addresses.getErrorMessage() for ok, addresses in results if not ok]
        if unsure:
            return "temperror", "", unsure[0]
        return "fail", "", f"{', '.join(names)} does not resolve to {peer}"


def unmapped(peer: str) -> str:
    """The address as the DNS knows it: an IPv4 client on an IPv6 socket (::ffff:a.b.c.d) is a.b.c.d."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)

