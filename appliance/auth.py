"""twisted.cred glue: check logins against the directory, and slow down password guessing."""
from __future__ import annotations

import hmac
from collections import OrderedDict
from hashlib import md5

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.mail.pop3 import APOPCredentials
from zope.interface import implementer

from appliance.interfaces import IDirectory, UserRecord


def _text(value: bytes | str) -> str:
    """Credentials arrive as bytes from the wire (or str from tests); bad UTF-8 is a failed login."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin("login is not UTF-8") from None
    return value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def _apop_ok(credentials: APOPCredentials, secret: bytes) -> bool:
    """RFC 1939 APOP: the digest is hex MD5 of the greeting's timestamp followed by the secret.

    Done here because Twisted's own APOPCredentials.checkPassword compares a str hexdigest
    with the bytes digest from the wire and so rejects every good password.
    """
    expected = md5(_bytes(credentials.magic) + secret).hexdigest().encode("ascii")
    try:
        given = _bytes(credentials.digest).lower()
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, given)


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """Passwords (PLAIN, LOGIN, USER/PASS, IMAP LOGIN) and shared secrets (CRAM-MD5, APOP).

    The avatar id is the user's primary address, whatever address they logged in with. A
    DirectoryUnavailable failure passes through untouched: "could not tell" must never read as
    "wrong password" (the protocols answer 454 / NO [UNAVAILABLE] / -ERR [SYS/TEMP]).
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, directory: IDirectory):
        self._directory = directory

    def requestAvatarId(self, credentials) -> Deferred:
        try:
            login = _text(credentials.username)
            if IUsernamePassword.providedBy(credentials):
                d = self._directory.authenticate(login, _text(credentials.password))
                return d.addCallback(_avatar_id)
        except UnauthorizedLogin:
            return fail()
        d = self._directory.lookup(login)
        return d.addCallback(self._check_secret, credentials)

    def _check_secret(self, user: UserRecord | None, credentials) -> str:
        if user is None or user.shared_secret is None:
            raise UnauthorizedLogin("no shared secret stored for this login")
        secret = _bytes(user.shared_secret)
        if isinstance(credentials, APOPCredentials):
            ok = _apop_ok(credentials, secret)
        else:
            ok = credentials.checkPassword(secret)
        return _avatar_id(user if ok else None)


def _avatar_id(user: UserRecord | None) -> str:
    if user is None or not user.enabled:
        raise UnauthorizedLogin("bad credentials")
    return user.address


class AuthThrottle:
    """Slows password guessing per peer IP, without ever locking the real user out.

    After `failed(peer)`, `delay(peer)` says how long to hold back the failure reply: nothing for
    the first FREE_FAILURES failures (typos), then 1 s, 2 s, 4 s, ... up to MAX_DELAY. A peer's
    count is forgotten FORGET_AFTER seconds after its last failure, or at its next success.
    At most MAX_PEERS peers are remembered; the least recently failing are evicted first.
    """

    FREE_FAILURES = 2
    FIRST_DELAY = 1.0
    MAX_DELAY = 15.0
    FORGET_AFTER = 15 * 60.0
    MAX_PEERS = 10_000

    def __init__(self, clock):
        self._clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()   # peer -> (count, last failure)

    def failed(self, peer: str) -> None:
        count = self._recent_failures(peer)
        self._failures.pop(peer, None)
        self._failures[peer] = (count + 1, self._clock.seconds())
        while len(self._failures) > self.MAX_PEERS:
            self._failures.popitem(last=False)

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)

    def delay(self, peer: str) -> float:
        """Seconds to wait before answering the failure just recorded with failed()."""
        extra = self._recent_failures(peer) - self.FREE_FAILURES
        if extra <= 0:
            return 0.0
        return min(self.FIRST_DELAY * 2 ** min(extra - 1, 16), self.MAX_DELAY)

    def _recent_failures(self, peer: str) -> int:
        count, last = self._failures.get(peer, (0, 0.0))
        if count and self._clock.seconds() - last >= self.FORGET_AFTER:
            del self._failures[peer]
            return 0
        return count
