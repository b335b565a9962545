"""Who may see the status page and /metrics: allowed networks, admin sessions, HTTP Basic.

The decisions are plain functions of (peer, credentials, settings) so they are tested without a
listener. Passwords are checked only through the one login path (appliance.realm.Login, service
"web"), so the brute-force throttle and the auth log lines are the same as for IMAP or SMTP AUTH.

The sessions of the login form live here, server-side: the cookie holds only a random token
(32 bytes from `secrets`), so logging out or an expiry really ends the session, and nothing
about the admin can be read or forged from the cookie. The table is bounded (the oldest session
goes first) and every session has an idle and an absolute expiry.
"""
from __future__ import annotations

import base64
import binascii
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance import address

SESSION_IDLE = 30 * 60          # seconds without a request before a session ends
SESSION_LIFETIME = 8 * 3600     # seconds a session lasts at most, however busy
MAX_SESSIONS = 256
COOKIE = b"__Host-mailappliance"   # __Host-: browsers accept it only Secure, for Path=/, without Domain
MAX_CREDENTIAL = 1024           # characters of a Basic login or password worth looking at

ALLOWED, ADMIN, NOT_ADMIN, ANONYMOUS = "allowed network", "admin", "not an admin", "no login"


@dataclass
class _Session:
    login: str
    created: float
    used: float


class Sessions:
    """Token -> admin login, with idle and absolute expiry; at most `limit` sessions."""

    def __init__(self, clock: Callable[[], float], idle: float = SESSION_IDLE, lifetime: float = SESSION_LIFETIME,
                 limit: int = MAX_SESSIONS) -> None:
        self._clock, self._idle, self._lifetime, self._limit = clock, idle, lifetime, limit
        self._table: OrderedDict[str, _Session] = OrderedDict()

    def create(self, login: str) -> str:
        """A new session for `login`; returns its token (the cookie's value)."""
        self._expire()
        token = secrets.token_urlsafe(32)
        now = self._clock()
        self._table[token] = _Session(login, now, now)
        while len(self._table) > self._limit:
            self._table.popitem(last=False)
        return token

    def login(self, token: str) -> str | None:
        """The login of a live session (and it counts as used now), or None."""
        session = self._table.get(token)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._table[token]
            return None
        session.used = now
        return session.login

    def end(self, token: str) -> None:
        self._table.pop(token, None)

    def __len__(self) -> int:
        return len(self._table)

    def _expired(self, session: _Session, now: float) -> bool:
        return now - session.used >= self._idle or now - session.created >= self._lifetime

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, s in self._table.items() if self._expired(s, now)]:
            del self._table[token]


def allowed_network(peer: str, networks: Iterable[object]) -> bool:
    return address.in_networks(peer, networks)  # type: ignore[arg-type]


def is_admin(login: str, admins: Iterable[str]) -> bool:
    """Admins are named by full address in [web] admins; addresses compare case-insensitively."""
    login = login.strip().lower()
    return bool(login) and any(login == admin.strip().lower() for admin in admins)


def basic_credentials(header: bytes | None) -> tuple[str, str] | None:
    """(login, password) of an `Authorization: Basic ...` header (RFC 7617, UTF-8), else None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic" or len(encoded) > 4 * MAX_CREDENTIAL:
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    login, colon, password = text.partition(":")
    if not colon or not login:
        return None
    return login, password
