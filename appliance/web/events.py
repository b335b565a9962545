"""What the status page knows of the log: the last events, and a few counts the mail counters lack.

Fed by maillog's events (appliance.stats.subscribe), like the mail counters, so the page shows
exactly what the log shows and nothing parses log text. Memory is bounded: the ring keeps the
last `size` events, each with at most MAX_FIELDS fields of at most MAX_VALUE characters (the
values are the clients' text: addresses, replies); the counts are stats.EventCounters, bounded
per label.

The counts kept here, not in appliance/stats.py, are only what the page shows and /metrics does
not need: connections and TLS handshakes per service (the TLS share), and rejections per
client network (a /24 or an IPv6 /48: who is being rejected).
"""
from __future__ import annotations

import ipaddress
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.application.service import Service

from appliance import stats

RING_SIZE = 500          # events kept for the page
MAX_FIELDS = 16
MAX_VALUE = 300
# The fields a filter looks in: the queue id, and every field holding an address.
ID_FIELDS = ("id",)
ADDRESS_FIELDS = ("sender", "rcpt", "rcpts", "login", "to", "orig_rcpt")

CONNECTIONS, TLS_SESSIONS, REJECTED_NETWORK = "connections", "tls", "rejected-network"


@dataclass(frozen=True)
class Event:
    when: float
    event: str
    fields: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str:
        return next((value for key, value in self.fields if key == name), "")

    def matches(self, wanted: str) -> bool:
        """True when `wanted` is this event's queue id, or part of one of its addresses
        (case-insensitive: addresses are compared as users type them)."""
        wanted = wanted.strip().lower()
        if not wanted:
            return True
        if any(self.get(name).lower() == wanted for name in ID_FIELDS):
            return True
        return any(wanted in self.get(name).lower() for name in ADDRESS_FIELDS)


def _bounded(fields: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    kept = []
    for key, value in fields.items():
        if value is None or value == "":
            continue
        kept.append((str(key)[:40], " ".join(str(value).split())[:MAX_VALUE]))
        if len(kept) >= MAX_FIELDS:
            break
    return tuple(kept)


class EventRing:
    """The last `size` maillog events. Thread-safe: events may come from pool threads."""

    def __init__(self, clock: Callable[[], float], size: int = RING_SIZE) -> None:
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        item = Event(self._clock(), event, _bounded(fields))
        with self._lock:
            self._events.append(item)

    def recent(self, limit: int, wanted: str = "") -> list[Event]:
        """At most `limit` events matching `wanted` (a queue id or an address), newest first."""
        with self._lock:
            events = list(self._events)
        found = []
        for item in reversed(events):
            if item.matches(wanted):
                found.append(item)
                if len(found) >= limit:
                    break
        return found


def client_network(peer: str) -> str:
    """The network a client is counted under: its IPv4 /24 or IPv6 /48 (IPv4-mapped is IPv4)."""
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer[:60] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network((ip, prefix), strict=False))


class PageCounters:
    """Counts of connections and TLS sessions per service, and rejections per client network."""

    def __init__(self, counters: stats.EventCounters) -> None:
        self.counters = counters

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        if event == "connect":
            self.counters.add(CONNECTIONS, str(fields.get("service") or ""))
        elif event == "tls":
            self.counters.add(TLS_SESSIONS, str(fields.get("service") or ""))
        elif event == "rejected":
            self.counters.add(REJECTED_NETWORK, client_network(str(fields.get("peer") or "")))

    def tls_share(self, seconds: float) -> dict[str, tuple[int, int]]:
        """Service -> (TLS sessions, connections) over the last `seconds`."""
        connections = self.counters.by_label(CONNECTIONS, seconds)
        sessions = self.counters.by_label(TLS_SESSIONS, seconds)
        return {service: (min(sessions.get(service, 0), n), n) for service, n in sorted(connections.items())}

    def rejected_networks(self, seconds: float) -> dict[str, int]:
        return self.counters.by_label(REJECTED_NETWORK, seconds)


class EventsService(Service):
    """Subscribes the ring and the page's counters to maillog's events while the daemon runs."""

    name = "web-events"

    def __init__(self, clock: Callable[[], float], size: int = RING_SIZE) -> None:
        self.ring = EventRing(clock, size)
        self.counts = PageCounters(stats.EventCounters(clock))

    def startService(self) -> None:
        stats.subscribe(self.ring)
        stats.subscribe(self.counts)
        super().startService()

    def stopService(self) -> None:
        stats.unsubscribe(self.ring)
        stats.unsubscribe(self.counts)
        super().stopService()
