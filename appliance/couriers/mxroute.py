"""Where mail for a domain goes: MX lookup and ordering (RFC 5321 5.1, RFC 974, null MX of RFC 7505).

The answer is the ordered list of (host, ip) pairs to try. A DNS problem is always a
TemporaryFailure, so a resolver outage delays mail and never bounces it; only a definite
answer (NXDOMAIN, null MX, no address at all, a loop back to us) is a PermanentFailure.
"""
from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence

from twisted.internet import defer, udp
from twisted.internet.base import BasePort
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.names import cache, client, dns, error, hosts, resolve
from twisted.names.common import ResolverBase

from appliance.address import normalise_domain
from appliance.errors import PermanentFailure, TemporaryFailure

Route = list[tuple[str, str]]            # (host name, ip address) in the order to try
Host = tuple[int, str, "list[str] | None"]  # (preference, name, addresses; None = could not tell)

DNS_TIMEOUT = 30.0                       # seconds for one query, on top of the resolver's own retries
RESOLVER_RETRIES = (1, 3, 5)             # [delivery] nameservers: resend after 1, 3, then give up 5 s later
CACHE_MAX_TTL = 3600.0                   # seconds an answer is kept at most, whatever its TTL says
CACHE_MAX_ENTRIES = 10000

_DNS_PROBLEMS = {
    error.DNSServerError: "SERVFAIL",
    error.DNSQueryRefusedError: "REFUSED",
    error.DNSQueryTimeoutError: "timed out",
    defer.TimeoutError: "timed out",
}


def make_resolver(servers: Sequence[tuple[str, int]] = (), reactor: IReactorTime | None = None) -> ResolverBase:
    """Twisted's asynchronous resolver: the given `[delivery] nameservers` ONLY, or else the system's.

    With servers given, `client.createResolver` is not used: it would add /etc/resolv.conf's
    servers to ours (asked in turn, so a mail could bounce on the system resolver's NXDOMAIN
    while ours was silent) and answer from /etc/hosts. A bare `client.Resolver(servers=...)`
    reads neither; a silent server then times out, which MXRouter makes a 4.4.3 (retry).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    if not servers:
        # createResolver's chain (/etc/hosts, a cache, /etc/resolv.conf) with the quiet client
        return resolve.ResolverChain([hosts.Resolver(file=b"/etc/hosts"), cache.CacheResolver(reactor=reactor),
                                      make_upstream((), reactor)])
    return CachingResolver(make_upstream(servers, reactor), reactor)


def make_upstream(servers: Sequence[tuple[str, int]] = (), reactor: IReactorTime | None = None) -> client.Resolver:
    """The uncached client that asks `servers` ONLY (see make_resolver), or /etc/resolv.conf's servers when none.

    The checks' lookups (filters/dns.py) put their own cache on top of it.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    if servers:
        return QuietResolver(servers=list(servers), timeout=RESOLVER_RETRIES, reactor=reactor)
    return QuietResolver(resolv="/etc/resolv.conf", timeout=RESOLVER_RETRIES, reactor=reactor)


class _QuietPort(udp.Port):
    """A UDP port without Twisted's two info lines ("... starting on N", "(UDP Port N Closed)").

    The resolver opens one per query (a random source port against spoofed answers), so those
    lines were four per DNS lookup with the protocol's own (issue 12 item 7). The two methods
    are udp.Port's without the log calls.
    """

    def _bindSocket(self) -> None:
        skt = self.createInternetSocket()
        try:
            skt.bind((self.interface, self.port))
        except OSError as problem:
            skt.close()
            raise CannotListenError(self.interface, self.port, problem) from None
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = self.socket.fileno

    def connectionLost(self, reason: object = None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno


class _QuietDatagramProtocol(dns.DNSDatagramProtocol):
    noisy = False                        # no "Starting protocol" / "Stopping protocol" per query


class QuietResolver(client.Resolver):
    """client.Resolver whose per-query UDP ports log nothing (a random source port for each query, as Twisted's)."""

    def _connectedProtocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        proto = _QuietDatagramProtocol(self, reactor=self._reactor)
        for attempt in range(1000):      # a random port may be taken: try others, as Twisted does
            port = _QuietPort(dns.randomSource(), proto, interface=interface, reactor=self._reactor)
            try:
                port.startListening()
            except CannotListenError as problem:
                if getattr(problem.socketError, "errno", None) == errno.EMFILE or attempt == 999:
                    raise
                continue
            break
        return proto


class CachingResolver(ResolverBase):
    """Answers from memory while their TTL (at most CACHE_MAX_TTL) lasts, else asks `upstream`.

    Answers with records are kept for their TTL. An empty answer ("no such record": most MX
    hosts have no AAAA) is kept as RFC 2308 5 says, for the SOA's minimum TTL, when the
    authority section has the SOA; without one it is asked again. Without that every message
    cost an AAAA query. Failures (timeout, SERVFAIL, NXDOMAIN) are asked again each time.
    Bounded: past CACHE_MAX_ENTRIES the oldest entry goes.
    """

    def __init__(self, upstream: ResolverBase, clock: IReactorTime, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        super().__init__()
        self.upstream = upstream
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[float, tuple]] = OrderedDict()

    def _lookup(self, name, cls, type, timeout):
        key = (name.lower() if isinstance(name, bytes) else name, cls, type)
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock.seconds():
                return defer.succeed(entry[1])
            del self._entries[key]
        d = self.upstream._lookup(name, cls, type, timeout)
        d.addCallback(self._keep, key)
        return d

    def _keep(self, result: tuple, key: tuple) -> tuple:
        if result[0]:
            ttl = min([float(rr.ttl) for part in result for rr in part] + [CACHE_MAX_TTL])
        else:
            soas = [rr for rr in result[1] if rr.type == dns.SOA]
            if not soas:
                return result
            ttl = min([float(min(rr.ttl, rr.payload.minimum)) for rr in soas] + [CACHE_MAX_TTL])
        if ttl > 0:
            self._entries[key] = (self._clock.seconds() + ttl, result)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return result


def own_addresses(listeners: Iterable[str], delivery_port: int) -> set[str]:
    """The addresses at which mail sent to `delivery_port` would reach us: MXRouter's "myself".

    `listeners` are the endpoint descriptions of our MX listeners (`tcp:25`,
    `tcp:2525:interface=127.0.0.1`); one on `delivery_port` is us. One bound to every interface
    (no `interface=`, or 0.0.0.0 / ::) makes every address of this machine ours.
    """
    found: set[str] = set()
    for description in listeners:
        port, interface = _endpoint(description)
        if port != delivery_port:
            continue
        if interface is None or ipaddress.ip_address(interface).is_unspecified:
            found |= machine_addresses()
        else:
            found.add(str(ipaddress.ip_network(interface)))
    return found


def _endpoint(description: str) -> tuple[int | None, str | None]:
    """(port, interface) of a `tcp:`/`tcp6:` server endpoint description; (None, None) for others."""
    parts = description.replace("\\:", "\0").split(":")
    if parts[0] not in ("tcp", "tcp6", "ssl") or len(parts) < 2:
        return None, None
    port, interface = None, None
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        if not equals and port is None:
            port = int(key) if key.isdigit() else None
        elif key == "port" and value.isdigit():
            port = int(value)
        elif key == "interface":
            interface = value.replace("\0", ":")
    if parts[0] == "tcp6" and interface is None:
        interface = "::"
    return port, interface


def machine_addresses() -> set[str]:
    """Every address of this machine's interfaces (Linux /proc; all of 127.0.0.0/8), without blocking on DNS."""
    found = {"127.0.0.0/8", "::1"}
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                text = line.split()[0]
                found.add(str(ipaddress.ip_address(bytes.fromhex(text))))
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as f:
            previous = ""
            for line in f:
                if "/32 host LOCAL" in line and previous:
                    found.add(previous)
                words = line.split()
                previous = words[1] if len(words) == 2 and words[0] in ("|--", "+--") else ""
    except (OSError, ValueError):
        pass
    return {str(ipaddress.ip_network(a.split("%")[0], strict=False)) for a in found}


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

    `hostname` and `my_addresses` (addresses, or networks such as 127.0.0.0/8) say who we are: when we are one of a domain's MX hosts, only
    the hosts more preferred than us are used, or the mail would come straight back (RFC 5321 5.1).
    `rng` is injectable so tests can fix the shuffle among equal preferences.
    """

    def __init__(self, resolver: ResolverBase, hostname: str, my_addresses: Collection[str] = (),
                 allow_literals: bool = False, *, clock: IReactorTime, rng: random.Random | None = None,
                 timeout: float = DNS_TIMEOUT) -> None:
        self._resolver = resolver
        self._hostname = normalise_domain(hostname)
        self._my_networks = [ipaddress.ip_network(a, strict=False) for a in my_addresses]
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
        return name == self._hostname or any(self._mine(a) for a in addresses or ())

    def _mine(self, text: str) -> bool:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._my_networks)

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
