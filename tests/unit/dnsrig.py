"""A real twisted.names DNS server in the test process, on a loopback UDP port, that counts the queries it answers.

The checks' unit tests resolve through it over real sockets with the real reactor (trial's
TestCase runs it), so what they see is what the appliance sees from a nameserver: answers,
NXDOMAIN, NODATA, SERVFAIL, silence. `queries` lists every (name, type) asked, to show what the
cache saved.
"""
from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.names import authority, dns, server

from appliance.filters.dns import Lookups
from appliance.couriers.mxroute import make_upstream

SERVFAIL_LABEL = "servfail"      # a name starting with this label is answered SERVFAIL
SILENT_LABEL = "silent"          # a name with this label anywhere gets no answer at all


class Zone(authority.FileAuthority):
    """One zone held in memory: name -> records; the SOA's minimum (the negative TTL) is `negative_ttl`."""

    def __init__(self, origin: str, records: dict[str, list[Any]], negative_ttl: int = 60) -> None:
        self._origin, self._records, self._negative_ttl = origin, records, negative_ttl
        super().__init__(origin)

    def loadFile(self, filename: str) -> None:
        soa = dns.Record_SOA(mname=f"ns.{self._origin}", rname=f"hostmaster.{self._origin}", serial=1,
                             minimum=self._negative_ttl, ttl=self._negative_ttl)
        self.soa = (self._origin.encode(), soa)
        self.records = {self._origin.encode(): [soa]}
        for name, records in self._records.items():
            self.records.setdefault(name.lower().encode(), []).extend(records)


class _Server(server.DNSServerFactory):
    """Counts the queries; answers SERVFAIL or nothing for the names that ask for it."""

    noisy = False

    def __init__(self, zones: list[Zone]) -> None:
        super().__init__(authorities=zones)
        self.queries: list[tuple[str, int]] = []

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> Any:
        query = message.queries[0]
        name = query.name.name.decode("ascii").lower()
        self.queries.append((name, query.type))
        if SILENT_LABEL in name.split("."):
            return None
        if name.startswith(SERVFAIL_LABEL):
            return self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
        return super().handleQuery(message, protocol, address)


class LocalDNS:
    """`zones` served on 127.0.0.1:port over UDP; stop() closes the port."""

    def __init__(self, *zones: Zone) -> None:
        self.factory = _Server(list(zones))
        protocol = dns.DNSDatagramProtocol(controller=self.factory)
        protocol.noisy = False
        self.port = reactor.listenUDP(0, protocol, interface="127.0.0.1")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.getHost().port)

    @property
    def queries(self) -> list[tuple[str, int]]:
        return self.factory.queries

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


class SilentDNS:
    """A UDP socket that receives queries and never answers: a nameserver that is down or filtered."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.address = self.socket.getsockname()

    def stop(self) -> None:
        self.socket.close()


def lookups(address: tuple[str, int], timeout: float = 2.0, **options: Any) -> Lookups:
    """The checks' Lookups asking only `address`, as `[delivery] nameservers` makes it."""
    return Lookups(make_upstream([address], reactor), reactor, timeout, **options)


def A(address: str, ttl: int = 300) -> dns.Record_A:
    return dns.Record_A(address, ttl=ttl)


def AAAA(address: str, ttl: int = 300) -> dns.Record_AAAA:
    return dns.Record_AAAA(address, ttl=ttl)


def PTR(name: str, ttl: int = 300) -> dns.Record_PTR:
    return dns.Record_PTR(name, ttl=ttl)


def TXT(*strings: str, ttl: int = 300) -> dns.Record_TXT:
    return dns.Record_TXT(*[s.encode() for s in strings], ttl=ttl)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Let the reactor run until predicate() is true (the answer came), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s")
        await deferLater(reactor, 0.01, lambda: None)
