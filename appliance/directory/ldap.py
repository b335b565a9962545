"""The LDAP directory: users, addresses, aliases and groups from OpenLDAP (or AD) through ldap3.

Two halves with a thread boundary between them:

- `LDAPDirectory` lives on the reactor thread. It owns the answer cache (reactor clock), hands
  every LDAP call to the bounded thread pool with `deferToThreadPool`, and logs.
- `LDAPClient` is blocking ldap3 code that runs only in pool threads. It never touches reactor
  objects. Each worker thread keeps one service-account connection for searches; a password
  check binds as the user on a separate, fresh connection that is closed at once, so a user's
  identity never leaks into the service account's searches.

The settings are config.LDAPSection, read and validated with every other section by
appliance.config; this module only uses them.

Every failure to get an answer (socket error, timeout, TLS error, refused service bind, missing
base DN) becomes DirectoryUnavailable: "could not tell" is never "unknown user" or "bad password".
Every value placed in a filter goes through ldap3's `escape_filter_chars`; DNs are only ever
taken from the directory's own answers, never built from input.
"""
from __future__ import annotations

import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import address as addr
from appliance import maillog
from appliance.config import LDAPSection, parse_size
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import IDirectory, UserRecord
from appliance.passwords import CheckQueue

MAX_GROUP_MEMBERS = 1000          # member DNs read per group; a bigger group is an operator mistake
CACHE_MAX_ENTRIES = 10_000
FAILBACK_AFTER = 60.0             # seconds a failover URL is tried first, before the list order again
# Bind results that mean "these credentials do not open this account" (RFC 4511 4.1.9):
# inappropriateAuthentication, invalidCredentials, insufficientAccessRights, unwillingToPerform
# (AD and ppolicy use 49 and 53 for locked or expired accounts). Anything else: could not tell.
REFUSED_BIND = frozenset({48, 49, 50, 53})
_SCHEME = re.compile(r"\{([A-Za-z0-9.-]+)\}")
# The operational attribute every server keeps (RFC 4512 3.4: OpenLDAP, AD, 389-ds): it changes
# with every modification of the entry, a password change included (ldappasswd, a userPassword
# modify), so the credential cache drops the old password once the lookup sees the new value.
CHANGED_ATTRIBUTE = "modifyTimestamp"


# ================================================================ filters and the service password

def fill_filter(template: str, address: str) -> str:
    """The filter for one address: each placeholder replaced by its value, escaped (RFC 4515).

    A value such as `bob)(uid=*` can therefore only ever be compared, never add a clause.
    """
    local, _, domain = address.rpartition("@")
    values = {"address": address, "local": local, "domain": domain}
    for name, value in values.items():
        template = template.replace("{%s}" % name, escape_filter_chars(value))
    return template


def read_bind_password(path: str) -> str:
    """The service account's password: the file's content, stripped. Never logged."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


# ================================================================ what a search found

@dataclass(frozen=True)
class UserEntry:
    """One user entry as the service account sees it (no password)."""

    dn: str
    record: UserRecord
    forward: str = ""


# ================================================================ the blocking half (pool threads only)

class _Unanswered(Exception):
    """Internal: the current server could not answer; the next URL may."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class LDAPClient:
    """Blocking ldap3 calls. Every public method runs in a pool thread and may block up to
    about `timeout` (per URL tried); it raises DirectoryUnavailable when it cannot tell.

    `deadline` (a time.monotonic() value set when the request was queued) lets a request that
    waited for a free worker longer than `timeout` give up at once: while the directory hangs,
    callers get their answer in about one timeout, not one timeout per request ahead of them.
    """

    def __init__(self, settings: LDAPSection, password: str):
        self._settings = settings
        self._password = password
        self._tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings.ca_file or None)
        self._failover: tuple[int, float] = (0, 0.0)   # (URL index that answered instead of the first, since)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[ldap3.Connection] = set()    # every service connection, for close()

    # ---- the operations ---------------------------------------------------------------------
    def find_user(self, address: str, deadline: float) -> UserEntry | None:
        self._in_time(deadline)
        return self._searching(self._find_user, address)

    def find_alias(self, address: str, deadline: float) -> list[str] | None:
        """Targets of a nisMailAlias or a groupOfNames with that address, or None."""
        self._in_time(deadline)
        return self._searching(self._find_alias, address)

    def verify(self, dn: str, password: str, deadline: float) -> bool:
        """Bind as `dn` on a fresh connection, closed afterwards: True when the directory accepts."""
        self._in_time(deadline)
        try:
            connection, bound = self._connect(dn, password)
        except _Unanswered as exc:
            raise DirectoryUnavailable(str(exc)) from None
        try:
            if bound:
                return True
            if connection.result.get("result") in REFUSED_BIND:
                return False
            raise DirectoryUnavailable(f"{connection.server.name}: user bind: {_describe(connection.result)}")
        finally:
            _close(connection)

    def check(self, deadline: float) -> str:
        """Bind as the service account on a new connection, read the base DN, try user_filter."""
        self._in_time(deadline)
        try:
            connection = self._service_connection()
        except _Unanswered as exc:
            raise DirectoryUnavailable(str(exc)) from None
        try:
            self._search(connection, self._settings.base_dn, "(objectClass=*)", [], scope=ldap3.BASE)
            self._search(connection, self._settings.base_dn, fill_filter(self._settings.user_filter,
                                                                           "postmaster@check.invalid"), [])
            return (f"{connection.server.name}: bound as {self._settings.bind_dn}; "
                    f"{self._settings.base_dn} readable; user_filter accepted")
        except _Unanswered as exc:
            raise DirectoryUnavailable(str(exc)) from None
        finally:
            _close(connection)

    def close(self) -> None:
        """Unbind every service connection. Call only once the pool has stopped."""
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            _close(connection)

    # ---- searches ---------------------------------------------------------------------------
    def _find_user(self, connection: ldap3.Connection, address: str) -> UserEntry | None:
        s = self._settings
        wanted = [name for name in (s.mail_attribute, s.alias_attribute, s.forward_attribute,
                                    s.shared_secret_attribute, s.quota_attribute) if name] + [CHANGED_ATTRIBUTE]
        entries = self._search(connection, s.base_dn, fill_filter(s.user_filter, address), wanted)
        if not entries:
            return None
        if len(entries) > 1:
            raise DirectoryUnavailable(f"{address} matches {len(entries)} entries ({entries[0]['dn']}, ...); "
                                       f"an address must belong to one entry")
        entry = entries[0]
        mails = _addresses(_values(entry, s.mail_attribute))
        if not mails:
            raise DirectoryUnavailable(f"{entry['dn']} has no valid {s.mail_attribute}")
        enabled = not (s.disabled_filter and self._search(connection, entry["dn"], s.disabled_filter, [],
                                                          scope=ldap3.BASE))
        record = UserRecord(address=mails[0],
                            addresses=frozenset(mails + _addresses(_values(entry, s.alias_attribute))),
                            shared_secret=_secret(_values(entry, s.shared_secret_attribute)),
                            enabled=enabled, quota=_quota(_values(entry, s.quota_attribute)),
                            credential=_credential(entry))
        forwards = _addresses(_values(entry, s.forward_attribute))
        return UserEntry(dn=entry["dn"], record=record, forward=forwards[0] if forwards else "")

    def _find_alias(self, connection: ldap3.Connection, address: str) -> list[str] | None:
        s = self._settings
        clauses = [fill_filter(f, address) for f in (s.alias_filter, s.group_filter) if f]
        if not clauses:
            return None
        wanted = [s.alias_member_attribute, s.group_member_attribute]
        entries = self._search(connection, s.base_dn, f"(|{''.join(clauses)})", wanted, size_limit=0)
        if not entries:
            return None
        targets: list[str] = []
        for entry in entries:
            targets += [value.strip() for value in _values(entry, s.alias_member_attribute) if value.strip()]
            for dn in _values(entry, s.group_member_attribute)[:MAX_GROUP_MEMBERS]:
                targets += self._member_mail(connection, dn)
        return list(dict.fromkeys(targets))

    def _member_mail(self, connection: ldap3.Connection, dn: str) -> list[str]:
        """The primary mail of one group member; a member without mail (or gone) adds nothing."""
        attribute = self._settings.mail_attribute
        entries = self._search(connection, dn, "(objectClass=*)", [attribute], scope=ldap3.BASE, missing_ok=True)
        mails = _addresses(_values(entries[0], attribute)) if entries else []
        return mails[:1]

    def _search(self, connection: ldap3.Connection, base: str, search_filter: str, attributes: list[str],
                scope=ldap3.SUBTREE, size_limit: int = 2, missing_ok: bool = False) -> list[dict]:
        """The entries found; raises _Unanswered for anything but success or "size limit exceeded"."""
        try:
            connection.search(base, search_filter, search_scope=scope, attributes=attributes or ["1.1"],
                              size_limit=size_limit, time_limit=self._settings.timeout)
        except (LDAPException, OSError) as exc:
            raise _Unanswered(f"{connection.server.name}: search failed: {exc}",
                              timed_out=isinstance(exc, TimeoutError)) from None
        code = connection.result.get("result")
        if code == 32 and missing_ok:                 # noSuchObject
            return []
        if code not in (0, 4):                        # success, sizeLimitExceeded
            raise _Unanswered(f"{connection.server.name}: search under {base}: {_describe(connection.result)}")
        return [entry for entry in connection.response or [] if entry.get("type") == "searchResEntry"]

    def _searching(self, operation: Callable, address: str):
        """Run operation(connection, address) on this thread's service connection.

        A kept connection may have been closed by the server while idle: then the operation is
        tried once more on a new connection. A timeout is not retried, to bound the wait.
        """
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            try:
                return operation(connection, address)
            except _Unanswered as exc:
                self._forget(connection)
                if exc.timed_out:
                    raise DirectoryUnavailable(str(exc)) from None
        try:
            connection = self._service_connection()
            self._local.connection = connection
            with self._lock:
                self._open.add(connection)
            return operation(connection, address)
        except _Unanswered as exc:
            self._forget(getattr(self._local, "connection", None))
            raise DirectoryUnavailable(str(exc)) from None

    def _forget(self, connection: ldap3.Connection | None) -> None:
        self._local.connection = None
        if connection is not None:
            with self._lock:
                self._open.discard(connection)
            _close(connection)

    # ---- connections ------------------------------------------------------------------------
    def _service_connection(self) -> ldap3.Connection:
        connection, bound = self._connect(self._settings.bind_dn, self._password)
        if not bound:
            _close(connection)
            raise _Unanswered(f"{connection.server.name}: the service account's bind was refused: "
                              f"{_describe(connection.result)}; check bind_dn and bind_password_file")
        return connection

    def _connect(self, dn: str, password: str) -> tuple[ldap3.Connection, bool]:
        """Open (and StartTLS) the first URL that answers, then bind; returns (connection, bound).

        Failover is ours rather than ldap3's ServerPool: the pool sleeps 10 s between rounds,
        can drop a server for good, and keeps every connection it ever saw in a dict. A new
        ldap3.Server per attempt, because a Server remembers a refused address as unusable for
        minutes (no recovery when slapd returns) and is not meant to be shared between threads.
        """
        problems = []
        for index in self._url_order():
            url = self._settings.url[index]
            server = ldap3.Server(url, connect_timeout=self._settings.timeout, get_info=ldap3.NONE, tls=self._tls)
            connection = ldap3.Connection(server, user=dn, password=password, raise_exceptions=False,
                                          auto_referrals=False, read_only=True,
                                          receive_timeout=self._settings.timeout)
            try:
                connection.open()
                if self._settings.starttls and not server.ssl:
                    connection.start_tls()
                bound = connection.bind()
            except (LDAPException, OSError, ssl.SSLError) as exc:
                _close(connection)
                problems.append(f"{server.name}: {exc}")
                continue
            self._remember(index)
            return connection, bound
        raise _Unanswered("; ".join(problems))

    def _url_order(self) -> list[int]:
        """URL indexes to try: a recent failover target first, so that a hung first URL does not
        cost every new connection a timeout; after FAILBACK_AFTER the configured order again."""
        order = list(range(len(self._settings.url)))
        index, since = self._failover
        if index and time.monotonic() - since < FAILBACK_AFTER:
            order.remove(index)
            order.insert(0, index)
        return order

    def _remember(self, index: int) -> None:
        """Note which URL answered; a single tuple assignment, so threads need no lock."""
        current, since = self._failover
        if index == 0:
            self._failover = (0, 0.0)
        elif index != current or time.monotonic() - since >= FAILBACK_AFTER:
            self._failover = (index, time.monotonic())

    @staticmethod
    def _in_time(deadline: float) -> None:
        if time.monotonic() > deadline:
            raise DirectoryUnavailable("no free LDAP worker in time: the directory is slow")


def _close(connection: ldap3.Connection) -> None:
    try:
        connection.unbind()
    except (LDAPException, OSError, ssl.SSLError):
        pass


def _describe(result: dict) -> str:
    text = f"{result.get('description', 'error')} ({result.get('result')})"
    return text + (f": {result['message']}" if result.get("message") else "")


def _values(entry: dict, attribute: str) -> list[str]:
    """An attribute's values as text, whatever shape ldap3 gave them (no schema is loaded)."""
    if not attribute:
        return []
    value = entry.get("attributes", {}).get(attribute, [])
    values = value if isinstance(value, list) else [value]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _addresses(values: list[str]) -> list[str]:
    """The valid addresses among `values`, normalised, in order, without repeats."""
    return list(dict.fromkeys(addr.normalise(v) for v in values if addr.is_valid(v.strip())))


def _quota(values: list[str]) -> int | None:
    """The user's own limit from the quota attribute (bytes, or a size such as `1G`; 0 = unlimited).

    Absent, or a value we cannot read, means [storage] quota applies: a typo in one entry must
    not refuse that user's mail, and `mailappliance user show` prints what was read."""
    for value in values:
        try:
            return parse_size(value)
        except ValueError:
            continue
    return None


def _credential(entry: dict) -> str:
    """The record's credential fingerprint: its DN and when it last changed. A server that does
    not show modifyTimestamp to the service account leaves the DN alone: then only
    [logins] credential_cache_ttl bounds an old password (docs/auth.md)."""
    changed = _values(entry, CHANGED_ATTRIBUTE)
    return f"{entry['dn']}\n{changed[0] if changed else ''}"


def _secret(values: list[str]) -> str | None:
    """A usable shared secret: a value without a {SCHEME}, or with {CLEARTEXT}/{PLAIN}.

    A hashed value ({SSHA}, {CRYPT}, ...) cannot serve CRAM-MD5 or APOP and counts as none.
    """
    for value in values:
        scheme = _SCHEME.match(value)
        if scheme is None:
            return value or None
        if scheme.group(1).upper() in ("CLEARTEXT", "PLAIN"):
            return value[scheme.end():] or None
    return None


# ================================================================ the reactor half

class _Cache:
    """Answers kept for `ttl` seconds of the reactor clock; used on the reactor thread only."""

    def __init__(self, clock, ttl: float, max_entries: int = CACHE_MAX_ENTRIES):
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, object]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> tuple[bool, object]:
        """(True, answer) when a fresh answer is kept, else (False, None)."""
        kept = self._entries.get(key)
        if kept is None or kept[0] <= self._clock.seconds():
            self._entries.pop(key, None)
            return False, None
        return True, kept[1]

    def put(self, key: tuple[str, str], answer: object) -> object:
        if self._ttl > 0:
            self._entries.pop(key, None)
            self._entries[key] = (self._clock.seconds() + self._ttl, answer)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return answer


@implementer(IDirectory)
class LDAPDirectory:
    """IDirectory over LDAP, plus alias/group expansion, `describe` and `check`.

    `pool` is a started twisted.python.threadpool.ThreadPool of `settings.pool_size` threads,
    owned by a service; every search runs there. A user's bind (the password check) goes through
    `checks` instead: bounded, dropped when the client has left, and on threads of its own, so
    that guessing never occupies the threads RCPT lookups need (without `checks`, at most half
    the pool's threads bind at once). The bind password is read here, once.
    """

    def __init__(self, settings: LDAPSection, reactor, pool, client: LDAPClient | None = None,
                 checks: CheckQueue | None = None):
        self._settings = settings
        self._reactor = reactor
        self._pool = pool
        self._checks = checks if checks is not None else CheckQueue(reactor, pool, max(1, settings.pool_size // 2))
        self._client = client or LDAPClient(settings, read_bind_password(settings.bind_password_file))
        self._cache = _Cache(reactor, settings.cache_ttl)
        self._healthy = True
        self.supports_shared_secrets = bool(settings.shared_secret_attribute)

    # ---- IDirectory -------------------------------------------------------------------------
    def lookup(self, address: str) -> Deferred:
        """Deferred[UserRecord | None] for a primary or extra address."""
        d = self._user(address)
        return d.addCallback(lambda entry: entry.record if entry else None)

    def authenticate(self, login: str, password: str) -> Deferred:
        """Deferred[UserRecord | None]: search the login's entry, then bind as it.

        The entry may come from the cache; the password check never does.
        """
        if not password:
            return succeed(None)        # an empty password would be an anonymous bind: it proves nothing
        d = self._user(login)
        return d.addCallback(self._bind_as, password)

    # ---- for aliases, `user show` and `check` ----------------------------------------------
    def resolve_alias(self, address: str) -> Deferred:
        """Deferred[list[str] | None]: targets of a nisMailAlias, a group, or a user's forward.

        None means the address is not an alias (it may still be a user). Group members are
        given by their primary mail; nested groups appear as their own address, for the alias
        resolver to expand in turn.
        """
        key = _key(address)
        if key is None:
            return succeed(None)
        hit, answer = self._cache.get(("alias", key))
        if hit:
            return succeed(answer)
        d = self._call(self._client.find_alias, key)
        d.addCallback(lambda targets: self._cache.put(("alias", key), targets))
        d.addCallback(self._forward_unless_alias, key)
        return d

    def describe(self, address: str) -> Deferred:
        """Deferred[dict]: what the directory says about an address, fresh (no cache), no secrets.

        Keys: address, entry (DN or None), record (UserRecord or None), primary, addresses
        (sorted), forward, enabled, shared_secret ("set"/"none"), alias_targets (list or None).
        """
        key = _key(address) or address
        d = self._call(self._client.find_user, key)
        d.addCallback(lambda entry: self._call(self._client.find_alias, key).addCallback(
            lambda targets: _description(key, entry, targets)))
        return d

    def check(self) -> Deferred:
        """Deferred[str]: a one-line summary once the service account has bound and searched."""
        return self._call(self._client.check)

    def close(self) -> None:
        """Unbind the kept connections; call after the pool has stopped."""
        self._client.close()

    # ---- internals --------------------------------------------------------------------------
    def _user(self, address: str) -> Deferred:
        """Deferred[UserEntry | None], from the cache when it is fresh."""
        key = _key(address)
        if key is None:
            return succeed(None)        # not an address: nobody can have it, no need to ask
        hit, answer = self._cache.get(("user", key))
        if hit:
            return succeed(answer)
        d = self._call(self._client.find_user, key)
        return d.addCallback(lambda entry: self._cache.put(("user", key), entry))

    def _bind_as(self, entry: UserEntry | None, password: str) -> Deferred | None:
        if entry is None or not entry.record.enabled:
            return None
        d = self._call(self._client.verify, entry.dn, password, runner=self._checks.run)
        return d.addCallback(lambda ok: entry.record if ok else None)

    def _forward_unless_alias(self, targets: list[str] | None, key: str) -> Deferred | list[str]:
        if targets is not None:
            return targets
        d = self._user(key)
        return d.addCallback(lambda entry: [entry.forward] if entry and entry.forward not in ("", key) else None)

    def _call(self, method: Callable, *args, runner: Callable[..., Deferred] | None = None) -> Deferred:
        """Run a client method in the pool; requests queued past half a `timeout` give up there.

        Half, because the requests ahead of one started their own `timeout` slightly before it
        was queued: with a whole `timeout` it could still start just in time and wait a second
        full one, so a hung directory answered callers after two timeouts instead of about one.
        """
        deadline = time.monotonic() + self._settings.timeout / 2
        if runner is None:
            d = deferToThreadPool(self._reactor, self._pool, method, *args, deadline)
        else:
            d = runner(method, *args, deadline)
        d.addCallbacks(self._answered, self._unanswered)
        return d

    def _answered(self, result: object) -> object:
        if not self._healthy:
            self._healthy = True
            maillog.emit("ldap-available", server=",".join(self._settings.url))
        return result

    def _unanswered(self, failure: Failure) -> Failure:
        """Any failure becomes DirectoryUnavailable; the first of a run is logged with its reason."""
        if not failure.check(DirectoryUnavailable):
            maillog.log.failure("LDAP request failed unexpectedly", failure)
            failure = Failure(DirectoryUnavailable(f"LDAP: {failure.getErrorMessage()}"))
        if self._healthy:
            self._healthy = False
            maillog.error("ldap-unavailable", server=",".join(self._settings.url), reason=failure.getErrorMessage())
        return failure


def _key(address: str) -> str | None:
    """The normalised address used for searches and the cache, or None when it is no address."""
    text = address.strip()
    return addr.normalise(text) if addr.is_valid(text) else None


def _description(address: str, entry: UserEntry | None, targets: list[str] | None) -> dict:
    record = entry.record if entry else None
    return {
        "address": address,
        "entry": entry.dn if entry else None,
        "record": record,
        "primary": record.address if record else None,
        "addresses": sorted(record.addresses) if record else [],
        "forward": entry.forward if entry else "",
        "enabled": record.enabled if record else None,
        "shared_secret": "set" if record and record.shared_secret else "none",
        "alias_targets": targets,
    }
