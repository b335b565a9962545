"""Password hashing for the file directory: scrypt from the standard library, compared in constant time.

Stored form: `$scrypt$ln=14,r=8,p=1$<b64 salt>$<b64 hash>` (standard base64, no padding), the
same layout passlib and Dovecot-style tools use, so the cost can be raised later without
invalidating old hashes: every hash carries its own parameters.

`CheckQueue` is where the running daemon does every password check (an scrypt verification,
an LDAP bind): on threads of its own, so that failed logins never hold up the lookups RCPT
needs; with a bound on the checks waiting; and dropping a waiting check whose client has left.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from appliance.errors import DirectoryUnavailable

SCHEME = "scrypt"
LOG2_N = 14
BLOCK_SIZE = 8
PARALLELISM = 1
SALT_BYTES = 16
HASH_BYTES = 32

# Refuse stored parameters that would make one verification eat the machine (a hand-edited
# users file with ln=30 must not turn every login into a 128 GiB allocation).
_MAX_LOG2_N = 17
_MAX_R = 16
_MAX_P = 4


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    # surrogatepass: a password is whatever the client sent; odd text must hash, never raise.
    secret = password.encode("utf-8", "surrogatepass")
    n = 2 ** log2_n
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES, maxmem=256 * n * r * p + 2**20)


def hash_password(password: str) -> str:
    """A fresh salted scrypt hash of `password` in the stored form."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, LOG2_N, BLOCK_SIZE, PARALLELISM)
    params = f"ln={LOG2_N},r={BLOCK_SIZE},p={PARALLELISM}"
    return f"${SCHEME}${params}${_b64encode(salt)}${_b64encode(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(log2_n, r, p, salt, hash) of a stored hash, or None when it is not one we understand."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != SCHEME:
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        log2_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, digest = _b64decode(parts[3]), _b64decode(parts[4])
    except (ValueError, KeyError, binascii.Error):
        return None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P) or not salt or not digest:
        return None
    return log2_n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; an unknown or damaged scheme is simply False."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    log2_n, r, p, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), expected)


def credential_fingerprint(stored: str) -> str:
    """What the credential cache ties a verified password to: a digest of the stored hash (with
    its `!` when disabled), so that a new password (a new salt) or a disabled user never matches
    an entry made before. A digest rather than the hash, so the user record passed around the
    daemon does not carry the scrypt hash; it is no help for guessing (scrypt is still needed)."""
    return hashlib.sha256(stored.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# A hash of a random password nobody knows: checking an unknown login against it costs the same
# scrypt work as a real check, so response time does not tell which logins exist.
DUMMY_HASH = hash_password(_b64encode(os.urandom(24)))


def verify_unknown_user(password: str) -> bool:
    """Spend one real verification's time for a login that does not exist; always False."""
    verify_password(password, DUMMY_HASH)
    return False


# -- where the daemon runs the checks ------------------------------------------------------------

class TooManyChecks(DirectoryUnavailable):
    """More password checks wait than [logins] max_pending_checks allows: could not tell now.

    A DirectoryUnavailable, so every protocol gives its temporary refusal (454 4.7.0,
    -ERR [SYS/TEMP], NO [UNAVAILABLE]), never "bad password".
    """


class CheckQueue:
    """Runs password checks on `pool`, at most `threads` at once, at most `max_pending` waiting.

    `run(f, *args)` gives a Deferred of f's result (f runs in a pool thread). Beyond
    `max_pending` waiting checks it fails at once with TooManyChecks. Cancelling the Deferred
    (a protocol does when its client leaves) drops a check that has not started yet, so 200
    abandoned AUTH attempts cost nothing; a check already running finishes and is ignored.
    The pool is the check's own (tap.py's `passwords` pool): the users-file reads and LDAP
    searches that RCPT waits for never queue behind a hash.
    """

    def __init__(self, reactor: Any, pool: Any, threads: int = 1, max_pending: int = 32) -> None:
        self._reactor = reactor
        self._pool = pool
        self._threads = max(1, threads)
        self._max_pending = max_pending
        self._waiting: deque[tuple[Deferred, Callable[..., Any], tuple[Any, ...]]] = deque()
        self.running = 0
        self.dropped = 0           # checks cancelled before they ran (for tests and the bench)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred:
        if len(self._waiting) >= self._max_pending:
            return fail(TooManyChecks(f"{len(self._waiting)} password checks already waiting"))
        d: Deferred = Deferred(self._cancel)
        self._waiting.append((d, f, args))
        self._start()
        return d

    def _cancel(self, d: Deferred) -> None:
        for job in self._waiting:
            if job[0] is d:
                self._waiting.remove(job)
                self.dropped += 1
                return

    def _start(self) -> None:
        while self.running < self._threads and self._waiting:
            d, f, args = self._waiting.popleft()
            self.running += 1
            deferToThreadPool(self._reactor, self._pool, f, *args).addBoth(self._done, d)

    def _done(self, result: Any, d: Deferred) -> None:
        self.running -= 1
        if not d.called:                      # else cancelled while running: nobody to tell
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        self._start()
