"""Outbound SMTP sessions kept open between messages, and how many deliveries run at once.

Opening a session costs a connection, a banner, EHLO, often a TLS handshake and EHLO again, and
for the smarthost AUTH: several round trips and more CPU than the transaction itself. Like
Postfix's connection cache (smtp_connection_cache_on_demand), a session that has carried a
message is kept for a few seconds for the next message to the same host, so a backlog to one
destination flows over a few warm sessions:

- a session is kept for `idle_time` seconds (Postfix: smtp_connection_cache_time_limit, 2 s),
  then QUIT; at most `reuse_limit` messages go over one session;
- sessions are keyed by where they go (address or smarthost name, and port): MX hosts shared
  by several domains share their sessions, as Postfix's cache by address does. TLS policy and
  credentials are the courier's, the same for every session it opens;
- a peer that hung up a kept session is noticed when the connection closes (it is dropped
  then), or when our MAIL finds it gone (smtpclient.SessionGone: the courier retries on a fresh
  session; nothing of the message was sent, so it counts as no failure).

Concurrency, like Postfix's default_destination_concurrency_limit and default_process_limit:
at most `destination_concurrency` deliveries at once to one destination (a recipient domain,
or the smarthost) and `concurrency` in all; the others wait their turn in arrival order.
"""
from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from appliance.couriers.smtpclient import Session

Key = tuple[str, int]                    # (address or host name, port)


@dataclass(frozen=True)
class Limits:
    """[delivery] destination_concurrency, concurrency, connection_reuse_limit, connection_cache_time."""

    destination_concurrency: int = 10    # half of `concurrency`: one slow destination never takes every slot
    concurrency: int = 20                # the queue's own limit on deliveries at once
    reuse_limit: int = 100               # messages over one session
    idle_time: float = 2.0               # seconds a session waits for the next message; 0 = no reuse


class Slots:
    """At most `per_destination` holders per destination and `total` in all; the rest wait (FIFO).

    The destination's slot is taken first, so a delivery waiting for a busy destination holds
    none of the shared ones. Per-destination semaphores exist only while in use.
    """

    def __init__(self, per_destination: int, total: int) -> None:
        self._per_destination = max(1, per_destination)
        self._total = defer.DeferredSemaphore(max(1, total))
        self._destinations: dict[str, defer.DeferredSemaphore] = {}

    async def acquire(self, destination: str) -> None:
        semaphore = self._destinations.get(destination)
        if semaphore is None:
            semaphore = self._destinations[destination] = defer.DeferredSemaphore(self._per_destination)
        await semaphore.acquire()
        await self._total.acquire()

    def release(self, destination: str) -> None:
        self._total.release()
        semaphore = self._destinations[destination]
        semaphore.release()
        if semaphore.tokens == semaphore.limit and not semaphore.waiting:
            del self._destinations[destination]

    def busy(self, destination: str) -> int:
        """Deliveries to `destination` holding a slot now."""
        semaphore = self._destinations.get(destination)
        return 0 if semaphore is None else semaphore.limit - semaphore.tokens


class SessionCache:
    """Idle sessions by Key, each with its expiry timer; and every open session, for `close`."""

    def __init__(self, clock: IReactorTime, limits: Limits) -> None:
        self._clock = clock
        self._limits = limits
        self._idle: dict[Key, list[tuple[Session, IDelayedCall]]] = {}
        self._idle_count = 0
        self._open: set[Session] = set()
        self._closing = False

    def take(self, key: Key) -> Session | None:
        """The most recently used idle session to `key`, or None (open a new one)."""
        entries = self._idle.get(key)
        while entries:
            session, timer = entries.pop()
            self._idle_count -= 1
            timer.cancel()
            if not entries:
                del self._idle[key]
            if session.usable:
                return session
            self._end(session)
        return None

    def track(self, key: Key, session: Session) -> None:
        """A new session to `key`: remembered until its connection is gone, whoever ends it."""
        self._open.add(session)
        session.closed.addBoth(self._gone, key, session)

    async def give_back(self, key: Key, session: Session) -> None:
        """After a transaction: keep the session for the next message to `key`, or end it.

        A transaction left half-way is ended with RSET first, before the delivery's slot is freed,
        so the next message to the host finds the session kept rather than opening another.
        """
        if self._reusable(session) and await session.reset() and self._reusable(session):
            self._keep(key, session)
        else:
            self._end(session)

    def _reusable(self, session: Session) -> bool:
        limits = self._limits
        return (not self._closing and session.usable and limits.idle_time > 0
                and session.transactions < limits.reuse_limit and self._idle_count < limits.concurrency)

    def discard(self, key: Key) -> None:
        """End every idle session to `key`: one was found dropped by the peer, its siblings are as old."""
        for session, timer in self._idle.pop(key, []):
            self._idle_count -= 1
            timer.cancel()
            self._end(session)

    def close(self) -> defer.Deferred:
        """End every session (the busy ones after their transaction); fires when all are gone."""
        self._closing = True
        for key in list(self._idle):
            self.discard(key)
        return defer.DeferredList([session.closed for session in self._open])

    @property
    def idle(self) -> int:
        return self._idle_count

    def _keep(self, key: Key, session: Session) -> None:
        timer = self._clock.callLater(self._limits.idle_time, self._expire, key, session)
        self._idle.setdefault(key, []).append((session, timer))
        self._idle_count += 1

    def _expire(self, key: Key, session: Session) -> None:
        self._forget_idle(key, session)
        self._end(session)

    def _forget_idle(self, key: Key, session: Session) -> None:
        entries = self._idle.get(key, [])
        for index, (kept, timer) in enumerate(entries):
            if kept is session:
                del entries[index]
                self._idle_count -= 1
                if timer.active():
                    timer.cancel()
                break
        if not entries:
            self._idle.pop(key, None)

    def _gone(self, result: object, key: Key, session: Session) -> object:
        """The connection closed: a kept session the peer hung up is no longer offered."""
        self._open.discard(session)
        self._forget_idle(key, session)
        return result

    @staticmethod
    def _end(session: Session) -> None:
        session.close().addErrback(lambda _: None)
