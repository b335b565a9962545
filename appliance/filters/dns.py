"""The checks' DNS: PTR, A/AAAA and TXT lookups through twisted.names, cached by TTL, never blocking.

A check must tell "the DNS says no" from "the DNS did not say": a client without reverse DNS
is doubtful, a client whose lookup timed out is not (a resolver outage must not make every
client suspicious, nor refuse anyone). So a lookup answers a tuple of values, empty when the
name or the record does not exist (NXDOMAIN, NODATA), and fails with DNSUnsure when the DNS
could not tell (timeout, SERVFAIL, REFUSED, a network error).

The servers asked are mxroute.make_upstream's: `[delivery] nameservers` only when set, else
/etc/resolv.conf. Each lookup ends within `[checks] dns_timeout`, whatever the servers do.
Negative answers are cached too (RFC 2308 5), so a DNSBL zone that does not list a client is
not asked again for every connection of that client.
"""
from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.names import dns, error

from appliance.couriers.mxroute import CACHE_MAX_ENTRIES, CACHE_MAX_TTL, make_upstream
from appliance.couriers.mxroute import _describe as describe   # SERVFAIL, REFUSED, timed out, ...
from appliance.filters.base import Check, Facts

NEGATIVE_TTL = 60.0          # seconds "does not exist" is kept when the answer carries no SOA


class DNSUnsure(Exception):
    """The DNS could not tell (timeout, SERVFAIL, REFUSED, unreachable server); the text says which."""


def retries(total: float) -> tuple[float, ...]:
    """Twisted's resend schedule within `total` seconds: once after 1 s (a lost UDP datagram), then wait out the rest."""
    if total <= 1.5:
        return (total,)
    return (1.0, total - 1.0)


def reverse_name(ip: str) -> str:
    """The PTR name of an address: 9.2.0.192.in-addr.arpa, or 32 nibbles under ip6.arpa (RFC 3596 2.5)."""
    return ipaddress.ip_address(ip).reverse_pointer


def _text(record: dns.RRHeader) -> str:
    """One answer's value as text: an address, a name (lower case, no final dot), or a TXT's strings joined."""
    payload = record.payload
    if record.type == dns.A:
        return payload.dottedQuad()
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    if record.type == dns.TXT:
        return b"".join(payload.data).decode("utf-8", "replace")
    return payload.name.name.decode("ascii", "replace").rstrip(".").lower()


def _negative_ttl(problem: BaseException, default: float) -> float:
    """How long NXDOMAIN may be kept: as NODATA, from the SOA the answer carries."""
    message = problem.args[0] if problem.args and isinstance(problem.args[0], dns.Message) else None
    return _soa_ttl(message.authority if message is not None else [], default)


def _soa_ttl(authority: list, default: float) -> float:
    """How long "does not exist" may be kept: the SOA's TTL capped by its MINIMUM (RFC 2308 5), else `default`."""
    for record in authority:
        if record.type == dns.SOA:
            return float(min(record.ttl, record.payload.minimum))
    return default


class Lookups:
    """The lookups of the checks, with one cache for all sessions.

    Bounded: past `max_entries` the oldest answer goes. Only definite answers are kept
    (records, NXDOMAIN, NODATA), for their TTL and at most CACHE_MAX_TTL; "could not tell"
    is asked again next time, since the server may be back.
    """

    def __init__(self, resolver: Any, clock: IReactorTime, timeout: float,
                 max_entries: int = CACHE_MAX_ENTRIES, negative_ttl: float = NEGATIVE_TTL) -> None:
        self.resolver = resolver
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.timeout = float(timeout)
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[str, int], tuple[float, tuple[str, ...]]] = OrderedDict()
        self.asked = 0                                # queries sent upstream (what the cache saved shows here)

    @classmethod
    def from_config(cls, cfg: Any, reactor: Any) -> "Lookups":
        """[delivery] nameservers (or /etc/resolv.conf) and [checks] dns_timeout."""
        resolver = make_upstream(cfg.delivery.nameservers, reactor)
        return cls(resolver, reactor, cfg.checks.dns_timeout)

    def ptr(self, ip: str) -> defer.Deferred:
        """Deferred[tuple of names] of the address's PTR records."""
        return self.query(reverse_name(ip), dns.PTR)

    def a(self, name: str) -> defer.Deferred:
        return self.query(name, dns.A)

    def aaaa(self, name: str) -> defer.Deferred:
        return self.query(name, dns.AAAA)

    def txt(self, name: str) -> defer.Deferred:
        """Deferred[tuple of texts], one per TXT record, its strings joined (RFC 7208 3.3)."""
        return self.query(name, dns.TXT)

    def addresses(self, name: str) -> defer.Deferred:
        """A and AAAA together; DNSUnsure only when neither said anything and one could not tell."""
        return defer.ensureDeferred(self._addresses(name))

    async def _addresses(self, name: str) -> tuple[str, ...]:
        found: list[str] = []
        unsure: DNSUnsure | None = None
        results = await defer.DeferredList([self.a(name), self.aaaa(name)], consumeErrors=True)
        for ok, value in results:
            if ok:
                found += value
            else:
                unsure = DNSUnsure(value.getErrorMessage())
        if unsure is not None and not found:
            raise unsure
        return tuple(found)

    def query(self, name: str, rtype: int) -> defer.Deferred:
        """Deferred[tuple of values of type `rtype`], () when there are none; DNSUnsure when the DNS could not tell."""
        key = (name.lower().rstrip("."), rtype)
        entry = self._cache.get(key)
        if entry is not None:
            if entry[0] > self.clock.seconds():
                return defer.succeed(entry[1])
            del self._cache[key]
        return defer.ensureDeferred(self._ask(key))

    async def _ask(self, key: tuple[str, int]) -> tuple[str, ...]:
        name, rtype = key
        self.asked += 1
        d = self.resolver.query(dns.Query(name, rtype, dns.IN), timeout=retries(self.timeout))
        d.addTimeout(self.timeout, self.clock)
        try:
            answers, authority, _additional = await d
        except error.DNSNameError as problem:          # NXDOMAIN
            self._keep(key, (), _negative_ttl(problem, self.negative_ttl))
            return ()
        except Exception as problem:
            raise DNSUnsure(f"{name}: {describe(problem)}") from None
        values = tuple(_text(rr) for rr in answers if rr.type == rtype)
        ttl = min((float(rr.ttl) for rr in answers if rr.type == rtype), default=None)
        self._keep(key, values, ttl if ttl is not None else _soa_ttl(authority, self.negative_ttl))
        return values

    def _keep(self, key: tuple[str, int], values: tuple[str, ...], ttl: float) -> None:
        ttl = min(ttl, CACHE_MAX_TTL)
        if ttl <= 0:
            return
        self._cache[key] = (self.clock.seconds() + ttl, values)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


class Prefetch(Check):
    """Starts the connect-stage lookups of the checks after it at once, so their timeouts overlap.

    The pipeline asks checks one after the other; without this, a silent nameserver would hold
    the banner for dns_timeout per check. It has no verdict and logs nothing.
    """

    name = "dns-prefetch"

    def __init__(self, checks: Sequence[Any]) -> None:
        self.checks = list(checks)

    def connect(self, facts: Facts) -> None:
        for check in self.checks:
            check.start(facts)  # type: ignore[attr-defined]
        return None
