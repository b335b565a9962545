"""The one login path: a twisted.cred Portal, checker and realm for SMTP AUTH, POP3 and IMAP.

Every protocol turns what the client sent into twisted.cred credentials and calls
`Login.attempt`; that is the one place where a login is checked against the directory (once),
throttled, logged, and turned into the protocol's avatar (the user record for SMTP, the
maildrop for POP3, the folders for IMAP). The protocols only map the outcome onto their replies
(DESIGN.md's policy table): success, `UnauthorizedLogin` (bad credentials, already held back by
the throttle), `DirectoryUnavailable` (could not tell), `MaildropInUse`, or anything else
(the mailbox could not be opened; logged here).
"""
from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import md5
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.mail.pop3 import APOPCredentials
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from appliance import maillog
from appliance.errors import DirectoryUnavailable, MailboxUnavailable
from appliance.interfaces import IAccount, IDirectory, IMaildrop, IMailUser, UserRecord


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

    The avatar id is the user's directory record itself (whatever address they logged in with),
    so the realm builds the avatar without asking the directory a second time. A
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

    def _check_secret(self, user: UserRecord | None, credentials) -> UserRecord:
        if user is None or user.shared_secret is None:
            raise UnauthorizedLogin("no shared secret stored for this login")
        secret = _bytes(user.shared_secret)
        if isinstance(credentials, APOPCredentials):
            ok = _apop_ok(credentials, secret)
        else:
            ok = credentials.checkPassword(secret)
        return _avatar_id(user if ok else None)


def _avatar_id(user: UserRecord | None) -> UserRecord:
    if user is None or not user.enabled:
        raise UnauthorizedLogin("bad credentials")
    return user


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


class MaildropInUse(Exception):
    """Another POP3 session holds this maildrop (RFC 1939 exclusive access; RFC 3206 [IN-USE])."""


class MaildropLocks:
    """The in-process table of maildrops held by a POP3 session.

    One process serves every session, on both POP3 ports, so a set is the whole lock.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, path: str) -> bool:
        if path in self._held:
            return False
        self._held.add(path)
        return True

    def release(self, path: str) -> None:
        self._held.discard(path)


def _nothing() -> None:
    """The logout of an avatar that holds nothing."""


Avatar = tuple[Any, Any, Callable[[], None]]      # (interface, avatar, logout), as IRealm returns it


@dataclass
class Mind:
    """The client side of one login, passed through the Portal: who asks, and (filled in by the
    realm) whose record the password matched, so nobody looks the user up a second time."""

    service: str
    peer: str
    user: UserRecord | None = None


@dataclass(frozen=True)
class LoggedIn:
    """What a successful login gives a protocol."""

    avatar: Any                       # the UserRecord (SMTP), the maildrop (POP3), the folders (IMAP)
    user: UserRecord
    logout: Callable[[], None]


@implementer(IRealm)
class MailRealm:
    """User record -> the avatar each protocol asks for.

    IMailUser (SMTP AUTH) is the record itself. IMaildrop (POP3) is the user's maildrop,
    locked for the session and scanned in the disk pool. IAccount (IMAP) is the user's folders,
    with the special-use ones made on first login, in the disk pool. The store knows the format;
    the realm only knows which mailbox belongs to whom.
    """

    def __init__(self, store: Any, locks: MaildropLocks | None = None) -> None:
        self._store = store
        self._locks = MaildropLocks() if locks is None else locks

    def requestAvatar(self, user: UserRecord, mind: Mind | None, *interfaces: Any) -> Deferred:
        if mind is not None:
            mind.user = user
        if IMailUser in interfaces:
            return defer.succeed((IMailUser, user, _nothing))
        if IMaildrop in interfaces:
            return defer.maybeDeferred(self._maildrop, user)
        if IAccount in interfaces:
            return defer.maybeDeferred(self._account, user)
        return defer.fail(NotImplementedError(f"no avatar for {interfaces!r}"))

    def _path(self, user: UserRecord) -> str:
        try:
            return self._store.path_for(user)
        except ValueError as exc:
            # A crafted directory entry (`../x`): refused, never cleaned up into another mailbox.
            raise MailboxUnavailable("unsafe mailbox name") from exc

    def _maildrop(self, user: UserRecord) -> Deferred:
        path = self._path(user)
        if not self._locks.acquire(path):
            raise MaildropInUse(path)

        def unlock(failure: Failure) -> Failure:
            self._locks.release(path)
            return failure

        d = self._store.open_maildrop(path)
        return d.addCallbacks(lambda drop: (IMaildrop, drop, lambda: self._locks.release(path)), unlock)

    def _account(self, user: UserRecord) -> Deferred:
        d = self._store.open_account(self._path(user))
        return d.addCallback(lambda account: (IAccount, account, _nothing))


class Login:
    """The gate every protocol's login goes through: portal, throttle and audit log in one place.

    `attempt` fires with a LoggedIn or fails with:
    - UnauthorizedLogin: bad credentials; the failure arrives only after the throttle's delay,
      so guessing gets slow, while the real user from another address is never held back;
    - DirectoryUnavailable: the directory could not tell (a temporary refusal, never "bad password");
    - MaildropInUse: POP3's maildrop is held by another session;
    - anything else: the mailbox could not be opened (logged here).
    The Deferred is cancellable: a protocol whose client left cancels it, and a pending throttle
    delay goes with it.
    """

    def __init__(self, portal: Portal, throttle: "AuthThrottle", clock: Any) -> None:
        self.portal = portal
        self.throttle = throttle
        self.clock = clock

    def attempt(self, credentials: Any, interface: type[Interface], *, service: str, peer: str,
                login: str, mechanism: str) -> Deferred:
        """Check `credentials` (one directory call), log the outcome, build the `interface` avatar."""
        mind = Mind(service, peer)
        d = defer.maybeDeferred(self.portal.login, credentials, mind, interface)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(mind, mechanism),
                       errbackArgs=(mind, login, mechanism))
        return d

    def refuse(self, *, service: str, peer: str, login: str, mechanism: str, reason: str) -> Deferred:
        """A login refused before any check (an authorisation identity we do not offer): a failure
        like a wrong password, counted and held back the same way."""
        return self._refused(Mind(service, peer), login, mechanism, reason)

    def _succeeded(self, result: Avatar, mind: Mind, mechanism: str) -> LoggedIn:
        _, avatar, logout = result
        assert mind.user is not None
        self.throttle.succeeded(mind.peer)
        maillog.auth(mind.service, mind.peer, mind.user.address, True, mechanism)
        return LoggedIn(avatar, mind.user, logout)

    def _failed(self, failure: Failure, mind: Mind, login: str, mechanism: str) -> Any:
        if failure.check(UnauthorizedLogin):
            return self._refused(mind, login, mechanism, "bad credentials")
        if failure.check(DirectoryUnavailable):
            reason = "directory unavailable"
        elif failure.check(MaildropInUse):
            reason = "maildrop in use"
        else:
            if not failure.check(MailboxUnavailable, OSError):
                maillog.log.failure("login failed unexpectedly", failure, service=mind.service, peer=mind.peer)
            reason = "mailbox unavailable"
        maillog.auth(mind.service, mind.peer, login, False, mechanism, reason)
        return failure

    def _refused(self, mind: Mind, login: str, mechanism: str, reason: str) -> Deferred:
        maillog.auth(mind.service, mind.peer, login, False, mechanism, reason)
        self.throttle.failed(mind.peer)
        delay = self.throttle.delay(mind.peer)
        refusal = Failure(UnauthorizedLogin(reason))
        if delay <= 0:
            return defer.fail(refusal)
        held: Deferred = Deferred(lambda _: call.cancel() if call.active() else None)
        call = self.clock.callLater(delay, held.errback, refusal)
        return held


def make_login(directory: IDirectory, store: Any, clock: Any, locks: MaildropLocks | None = None) -> Login:
    """The one Login every listener shares: one checker, one realm, one throttle."""
    portal = Portal(MailRealm(store, locks), [DirectoryChecker(directory)])
    return Login(portal, AuthThrottle(clock), clock)
