"""The one login path: a twisted.cred Portal, checker and realm for SMTP AUTH, POP3 and IMAP.

Every protocol turns what the client sent into twisted.cred credentials and calls
`Login.attempt`; that is the one place where a login is checked against the directory (once),
throttled, logged, and turned into the protocol's avatar (the user record for SMTP, the
maildrop for POP3, the folders for IMAP). The protocols only map the outcome onto their replies
(DESIGN.md's policy table): success, `UnauthorizedLogin` (bad credentials), `LoginThrottled`
(too many failures: refused before any check), `DirectoryUnavailable` (could not tell),
`MaildropInUse`, or anything else (the mailbox could not be opened; logged here).
"""
from __future__ import annotations

import hmac
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from hashlib import md5
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.mail.pop3 import APOPCredentials
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from appliance import maillog
from appliance.config import LoginsSection
from appliance.credcache import CredentialCache
from appliance.errors import DirectoryUnavailable, MailboxUnavailable
from appliance.interfaces import IAccount, IDirectory, IMaildrop, IMailUser, UserRecord
from appliance.passwords import TooManyChecks


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


@dataclass(frozen=True)
class Verified:
    """DirectoryChecker's answer, the avatar id: whose record the credentials matched (whatever
    address they logged in with, so the realm never asks the directory a second time), and
    whether the password was matched by the credential cache rather than a full check (logged
    as `cached=yes`). Login hands the record to the realm and keeps `cached` for the log."""

    user: UserRecord
    cached: bool = False


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """Passwords (PLAIN, LOGIN, USER/PASS, IMAP LOGIN) and shared secrets (CRAM-MD5, APOP).

    With a `cache` ([logins] credential_cache_ttl), a password for a login that has a fresh
    cache entry first meets the cache: the user is looked up (every time, so a disabled or
    removed user fails at once), and a password that passed the full check against the same
    stored credential (the record's fingerprint) less than the TTL ago is accepted without
    scrypt or an LDAP bind. Anything else, a wrong password above all, gets the full check
    (`authenticate`); only its successes are remembered. A login without an entry goes straight
    to the full check, so the directory is asked once per login, except for a wrong password
    against a remembered login (a lookup, then the full check). CRAM-MD5 and APOP never carry
    the password and are checked as before.

    A DirectoryUnavailable failure passes through untouched: "could not tell" must never read as
    "wrong password" (the protocols answer 454 / NO [UNAVAILABLE] / -ERR [SYS/TEMP]).
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, directory: IDirectory, cache: CredentialCache | None = None):
        self._directory = directory
        self.cache = cache

    def requestAvatarId(self, credentials) -> Deferred:
        try:
            login = _text(credentials.username)
            if IUsernamePassword.providedBy(credentials):
                return self._password(login, _text(credentials.password))
        except UnauthorizedLogin:
            return fail()
        d = self._directory.lookup(login)
        return d.addCallback(self._check_secret, credentials)

    def _password(self, login: str, password: str) -> Deferred:
        if self.cache is None or not self.cache.knows(login):
            return self._full_check(login, password)
        d = self._directory.lookup(login)
        return d.addCallback(self._cached_or_checked, login, password)

    def _cached_or_checked(self, user: UserRecord | None, login: str, password: str) -> Verified | Deferred:
        # A disabled user is never answered from the cache: a quick refusal would tell a guesser
        # that the password was right.
        if user is not None and user.enabled and self.cache is not None \
                and self.cache.hit(login, password, user.address, user.credential):
            return Verified(user, cached=True)
        return self._full_check(login, password)

    def _full_check(self, login: str, password: str) -> Deferred:
        d = self._directory.authenticate(login, password)
        return d.addCallback(self._checked, login, password)

    def _checked(self, user: UserRecord | None, login: str, password: str) -> Verified:
        verified = _avatar_id(user)
        if self.cache is not None:
            self.cache.remember(login, password, verified.user.address, verified.user.credential)
        return verified

    def _check_secret(self, user: UserRecord | None, credentials) -> Verified:
        if user is None or user.shared_secret is None:
            raise UnauthorizedLogin("no shared secret stored for this login")
        secret = _bytes(user.shared_secret)
        if isinstance(credentials, APOPCredentials):
            ok = _apop_ok(credentials, secret)
        else:
            ok = credentials.checkPassword(secret)
        return _avatar_id(user if ok else None)


def _avatar_id(user: UserRecord | None) -> Verified:
    if user is None or not user.enabled:
        raise UnauthorizedLogin("bad credentials")
    return Verified(user)


class LoginThrottled(Exception):
    """Too many failed logins from this client (its address or network), or for this login from
    an address that has failed: refused before any password check. A temporary refusal
    (454 4.7.0, -ERR [SYS/TEMP], NO [UNAVAILABLE]), so a real user's client simply tries again.

    `log_for` is how many refusals the log line for this one stands for (0: no line), so that a
    flood of refusals writes one line per address every few seconds, not one per attempt."""

    def __init__(self, text: str, log_for: int = 1) -> None:
        super().__init__(text)
        self.log_for = log_for


@lru_cache(maxsize=4096)
def client_keys(peer: str) -> tuple[str, str | None]:
    """(address, network) the throttle counts a peer under: an IPv4-mapped IPv6 address is its
    IPv4 address; the network is the /24 (IPv4) or /64 (IPv6). A peer that is no IP address
    (a UNIX socket, a test) counts by its name alone. Remembered for the last few thousand
    peers: parsing them was a sixth of a cached login's time on the reactor."""
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer, None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ip), str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class _Count:
    """The failures of one key within the window, the checks in flight for it, its next free slot."""

    __slots__ = ("failures", "in_flight", "waiting", "next_slot", "logged_at", "unlogged")

    def __init__(self, keep: int) -> None:
        self.failures: deque[float] = deque(maxlen=keep)
        self.in_flight = 0
        self.waiting = 0
        self.next_slot = 0.0
        self.logged_at = float("-inf")     # when a refusal from this address was last logged
        self.unlogged = 0                  # refusals since then

    def recent(self, now: float, window: float) -> int:
        while self.failures and now - self.failures[0] >= window:
            self.failures.popleft()
        return len(self.failures)


class Ticket:
    """One attempt let through the throttle: its checks in flight until the outcome is known."""

    def __init__(self, throttle: "AuthThrottle", charged: list[_Count], keys: list[tuple[str, str]]) -> None:
        self._throttle, self._charged, self._keys = throttle, charged, keys
        self._open = True

    def _close(self) -> bool:
        if not self._open:
            return False
        self._open = False
        for count in self._charged:
            count.in_flight -= 1
        return True

    def failed(self) -> None:
        """Bad credentials (or a client that left before the answer: an unanswered guess)."""
        if self._close():
            now = self._throttle.clock.seconds()
            for key in self._keys:
                self._throttle.count(key).failures.append(now)

    def succeeded(self) -> None:
        """The address's failures are forgotten (typos); its network's and the login's are not."""
        if self._close():
            self._throttle.forget(self._keys[0])

    def undecided(self) -> None:
        """The directory could not tell: no guess was answered, nothing is counted."""
        self._close()


class AuthThrottle:
    """Slows password guessing BEFORE any check, without ever locking the real user out.

    Failures are counted per client address, per network (/24, /64) and per login over
    `failure_window` seconds; a check in flight counts as a failure until its answer is known,
    so parallel guesses on many connections cannot all slip through before the first fails.
    Once a key has reached its limit, attempts under it are spaced: 1 s apart at first, doubling
    with each further failure (or attempt in flight or waiting) up to `max_delay`. An attempt
    waits for its slot (the wait is cancelled with the connection), or is refused with
    LoginThrottled when its slot is more than `max_delay` away or MAX_WAITING attempts already
    wait. That refusal comes after REFUSAL_DELAY, so a client retrying at once cannot spin the
    server, and is logged once per address every LOG_EVERY seconds. Either way no password is
    checked before its slot. The login's count applies only to attempts from addresses that
    have failed: the real user from a clean address logs in at once, however hard the login is
    attacked from elsewhere. At most MAX_KEYS keys are remembered, the least recently used are
    forgotten first.
    """

    MAX_KEYS = 30_000
    MAX_WAITING = 1_000
    REFUSAL_DELAY = 1.0       # a refusal is answered after this long: one connection, one try a second
    LOG_EVERY = 5.0           # at most one "throttled" log line per address this often

    def __init__(self, clock: Any, settings: LoginsSection | None = None) -> None:
        self.clock = clock
        s = settings if settings is not None else LoginsSection()
        self.window = float(s.failure_window)
        self.max_delay = float(s.max_delay)
        self.limits = {"address": s.failures_per_address, "network": s.failures_per_network,
                       "login": s.failures_per_login}
        self._keep = max(self.limits.values()) + 16        # enough to reach max_delay's doubling
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self.waiting = 0
        self.refusal_delay = self.REFUSAL_DELAY

    # ---- the table ------------------------------------------------------------------------------
    def count(self, key: tuple[str, str]) -> _Count:
        count = self._counts.pop(key, None)
        if count is None:
            count = _Count(self._keep)
        self._counts[key] = count
        while len(self._counts) > self.MAX_KEYS:
            self._counts.popitem(last=False)
        return count

    def forget(self, key: tuple[str, str]) -> None:
        count = self._counts.get(key)
        if count is not None:
            count.failures.clear()

    def failures(self, kind: str, name: str) -> int:
        """Failures counted now for ("address" | "network" | "login", name)."""
        count = self._counts.get((kind, name))
        return count.recent(self.clock.seconds(), self.window) if count else 0

    # ---- the gate -------------------------------------------------------------------------------
    def keys(self, peer: str, login: str) -> list[tuple[str, str]]:
        """The keys one attempt counts under; the address first."""
        address, network = client_keys(peer)
        keys = [("address", address)]
        if network is not None:
            keys.append(("network", network))
        keys.append(("login", login.strip().lower()))
        return keys

    def admit(self, peer: str, login: str) -> Deferred:
        """Deferred[Ticket], fired when the attempt may be checked; fails with LoginThrottled
        (after refusal_delay) when it may not. Cancelling it while it waits frees its place."""
        now = self.clock.seconds()
        keys = self.keys(peer, login)
        counts = [self.count(key) for key in keys]
        watched = counts[0].recent(now, self.window) > 0        # this address has failed: watch the login
        charged = counts if watched else counts[:-1]
        over = []
        for (kind, _), count in zip(keys, charged):
            # Checks in flight and attempts waiting count as failures until their answer is known.
            excess = count.recent(now, self.window) + count.in_flight + count.waiting - self.limits[kind]
            if excess >= 0:
                over.append((count, excess))
        if not over:
            return defer.succeed(self._ticket(charged, keys))
        start = max([now] + [count.next_slot for count, _ in over])
        if start - now > self.max_delay or (start > now and self.waiting >= self.MAX_WAITING):
            return self._refuse(peer, counts[0], now, start)
        for count, excess in over:
            count.next_slot = start + min(2.0 ** excess, self.max_delay)
        if start <= now:
            return defer.succeed(self._ticket(charged, keys))
        waiters = [count for count, _ in over]
        for count in waiters:
            count.waiting += 1
        self.waiting += 1
        held: Deferred = Deferred(lambda _: self._give_up(call, waiters))
        call = self.clock.callLater(start - now, self._slot, held, waiters, charged, keys)
        return held

    def _refuse(self, peer: str, address: _Count, now: float, start: float) -> Deferred:
        """LoginThrottled, after refusal_delay (so a connection that retries at once cannot spin),
        counted for the log."""
        address.unlogged += 1
        log_for = 0
        if now - address.logged_at >= self.LOG_EVERY:
            log_for, address.unlogged, address.logged_at = address.unlogged, 0, now
        refusal = LoginThrottled(f"{peer}: next slot {start - now:.0f} s away", log_for)
        if self.refusal_delay <= 0:
            return defer.fail(refusal)
        held: Deferred = Deferred(lambda _: call.cancel() if call.active() else None)
        call = self.clock.callLater(self.refusal_delay, held.errback, refusal)
        return held

    def _ticket(self, charged: list[_Count], keys: list[tuple[str, str]]) -> Ticket:
        for count in charged:
            count.in_flight += 1
        return Ticket(self, charged, keys)

    def _stop_waiting(self, waiters: list[_Count]) -> None:
        self.waiting -= 1
        for count in waiters:
            count.waiting -= 1

    def _slot(self, held: Deferred, waiters: list[_Count], charged: list[_Count], keys: list[tuple[str, str]]) -> None:
        self._stop_waiting(waiters)
        held.callback(self._ticket(charged, keys))

    def _give_up(self, call: Any, waiters: list[_Count]) -> None:
        if call.active():
            call.cancel()
            self._stop_waiting(waiters)


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
    session: str = ""                 # the protocol session's id, for the log
    cached: bool = False              # the password was matched by the credential cache


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
    """The gate every protocol's login goes through: throttle, portal and audit log in one place.

    `attempt` first passes the throttle (which may hold the attempt until its slot), then checks
    the credentials (one directory call), and fires with a LoggedIn or fails with:
    - UnauthorizedLogin: bad credentials;
    - LoginThrottled: too many failures from this client or for this login from it, refused
      before any password check (a temporary refusal);
    - DirectoryUnavailable: the directory could not tell, or too many password checks wait
      (a temporary refusal, never "bad password");
    - MaildropInUse: POP3's maildrop is held by another session;
    - anything else: the mailbox could not be opened (logged here).
    The Deferred is cancellable: a protocol whose client left cancels it, which frees a place in
    the throttle's queue or drops a password check that has not started yet.
    """

    def __init__(self, portal: Portal, throttle: "AuthThrottle", clock: Any) -> None:
        self.portal = portal
        self.throttle = throttle
        self.clock = clock

    def attempt(self, credentials: Any, interface: type[Interface], *, service: str, peer: str,
                login: str, mechanism: str, session: str = "") -> Deferred:
        """Throttle, check `credentials` (one directory call), log the outcome, build the avatar."""
        mind = Mind(service, peer, session=session)
        d = self.throttle.admit(peer, login)
        d.addCallbacks(self._check, self._not_admitted, callbackArgs=(credentials, interface, mind, login, mechanism),
                       errbackArgs=(mind, login, mechanism))
        return d

    def _check(self, ticket: Ticket, credentials: Any, interface: type[Interface], mind: Mind, login: str,
               mechanism: str) -> Deferred:
        d = defer.maybeDeferred(self._avatar_id, credentials)
        d.addCallback(self._avatar, mind, interface)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(mind, mechanism, ticket),
                       errbackArgs=(mind, login, mechanism, ticket))
        return d

    def _avatar_id(self, credentials: Any) -> Deferred:
        """Portal.login's first half: the portal's checker for these credentials."""
        for interface, checker in self.portal.checkers.items():
            if interface.providedBy(credentials):
                return checker.requestAvatarId(credentials)
        raise UnhandledCredentials(f"no checker for {credentials!r}")

    def _avatar(self, avatar_id: Verified | UserRecord, mind: Mind, interface: type[Interface]) -> Deferred:
        """Portal.login's second half, with the checker's verdict (was it the credential cache?)
        kept in the mind for the log; the realm gets the record. A checker of a test's own may
        answer with the bare record."""
        if isinstance(avatar_id, Verified):
            mind.cached = avatar_id.cached
            avatar_id = avatar_id.user
        return self.portal.realm.requestAvatar(avatar_id, mind, interface)

    def _not_admitted(self, failure: Failure, mind: Mind, login: str, mechanism: str) -> Failure:
        if failure.check(LoginThrottled) and failure.value.log_for:
            more = failure.value.log_for - 1
            maillog.auth(mind.service, mind.peer, login, False, mechanism,
                         f"throttled, {more} more not logged" if more else "throttled", session=mind.session)
        return failure                 # or CancelledError: the client left while waiting

    def refuse(self, *, service: str, peer: str, login: str, mechanism: str, reason: str,
               session: str = "") -> Deferred:
        """A login refused before any check (an authorisation identity we do not offer): counted
        as a failure like a wrong password."""
        maillog.auth(service, peer, login, False, mechanism, reason, session=session)
        now = self.clock.seconds()
        for key in self.throttle.keys(peer, login):
            self.throttle.count(key).failures.append(now)
        return defer.fail(UnauthorizedLogin(reason))

    def _succeeded(self, result: Avatar, mind: Mind, mechanism: str, ticket: Ticket) -> LoggedIn:
        _, avatar, logout = result
        assert mind.user is not None
        ticket.succeeded()
        maillog.auth(mind.service, mind.peer, mind.user.address, True, mechanism, session=mind.session,
                     cached=mind.cached)
        return LoggedIn(avatar, mind.user, logout)

    def _failed(self, failure: Failure, mind: Mind, login: str, mechanism: str, ticket: Ticket) -> Any:
        if failure.check(UnauthorizedLogin):
            ticket.failed()
            reason = "bad credentials"
        elif failure.check(defer.CancelledError):
            ticket.failed()            # an unanswered guess still counts
            reason = "client left"
        elif failure.check(TooManyChecks):
            ticket.undecided()
            reason = "too many password checks waiting"
        elif failure.check(DirectoryUnavailable):
            ticket.undecided()
            reason = "directory unavailable"
        elif failure.check(MaildropInUse):
            ticket.succeeded()
            reason = "maildrop in use"
        else:
            ticket.succeeded()         # the password was right; the mailbox failed
            if not failure.check(MailboxUnavailable, OSError):
                maillog.log.failure("login failed unexpectedly session={session}", failure, service=mind.service,
                                    peer=mind.peer, session=mind.session)
            reason = "mailbox unavailable"
        maillog.auth(mind.service, mind.peer, login, False, mechanism, reason, session=mind.session)
        return failure


def make_cache(clock: Any, settings: LoginsSection | None = None) -> CredentialCache:
    """The credential cache [logins] asks for (credential_cache_ttl 0: one that is always off)."""
    s = settings if settings is not None else LoginsSection()
    return CredentialCache(clock, s.credential_cache_ttl, s.credential_cache_size)


def make_login(directory: IDirectory, store: Any, clock: Any, locks: MaildropLocks | None = None,
               settings: LoginsSection | None = None) -> Login:
    """The one Login every listener shares: one checker (with its credential cache), one realm,
    one throttle ([logins])."""
    portal = Portal(MailRealm(store, locks), [DirectoryChecker(directory, make_cache(clock, settings))])
    return Login(portal, AuthThrottle(clock, settings), clock)
