"""Connection limits for every listener: per client, per service, and a descriptor reserve.

One `ConnectionTable` per process, shared by every listener (SMTP, submission, POP3, IMAP, plain
and implicit TLS). It is one table because the resource it protects is one: RLIMIT_NOFILE is
per process, so 300 idle POP3 connections took SMTP down for everybody (EMFILE) while each
listener counted only its own. Inside the table, counts are kept per service *kind*:

- `smtp` (port 25), `submission` (587 and 465), `pop3` (110 and 995), `imap` (143 and 993). The
  plain and implicit-TLS listeners of one protocol share a kind, so a client cannot double its
  allowance by using both ports; different kinds do not share, so a mail client's IMAP
  connections never use up its own submission allowance.
- per client: `[limits] max_connections_per_ip` connections of one kind from one client, where a
  client is an IPv4 address, an IPv6 /64 (what one customer usually gets), and an IPv4-mapped
  IPv6 address (::ffff:192.0.2.1) counts as its IPv4 address. `[relay] trusted_networks` are
  exempt, as Postfix exempts $mynetworks.
- per service: `[limits] max_connections_per_service` connections of one kind in all, and never
  more than the kind's share of the descriptors: (RLIMIT_NOFILE - descriptor_reserve) divided by
  the number of kinds listening. So one service cannot starve another whatever the limits say.
- descriptors: `[limits] descriptor_reserve` descriptors always stay free for the queue, the
  mailboxes, the logs and LDAP, and for the moment it takes to refuse a connection.

A refused connection gets its protocol's temporary answer and is closed: SMTP `421 4.7.0`,
POP3 `-ERR [SYS/TEMP]`, IMAP `* BYE` (for implicit TLS, inside TLS, as the client expects).
"""
from __future__ import annotations

import ipaddress
import resource
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from appliance import address, maillog

# Listener name -> service kind (the unit of the per-client and per-service counts).
KINDS = {"smtp": "smtp", "submission": "submission", "smtps": "submission",
         "pop3": "pop3", "pop3s": "pop3", "imap": "imap", "imaps": "imap", "web": "web"}
REFUSAL_GRACE = 5.0      # seconds a refused client gets to read its answer (a TLS handshake first)
MAX_RAISED_LIMIT = 65536  # the soft descriptor limit is raised towards the hard one, up to this

PER_CLIENT, PER_SERVICE, DESCRIPTORS = "per-client", "per-service", "descriptors"


def client_key(host: str | None) -> str:
    """What counts as one client: an IPv4 address, or an IPv6 /64; IPv4-mapped IPv6 is its IPv4."""
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host               # not an IP (a UNIX socket): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (what EMFILE is measured against)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else MAX_RAISED_LIMIT


def raise_descriptor_limit() -> int:
    """Raise the soft descriptor limit to the hard one (at most MAX_RAISED_LIMIT), as Go and nginx do.

    The hard limit is the operator's (ulimit -Hn, systemd LimitNOFILE=); the soft default of
    1024 is only a guard for select()-based programs, which we are not. Returns the soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_RAISED_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_RAISED_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return descriptor_limit()


class ConnectionTable:
    """The process's open connections, counted per service kind and per client (see the module doc)."""

    def __init__(self, *, per_client: int, per_service: int, descriptor_reserve: int,
                 exempt: tuple[Any, ...] = (), descriptors: int | None = None) -> None:
        self.per_client = per_client
        self.per_service = per_service
        self.descriptor_reserve = descriptor_reserve
        self.exempt = exempt
        self._descriptors = descriptors          # None: the process's limit, read at each connection
        self.kinds: set[str] = set()
        self.total = 0
        self._services: dict[str, int] = {}
        self._clients: dict[tuple[str, str], int] = {}

    @property
    def descriptors(self) -> int:
        """RLIMIT_NOFILE, read live so `prlimit --nofile` on the running daemon takes effect (one syscall)."""
        return self._descriptors if self._descriptors is not None else descriptor_limit()

    def register(self, kind: str) -> None:
        """A listener of `kind` exists: the descriptors are shared among the kinds registered."""
        self.kinds.add(kind)

    def service_cap(self, kind: str) -> int:
        """How many connections `kind` may hold: its configured cap, and never more than its share."""
        usable = max(0, self.descriptors - self.descriptor_reserve)
        share = max(1, usable // max(1, len(self.kinds | {kind})))
        return min(self.per_service, share)

    def admit(self, kind: str, host: str | None) -> str | None:
        """Count a new connection and return None, or return why it is refused (nothing counted)."""
        if self.total + self.descriptor_reserve >= self.descriptors:
            return DESCRIPTORS
        if self._services.get(kind, 0) >= self.service_cap(kind):
            return PER_SERVICE
        key = (kind, client_key(host))
        if self._clients.get(key, 0) >= self.per_client and not (host and address.in_networks(host, self.exempt)):
            return PER_CLIENT
        self._clients[key] = self._clients.get(key, 0) + 1
        self._services[kind] = self._services.get(kind, 0) + 1
        self.total += 1
        return None

    def release(self, kind: str, host: str | None) -> None:
        key = (kind, client_key(host))
        count = self._clients.get(key, 0) - 1
        if count > 0:
            self._clients[key] = count
        else:
            self._clients.pop(key, None)
        self._services[kind] = max(0, self._services.get(kind, 0) - 1)
        self.total = max(0, self.total - 1)

    def open_connections(self, kind: str) -> int:
        return self._services.get(kind, 0)


class _Counted(ProtocolWrapper):
    """A connection the table counted: released exactly once when it closes."""

    def __init__(self, factory: "LimitedFactory", wrapped: Any, host: str | None) -> None:
        super().__init__(factory, wrapped)
        self.host = host

    def connectionLost(self, reason: Any) -> None:
        factory, self.factory = self.factory, None
        try:
            if self.wrappedProtocol is not None:
                self.wrappedProtocol.connectionLost(reason)
        finally:
            self.wrappedProtocol = None
            if factory is not None:
                factory.table.release(factory.kind, self.host)
                factory.open = max(0, factory.open - 1)



class Refusal(Protocol):
    """Says the protocol's temporary "too many connections" line, then closes.

    Its descriptor counts in the table's total until it is gone, so a flood of refused clients
    (TLS clients that never finish the handshake, say) cannot eat the descriptor reserve.
    """

    def __init__(self, line: bytes, clock: Any, table: ConnectionTable) -> None:
        self.line = line
        self.clock = clock
        self.table = table
        self._timer: Any = None
        table.total += 1

    def connectionMade(self) -> None:
        self.transport.write(self.line + b"\r\n")
        self.transport.loseConnection()
        # A TLS client that never completes its handshake must not keep the descriptor.
        self._timer = self.clock.callLater(REFUSAL_GRACE, lambda: self.transport.abortConnection())

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.table is not None:
            self.table.total = max(0, self.table.total - 1)
            self.table = None


class LimitedFactory(WrappingFactory):
    """Wraps one listener's factory: each new connection is admitted by the table or refused.

    Put it inside the implicit-TLS wrapper (tls.implicit(LimitedFactory(...))): the count is
    taken when TCP accepts, and a refusal reaches a TLS client inside TLS.
    """

    protocol = _Counted  # type: ignore[assignment]
    noisy = False              # no "Starting factory" at info level: the `started` line says it

    def __init__(self, wrapped: Any, table: ConnectionTable, kind: str, service: str, clock: Any) -> None:
        super().__init__(wrapped)
        self.table = table
        self.kind = kind
        self.service = service
        # PER_CLIENT / PER_SERVICE / DESCRIPTORS -> the line to send: each protocol's factory names its own
        self.refusals: dict[str, bytes] = wrapped.refusals
        self.clock = clock
        self.open = 0            # this listener's admitted connections now open (for /metrics)
        table.register(kind)

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", None)
        reason = self.table.admit(self.kind, host)
        if reason is not None:
            maillog.emit("connection-refused", service=self.service, peer=host or "", reason=reason)
            if reason == DESCRIPTORS and self.table.total >= self.table.descriptors - self.table.descriptor_reserve // 2:
                return None           # half the reserve is gone already: close at once, without a word
            refusal = Refusal(self.refusals.get(reason) or self.refusals[PER_SERVICE], self.clock, self.table)
            refusal.factory = self
            return refusal
        try:
            inner = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            self.table.release(self.kind, host)
            raise
        if inner is None:
            self.table.release(self.kind, host)
            return None
        self.open += 1
        return _Counted(self, inner, host)

    def registerProtocol(self, p: Any) -> None:
        pass

    def unregisterProtocol(self, p: Any) -> None:
        pass
