"""Where mail for a domain goes: MX lookup and ordering (RFC 5321 5.1, RFC 974, null MX of RFC 7505).

The answer is the ordered list of (host, ip) pairs to try. A DNS problem is always a
TemporaryFailure, so a resolver outage delays mail and never bounces it; only a definite
answer (NXDOMAIN, null MX, no address at all, a loop back to us) is a PermanentFailure.
"""
from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Collection, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.names import client, dns, error
from twisted.names.common import ResolverBase

from appliance.address import normalise_domain
from appliance.errors import PermanentFailure, TemporaryFailure

Route = list[tuple[str, str]]            # (host name, ip address) in the order to try
Host = tuple[int, str, "list[str] | None"]  # (preference, name, addresses; None = could not tell)

DNS_TIMEOUT = 30.0                       # seconds for one query, on top of the resolver's own retries

_DNS_PROBLEMS = {
    error.DNSServerError: "SERVFAIL",
    error.DNSQueryRefusedError: "REFUSED",
    error.DNSQueryTimeoutError: "timed out",
    defer.TimeoutError: "timed out",
}


def make_resolver(servers: Sequence[tuple[str, int]] = ()) -> ResolverBase:
    """Twisted's asynchronous resolver: the given `[delivery] nameservers`, or /etc/resolv.conf's."""
    return client.createResolver(servers=list(servers) or None)


def _describe(problem: BaseException) -> str:
    for kind, text in _DNS_PROBLEMS.items():
        if isinstance(problem, kind):
            return text
    return type(problem).__name__


def _address_text(record: dns.RRHeader) -> str:
    if record.type == dns.A:
        return record.payload.dottedQuad()
    return socket.inet_ntop(socket.AF_INET6, record.payload.address)


class MXRouter:
    """Turns a recipient domain into the hosts to try, best first.

    `hostname` and `my_addresses` say who we are: when we are one of a domain's MX hosts, only
    the hosts more preferred than us are used, or the mail would come straight back (RFC 5321 5.1).
    `rng` is injectable so tests can fix the shuffle among equal preferences.
    """

    def __init__(self, resolver: ResolverBase, hostname: str, my_addresses: Collection[str] = (),
                 allow_literals: bool = False, *, clock: IReactorTime, rng: random.Random | None = None,
                 timeout: float = DNS_TIMEOUT) -> None:
        self._resolver = resolver
        self._hostname = normalise_domain(hostname)
        self._my_addresses = {str(ipaddress.ip_address(a)) for a in my_addresses}
        self._allow_literals = allow_literals
        self._clock = clock
        self._rng = rng or random.Random()
        self._timeout = timeout

    def route(self, domain: str) -> defer.Deferred:
        """Deferred[Route], or a TemporaryFailure/PermanentFailure carrying its status."""
        return defer.ensureDeferred(self._route(normalise_domain(domain)))

    async def _route(self, domain: str) -> Route:
        if domain.startswith("["):
            return self._select(domain, [(0, domain, [self._literal_address(domain)])], implicit=True)
        exchangers = await self._exchangers(domain)
        implicit = not exchangers
        names = [(0, domain)] if implicit else exchangers
        addresses = await defer.gatherResults(
            [defer.ensureDeferred(self._addresses(name)) for _, name in names], consumeErrors=True)
        hosts = [(preference, name, found) for (preference, name), found in zip(names, addresses)]
        return self._select(domain, hosts, implicit)

    def _literal_address(self, domain: str) -> str:
        """`[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3), when the operator allows them."""
        if not self._allow_literals:
            raise PermanentFailure("5.7.1", f"delivery to address literals like {domain} is disabled")
        text = domain[1:-1]
        if text.startswith("ipv6:"):
            text = text[len("ipv6:"):]
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise PermanentFailure("5.1.2", f"{domain} is not a valid address literal") from None

    async def _query(self, lookup: Callable[[str], defer.Deferred], name: str) -> list[dns.RRHeader]:
        """The answer section of one query, bounded by our own timeout."""
        d = lookup(name)
        d.addTimeout(self._timeout, self._clock)
        answers, _authority, _additional = await d
        return answers

    async def _exchangers(self, domain: str) -> list[tuple[int, str]]:
        """The MX hosts in the order to try: by preference, shuffled among equals (RFC 5321 5.1)."""
        try:
            answers = await self._query(self._resolver.lookupMailExchange, domain)
        except error.DNSNameError:
            raise PermanentFailure("5.1.2", f"domain {domain} does not exist (NXDOMAIN)") from None
        except Exception as problem:
            raise TemporaryFailure("4.4.3", f"MX lookup for {domain} failed: {_describe(problem)}") from None
        records = [(rr.payload.preference, normalise_domain(rr.payload.name.name.decode("ascii", "replace")))
                   for rr in answers if rr.type == dns.MX]
        if records and all(name == "" for _, name in records):
            raise PermanentFailure("5.1.10", f"domain {domain} does not accept mail (null MX)")
        records = [record for record in records if record[1]]
        return sorted(records, key=lambda record: (record[0], self._rng.random()))

    async def _addresses(self, name: str) -> list[str] | None:
        """A then AAAA addresses of one host; None when the resolver could not tell."""
        found: list[str] = []
        unsure = False
        for lookup in (self._resolver.lookupAddress, self._resolver.lookupIPV6Address):
            try:
                answers = await self._query(lookup, name)
            except error.DNSNameError:
                continue
            except Exception:
                unsure = True
                continue
            found += [_address_text(rr) for rr in answers if rr.type in (dns.A, dns.AAAA)]
        return None if unsure and not found else found

    def _is_us(self, name: str, addresses: list[str] | None) -> bool:
        return name == self._hostname or any(a in self._my_addresses for a in addresses or ())

    def _select(self, domain: str, hosts: list[Host], implicit: bool) -> Route:
        """Drop ourselves and everything less preferred, then flatten to (host, ip) pairs."""
        ours = [preference for preference, name, addresses in hosts if self._is_us(name, addresses)]
        if ours:
            hosts = [host for host in hosts if host[0] < min(ours)]
            if not hosts:
                raise PermanentFailure("5.4.6", f"mail for {domain} loops back to myself")
        route = [(name, ip) for _, name, addresses in hosts for ip in addresses or ()]
        if route:
            return route
        if any(addresses is None for _, _, addresses in hosts):
            raise TemporaryFailure("4.4.3", f"could not resolve the mail hosts of {domain}")
        if implicit:
            raise PermanentFailure("5.4.4", f"domain {domain} has neither MX nor address records")
        raise PermanentFailure("5.4.4", f"no mail host of {domain} has an address")
