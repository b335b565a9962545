"""The cache of verified credentials: a right password, seen again soon, is not hashed again.

Mail clients reconnect all the time (mbsync and fetchmail every few minutes, a phone on every
wake-up, a desktop client opening five connections at once), and each login costs one scrypt
verification (about 35 ms of CPU, holding the GIL) or one LDAP bind. Dovecot admins avoid this
with auth_cache_size/auth_cache_ttl; this is the same idea, made safe by default:

- only SUCCESSES are remembered, never failures: a wrong password always gets the full check,
  after the throttle, in the same order as without the cache, so guessing costs the same;
- what is remembered, under the login as the client typed it, is an HMAC-SHA256, under a random
  key made when the process starts and never written anywhere, of (login, account, the stored
  credential's fingerprint, password). The password itself is not kept, and nothing survives a
  restart;
- the fingerprint ties an entry to the stored credential it was checked against (the file
  directory's hash): a password change makes the old password miss at once. Where the directory
  gives no fingerprint (an LDAP bind), only the time to live bounds an old password;
- one entry per login (the last password that worked), at most `size` logins, the least
  recently used forgotten first; an entry is used for `ttl` seconds after its full check (a hit
  does not extend it, so an old LDAP password cannot live on by being used often).

It lives on the reactor thread only (no locks): a hit costs one HMAC, about a microsecond.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

KEY_BYTES = 32


class CredentialCache:
    """Passwords that passed the full check, by login, for `ttl` seconds.

    `clock` has `seconds()` (the reactor, or task.Clock in tests). ttl 0 or size 0 turns the
    cache off: `hit` is always False and `remember` keeps nothing.
    """

    def __init__(self, clock: Any, ttl: float, size: int) -> None:
        self._clock = clock
        self.ttl = float(ttl)
        self.size = int(size)
        self._key = os.urandom(KEY_BYTES)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _mac(self, login: str, account: str, fingerprint: str, password: str) -> bytes:
        """HMAC-SHA256 of the four, each length-prefixed so no two tuples share an encoding."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (login, account, fingerprint, password):
            data = part.encode("utf-8", "surrogatepass")
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.digest()

    def knows(self, login: str) -> bool:
        """True when a fresh entry exists for `login`: only then is a lookup worth its cost."""
        kept = self._entries.get(login)
        if kept is None or not self.enabled:
            return False
        if self._clock.seconds() - kept[1] >= self.ttl:
            del self._entries[login]
            return False
        return True

    def hit(self, login: str, password: str, account: str, fingerprint: str) -> bool:
        """True when this password was verified for `login`, which then was (and still is)
        `account`'s, against a stored credential with this fingerprint, less than `ttl` seconds
        ago. A miss changes nothing: a wrong guess never evicts the right password's entry."""
        if not self.knows(login):
            return False
        mac = self._entries[login][0]
        if not hmac.compare_digest(mac, self._mac(login, account, fingerprint, password)):
            return False
        self._entries.move_to_end(login)
        return True

    def remember(self, login: str, password: str, account: str, fingerprint: str) -> None:
        """Call only after the full check SUCCEEDED for exactly these four."""
        if not self.enabled:
            return
        self._entries.pop(login, None)
        self._entries[login] = (self._mac(login, account, fingerprint, password), self._clock.seconds())
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (a reload: the directory may have changed in ways no fingerprint shows)."""
        self._entries.clear()
