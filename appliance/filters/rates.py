"""Rate and behaviour limits: how fast a client on port 25, and how much a user on submission, may send.

On the MX (facts.mx, not trusted) a client address (IPv6: its /64, which one host owns) may
start `client_messages_per_minute` messages (counted at MAIL) and name
`client_recipients_per_minute` recipients (at RCPT). On submission an authenticated user may send
`user_messages_per_day` messages and write to `user_new_recipients_per_day` recipients never
written to before (mox's defaults, 1000 and 200): a stolen password sends a limited spam run, and
mostly to new addresses, while a user's daily mail to known people is not held back. Over a
limit: `450 4.7.1`, a temporary refusal, so legitimate mail retries and goes out later.

The windows slide (the last 60 s, the last 24 h) and keep at most `limit` times per key, so
memory is bounded by the active keys; idle keys are swept. The recipients a user wrote to are
remembered in the state store (hashed: the file does not say who writes to whom) so a restart
does not make every correspondent "new"; so are the users' counted events of the last day, so
a restart does not reset a daily cap. The per-minute client windows live in memory only.
"""
from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from appliance import replies
from appliance.config import ChecksSection
from appliance.filters.base import Check, Facts, Verdict
from appliance.filters.keys import network_key
from appliance.filters.statestore import StateStore

MINUTE = 60.0
DAY = 86400.0
KNOWN_FOR = 400 * DAY           # a correspondent not written to for this long is new again
MAX_KNOWN = 2_000_000           # recipient memory bound beyond that expiry
MESSAGES, NEW_RECIPIENTS = "messages", "new-recipients"     # the kinds of a user's counted events


class SlidingWindow:
    """At most `limit` events per key in the last `span` seconds."""

    def __init__(self, limit: int, span: float) -> None:
        self.limit, self.span = limit, span
        self.events: dict[str, deque[float]] = {}
        self._swept = 0.0

    def allow(self, key: str, now: float) -> bool:
        """Count one event for `key` unless that would exceed the limit (refused events do not count)."""
        if now - self._swept >= self.span:
            self.sweep(now)
        times = self.events.setdefault(key, deque())
        while times and now - times[0] >= self.span:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def sweep(self, now: float) -> None:
        """Drop the keys with no event in the window (bounded memory under many one-time clients)."""
        self._swept = now
        self.events = {key: times for key, times in self.events.items() if times and now - times[-1] < self.span}


class Rates(Check):
    """Sees every session (inbound = False): port 25 clients by address, submission by login."""

    name = "rates"
    inbound = False

    def __init__(self, settings: ChecksSection, clock: Any, store: StateStore | None = None) -> None:
        self.clock = clock
        self.store = store
        self.client_messages = _window(settings.client_messages_per_minute, MINUTE)
        self.client_recipients = _window(settings.client_recipients_per_minute, MINUTE)
        self.user_windows = {MESSAGES: _window(settings.user_messages_per_day, DAY),
                             NEW_RECIPIENTS: _window(settings.user_new_recipients_per_day, DAY)}
        self.known: dict[bytes, float] = {}
        self._pruned = clock.seconds()
        if store is not None:
            self._load(store)

    def mail(self, facts: Facts) -> Verdict | None:
        now = self.clock.seconds()
        if _on_mx(facts):
            if not _allow(self.client_messages, network_key(facts.peer, 32), now):
                return Verdict.tempfail(replies.CLIENT_TOO_FAST, "messages per minute")
        elif facts.login:
            if not self._count(MESSAGES, _digest(facts.login.lower()), now):
                return Verdict.tempfail(replies.USER_DAILY_LIMIT, "messages per day")
        return None

    def rcpt(self, facts: Facts) -> Verdict | None:
        now = self.clock.seconds()
        if _on_mx(facts):
            if not _allow(self.client_recipients, network_key(facts.peer, 32), now):
                return Verdict.tempfail(replies.CLIENT_TOO_MANY_RECIPIENTS, "recipients per minute")
        elif facts.login and self.user_windows[NEW_RECIPIENTS] is not None:
            return self._new_recipient(facts.login.lower(), facts.txn.rcpt.lower(), now)
        return None

    def _new_recipient(self, login: str, rcpt: str, now: float) -> Verdict | None:
        """A recipient this user wrote to before passes; a new one counts once, then is known."""
        key = _digest(f"{login}\0{rcpt}")
        last = self.known.get(key)
        if last is None or now - last > KNOWN_FOR:
            if not self._count(NEW_RECIPIENTS, _digest(login), now):
                return Verdict.tempfail(replies.USER_DAILY_LIMIT, "new recipients per day")
        self._know(key, now)
        return None

    def _count(self, kind: str, user: bytes, now: float) -> bool:
        """One more of the user's day (kept on disk too: a restart does not reset a daily cap)."""
        window = self.user_windows[kind]
        if window is None:
            return True
        if not window.allow(user.hex(), now):
            return False
        if self.store is not None:
            self.store.write("INSERT INTO user_events (user, kind, at) VALUES (?, ?, ?)", (user, kind, now))
        return True

    def _know(self, key: bytes, now: float) -> None:
        if now - self._pruned >= DAY:
            self._prune(now)
        if key not in self.known and len(self.known) >= MAX_KNOWN:
            self._forget_oldest()
        self.known[key] = now
        if self.store is not None:
            self.store.write("INSERT OR REPLACE INTO known_recipients (key, last) VALUES (?, ?)", (key, now))

    def _prune(self, now: float) -> None:
        """Once a day: forget old correspondents and past days' counts, in memory and on disk."""
        self._pruned = now
        self.known = {key: last for key, last in self.known.items() if now - last <= KNOWN_FOR}
        if self.store is not None:
            self.store.write("DELETE FROM known_recipients WHERE last < ?", (now - KNOWN_FOR,))
            self.store.write("DELETE FROM user_events WHERE at < ?", (now - DAY,))

    def _forget_oldest(self) -> None:
        """Bounded memory: drop the tenth least recently used, and anything expired, on disk too."""
        now = self.clock.seconds()
        oldest = sorted(self.known.values())[len(self.known) // 10]
        cutoff = max(oldest, now - KNOWN_FOR)
        self.known = {key: last for key, last in self.known.items() if last > cutoff}
        if self.store is not None:
            self.store.write("DELETE FROM known_recipients WHERE last <= ?", (cutoff,))

    def _load(self, store: StateStore) -> None:
        now = self.clock.seconds()
        if self.user_windows[NEW_RECIPIENTS] is not None:
            for key, last in store.rows("SELECT key, last FROM known_recipients"):
                if now - last <= KNOWN_FOR:
                    self.known[bytes(key)] = last
        for user, kind, at in store.rows("SELECT user, kind, at FROM user_events ORDER BY at"):
            window = self.user_windows.get(kind)
            if window is not None and now - at < DAY:
                window.allow(bytes(user).hex(), at)


def _digest(text: str) -> bytes:
    """16 bytes of SHA-256: what the state file keeps instead of logins and addresses."""
    return hashlib.sha256(text.encode("utf-8", "replace")).digest()[:16]


def _window(limit: int, span: float) -> SlidingWindow | None:
    """A window for a limit; None for 0 (no limit)."""
    return SlidingWindow(limit, span) if limit > 0 else None


def _allow(window: SlidingWindow | None, key: str, now: float) -> bool:
    return window is None or window.allow(key, now)


def _on_mx(facts: Facts) -> bool:
    """Port 25 from outside: the per-client limits apply (trusted networks and local programs skip them)."""
    return facts.mx and not facts.trusted and bool(facts.peer)


def any_limit(settings: ChecksSection) -> bool:
    """Whether build.py needs this check at all."""
    return any((settings.client_messages_per_minute, settings.client_recipients_per_minute,
                settings.user_messages_per_day, settings.user_new_recipients_per_day))
