"""Greylisting (RFC 6647) with postgrey's defaults: a first try is deferred, a retry passes.

Spam software that sends once and never retries loses; a real MTA retries (RFC 5321 4.5.4.1)
and passes after `greylist_delay`. The key is the triplet (client network, sender, recipient):
the network (IPv4 /24, IPv6 /64) because big senders retry from another host of the same farm
(RFC 6647 4.1), the sender normalised (keys.normalize_sender) because bulk senders change it on
every message. A retry later than `greylist_retry_window` starts over; a triplet that passed is
remembered `greylist_expire` seconds after its last use; a client network with
`greylist_whitelist_after` passed deliveries is not greylisted any more (postgrey's
auto-whitelist-clients), so a regular correspondent is delayed once, not for every new sender.

Modes: `all`, or `suspicious` (the default): only clients with `facts.doubts` (no
forward-confirmed reverse DNS, a DNSBL score below the threshold, SPF none/softfail), so
one-time codes from well-run senders are not delayed. A DNSWL hit (`facts.notes["allowlisted"]`)
is never greylisted. The decision is made from memory; statestore.StateStore keeps it on disk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from appliance import replies
from appliance.config import ChecksSection
from appliance.filters.base import Check, Facts, Verdict
from appliance.filters.keys import network_key, normalize_sender
from appliance.filters.statestore import StateStore

MAX_TRIPLETS = 500_000         # memory bound beyond expiry (~100 MB): the least recently used go first
MAX_CLIENTS = 200_000
PRUNE_EVERY = 3600             # seconds between expiry sweeps


@dataclass(slots=True)
class Triplet:
    first: float                # when it was first seen (or started over)
    last: float                 # its last try
    passed: bool = False        # a retry came after the delay: it passes from now on


@dataclass(slots=True)
class Client:
    passed: int                 # deliveries that passed greylisting
    last: float


class Greylist(Check):
    """The rcpt-stage check; `clock.seconds()` is the time (the reactor, or a test's task.Clock)."""

    name = "greylist"

    def __init__(self, settings: ChecksSection, store: StateStore, clock: Any) -> None:
        self.mode = settings.greylist
        self.delay = settings.greylist_delay
        self.window = settings.greylist_retry_window
        self.expire = settings.greylist_expire
        self.whitelist_after = settings.greylist_whitelist_after
        self.store = store
        self.clock = clock
        self.triplets: dict[str, Triplet] = {}
        self.clients: dict[str, Client] = {}
        self._load()
        self._pruned = self.clock.seconds()

    # ---- the decision ------------------------------------------------------------------
    def rcpt(self, facts: Facts) -> Verdict | None:
        if not self._applies(facts):
            return None
        now = self.clock.seconds()
        if now - self._pruned >= PRUNE_EVERY:
            self.prune(now)
        net = network_key(facts.peer)
        client = self.clients.get(net)
        if client is not None and now - client.last > self.expire:
            client = None                   # forgotten: its count starts over
        if client is not None and self.whitelist_after and client.passed >= self.whitelist_after:
            self._client_seen(net, client, now)
            return None
        key = triplet_key(net, facts.txn.sender, facts.txn.rcpt)
        triplet = self._current(key, now)
        if triplet is None:
            self._remember(key, Triplet(now, now))
            return self._defer(self.delay, "first try")
        waited = now - triplet.first
        if not triplet.passed and waited < self.delay:
            self._remember(key, Triplet(triplet.first, now))
            return self._defer(self.delay - waited, f"retry after {waited:.0f}s")
        first_pass = not triplet.passed
        self._remember(key, Triplet(triplet.first, now, passed=True))
        self._count_delivery(facts, net, now)
        return Verdict.accept(f"retried after {waited:.0f}s") if first_pass else None

    def _applies(self, facts: Facts) -> bool:
        if self.mode == "off" or facts.notes.get("allowlisted"):
            return False
        return self.mode == "all" or bool(facts.doubts)

    def _current(self, key: str, now: float) -> Triplet | None:
        """The triplet's state, or None when unknown or too old to count (starts over)."""
        triplet = self.triplets.get(key)
        if triplet is None or self._expired(triplet, now):
            return None
        return triplet

    def _expired(self, triplet: Triplet, now: float) -> bool:
        if triplet.passed:
            return now - triplet.last > self.expire
        return now - triplet.first > self.window

    def _defer(self, seconds: float, reason: str) -> Verdict:
        wait = max(1, math.ceil(seconds))
        reply = replies.GREYLISTED.with_text(f"Greylisted, try again in {wait} seconds")
        return Verdict.tempfail(reply, f"greylisted: {reason}")

    def _count_delivery(self, facts: Facts, net: str, now: float) -> None:
        """One passed delivery for the client's network, once per transaction (not per recipient)."""
        if facts.txn.notes.get("greylist-counted"):
            return
        facts.txn.notes["greylist-counted"] = True
        client = self.clients.get(net)
        if client is None or now - client.last > self.expire:
            client = Client(0, now)
        client.passed += 1
        self._client_seen(net, client, now)

    # ---- memory and disk -----------------------------------------------------------------
    def _remember(self, key: str, triplet: Triplet) -> None:
        if key not in self.triplets and len(self.triplets) >= MAX_TRIPLETS:
            self._evict(self.triplets, MAX_TRIPLETS // 10, "DELETE FROM greylist WHERE key = ?")
        self.triplets[key] = triplet
        self.store.write("INSERT OR REPLACE INTO greylist (key, first, last, passed) VALUES (?, ?, ?, ?)",
                         (key, triplet.first, triplet.last, int(triplet.passed)))

    def _client_seen(self, net: str, client: Client, now: float) -> None:
        if net not in self.clients and len(self.clients) >= MAX_CLIENTS:
            self._evict(self.clients, MAX_CLIENTS // 10, "DELETE FROM greylist_clients WHERE net = ?")
        client.last = now
        self.clients[net] = client
        self.store.write("INSERT OR REPLACE INTO greylist_clients (net, count, last) VALUES (?, ?, ?)",
                         (net, client.passed, now))

    def _evict(self, table: dict[str, Any], count: int, sql: str) -> None:
        """Forget the `count` least recently seen entries (a flood of new triplets, not expiry)."""
        for key in sorted(table, key=lambda k: table[k].last)[:count]:
            del table[key]
            self.store.write(sql, (key,))

    def prune(self, now: float) -> None:
        """Forget what expired, in memory and on disk (the size bound of RFC 6647 6)."""
        self._pruned = now
        self.triplets = {key: t for key, t in self.triplets.items() if not self._expired(t, now)}
        self.clients = {net: c for net, c in self.clients.items() if now - c.last <= self.expire}
        self.store.write("DELETE FROM greylist WHERE (passed = 1 AND last < ?) OR (passed = 0 AND first < ?)",
                         (now - self.expire, now - self.window))
        self.store.write("DELETE FROM greylist_clients WHERE last < ?", (now - self.expire,))

    def _load(self) -> None:
        now = self.clock.seconds()
        for key, first, last, passed in self.store.rows("SELECT key, first, last, passed FROM greylist"):
            triplet = Triplet(first, last, bool(passed))
            if not self._expired(triplet, now):
                self.triplets[key] = triplet
        for net, count, last in self.store.rows("SELECT net, count, last FROM greylist_clients"):
            if now - last <= self.expire:
                self.clients[net] = Client(count, last)


def triplet_key(net: str, sender: str, rcpt: str) -> str:
    """The stored key; the null sender is `<>` (its bounces are greylisted by recipient)."""
    return f"{net}\t{normalize_sender(sender) or '<>'}\t{rcpt.lower()}"
