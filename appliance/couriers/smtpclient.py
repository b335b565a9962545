"""One SMTP transaction with one host for several recipients: ESMTP, STARTTLS, AUTH PLAIN, PIPELINING,
SIZE and 8BITMIME, with a reply per recipient.

`send` fails (TemporaryFailure) only when the host gave no usable answer: no connection, a timeout,
a lost connection, a refused greeting, TLS that is required but missing. Whatever the peer replied
to MAIL, RCPT and DATA comes back per recipient, so the caller can try the next MX for the 4xx ones
and bounce the 5xx ones. Two refusals are decided here, before any data is sent, and fail the whole
message with a PermanentFailure: a message bigger than the peer's SIZE (5.3.4), and 8-bit data for
a peer without 8BITMIME (5.6.3; we bounce rather than convert to quoted-printable).
"""
from __future__ import annotations

import base64
import ipaddress
import re
from collections import deque
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.endpoints import (HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint,
                                        connectProtocol)
from twisted.internet.interfaces import (IDelayedCall, IOpenSSLClientConnectionCreator, IPullProducer, IReactorTime,
                                         IStreamClientEndpoint)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.errors import PermanentFailure, TemporaryFailure

Results = dict[str, tuple[int, str]]     # recipient -> (reply code, reply text without the code)

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\b")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait; the defaults are RFC 5321 4.5.3.2's minimums. Tests shorten them."""

    connect: float = 30.0
    greeting: float = 300.0      # the 220 banner
    command: float = 300.0       # EHLO, STARTTLS, AUTH, MAIL, RCPT
    data_init: float = 120.0     # the 354 after DATA
    data_block: float = 180.0    # each block of the message the peer takes
    data_end: float = 600.0      # the reply after the final "."


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]       # the text of each line, without the code

    @property
    def text(self) -> str:
        return " ".join(self.lines).strip()

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def status_of(code: int, text: str) -> str:
    """The RFC 3463 status a peer's reply carries (RFC 2034), or the generic one of its class.

    This reads the peer's words off the wire; our own failures carry their status as an attribute.
    """
    match = _ENHANCED.match(text)
    if match and match.group(1) == str(code // 100):
        return match.group(0)
    return f"{code // 100}.0.0"


@dataclass(frozen=True)
class _Request:
    helo_name: str
    sender: str
    recipients: list[str]
    message: bytes
    tls_policy: str
    tls_options: IOpenSSLClientConnectionCreator | None
    auth: tuple[str, str] | None
    timeouts: Timeouts
    peer: str


class _Connection(LineReceiver):
    """Parses (multi-line) replies and hands each to the oldest waiter, which PIPELINING needs."""

    MAX_LENGTH = 4096

    def __init__(self, clock: IReactorTime, peer: str) -> None:
        self._clock = clock
        self.peer = peer
        self._waiting: deque[tuple[defer.Deferred, IDelayedCall]] = deque()
        self._lines: list[str] = []
        self.problem: TemporaryFailure | None = None    # why the session ended, once it has
        self.secure = False
        self.closed: defer.Deferred = defer.Deferred()   # fires when the connection is gone

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            self.abort("4.5.0", f"{self.peer} sent a malformed reply")
            return
        self._lines.append(text[4:])
        if text[3:4] == "-":
            return
        reply, self._lines = Reply(int(text[:3]), tuple(self._lines)), []
        if self._waiting:
            waiter, timer = self._waiting.popleft()
            timer.cancel()
            waiter.callback(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.abort("4.5.0", f"{self.peer} sent an overlong reply line")

    def connectionLost(self, reason: Failure) -> None:
        if self.problem is None and reason.check(SSL.Error):
            self.problem = TemporaryFailure("4.7.5", f"TLS with {self.peer} failed: {reason.getErrorMessage()}")
        self.problem = self.problem or TemporaryFailure("4.4.2", f"connection to {self.peer} lost")
        self._fail_waiters()
        self.closed.callback(None)

    def abort(self, status: str, why: str) -> None:
        """Give up on the session: every waiter fails with `why` (a TemporaryFailure of `status`)."""
        if self.problem is None:
            self.problem = TemporaryFailure(status, why)
            self._fail_waiters()
            self.transport.abortConnection()

    def _fail_waiters(self) -> None:
        while self._waiting:
            waiter, timer = self._waiting.popleft()
            if timer.active():
                timer.cancel()
            waiter.errback(self.failure())

    def failure(self) -> TemporaryFailure:
        """Why the session ended, as a fresh exception for each waiter: one instance raised in many
        coroutines would collect all their tracebacks."""
        assert self.problem is not None
        return TemporaryFailure(self.problem.status, self.problem.text)

    def expect(self, timeout: float) -> defer.Deferred:
        """Deferred[Reply] for the next reply not yet claimed."""
        if self.problem is not None:
            return defer.fail(self.failure())
        waiter: defer.Deferred = defer.Deferred()
        timer = self._clock.callLater(timeout, self.abort, "4.4.2", f"timeout waiting for {self.peer}")
        self._waiting.append((waiter, timer))
        return waiter

    async def pipeline(self, commands: list[str], timeout: float) -> list[Reply]:
        """Send the commands in one write and wait for all their replies (RFC 2920)."""
        self.transport.write("".join(command + "\r\n" for command in commands).encode("utf-8"))
        waiters = [self.expect(timeout) for _ in commands]
        try:
            return await defer.gatherResults(waiters, consumeErrors=True)
        except defer.FirstError as first:
            first.subFailure.raiseException()

    async def command(self, command: str, timeout: float) -> Reply:
        return (await self.pipeline([command], timeout))[0]

    async def send_body(self, data: bytes, block_timeout: float, end_timeout: float) -> Reply:
        """Write the (dot-stuffed, terminated) message, then wait for the final reply."""
        writer = _BodyWriter(self, self._clock, data, block_timeout)
        self.transport.registerProducer(writer, False)
        await writer.finished
        return await self.expect(end_timeout)

    def close(self, timeout: float) -> defer.Deferred:
        """QUIT politely when the session is still usable; fires once the connection is gone.

        Waiting for that keeps a session from outliving its delivery; a peer that will not let go
        is cut off after `timeout`.
        """
        if self.problem is None:
            self.problem = TemporaryFailure("4.4.2", f"session with {self.peer} closed")
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()
        if not self.closed.called:
            timer = self._clock.callLater(timeout, self.transport.abortConnection)
            self.closed.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return self.closed


@implementer(IPullProducer)
class _BodyWriter:
    """Feeds the message in blocks as the peer takes them; each block restarts the block timer."""

    def __init__(self, connection: _Connection, clock: IReactorTime, data: bytes, timeout: float) -> None:
        self._connection = connection
        self._clock = clock
        self._data = memoryview(data)
        self._timeout = timeout
        self._offset = 0
        self._timer: IDelayedCall | None = None
        self.finished: defer.Deferred = defer.Deferred()

    def resumeProducing(self) -> None:
        self._stop_timer()
        chunk = self._data[self._offset:self._offset + _CHUNK]
        if not chunk:
            self._connection.transport.unregisterProducer()
            self.finished.callback(None)
            return
        self._offset += len(chunk)
        self._timer = self._clock.callLater(self._timeout, self._stalled)
        self._connection.transport.write(bytes(chunk))

    def stopProducing(self) -> None:
        self._stop_timer()
        if not self.finished.called:
            if self._connection.problem is not None:
                self.finished.errback(self._connection.failure())
            else:
                self.finished.errback(TemporaryFailure("4.4.2", f"connection to {self._connection.peer} lost in DATA"))

    def _stalled(self) -> None:
        self._timer = None
        self._connection.abort("4.4.2", f"timeout sending the message to {self._connection.peer}")
        self.stopProducing()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def stuffed(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF-terminated, leading dots doubled, then "." (RFC 5321 4.5.2)."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def _extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-case) -> their parameters."""
    keywords = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        keywords[keyword.upper()] = params.strip()
    return keywords


async def _hello(connection: _Connection, request: _Request) -> dict[str, str]:
    """EHLO, or HELO for an old peer that does not know it; any other refusal ends the session."""
    reply = await connection.command(f"EHLO {request.helo_name}", request.timeouts.command)
    if reply.code == 250:
        return _extensions(reply)
    if reply.code in (500, 502):
        reply = await connection.command(f"HELO {request.helo_name}", request.timeouts.command)
        if reply.code == 250:
            return {}
    raise TemporaryFailure("4.4.2", f"{request.peer} refused our greeting: {reply}")


async def _start_tls(connection: _Connection, request: _Request, extensions: dict[str, str]) -> dict[str, str]:
    """STARTTLS when offered (opportunistic) or insisted on (required); returns the new extensions."""
    if request.tls_policy == "none" or "STARTTLS" not in extensions:
        return extensions
    reply = await connection.command("STARTTLS", request.timeouts.command)
    if reply.code != 220:
        if request.tls_policy == "required":
            raise TemporaryFailure("4.7.4", f"{request.peer} refused STARTTLS: {reply}")
        return extensions
    if connection.clearLineBuffer():
        raise TemporaryFailure("4.7.0", f"{request.peer} sent data after its STARTTLS reply")
    connection.transport.startTLS(request.tls_options or ssl.CertificateOptions())
    connection.secure = True
    return await _hello(connection, request)


async def _authenticate(connection: _Connection, request: _Request, extensions: dict[str, str]) -> None:
    """AUTH PLAIN (RFC 4616), never over a cleartext connection."""
    if request.auth is None:
        return
    if not connection.secure:
        raise TemporaryFailure("4.7.4", f"not sending credentials to {request.peer} without TLS")
    if "PLAIN" not in extensions.get("AUTH", "").upper().split():
        raise TemporaryFailure("4.7.0", f"{request.peer} does not offer AUTH PLAIN")
    user, password = request.auth
    token = base64.b64encode(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")).decode("ascii")
    reply = await connection.command(f"AUTH PLAIN {token}", request.timeouts.command)
    if reply.code != 235:
        raise TemporaryFailure("4.7.0", f"{request.peer} refused our credentials: {reply}")


def _check_limits(request: _Request, extensions: dict[str, str], eight_bit: bool) -> None:
    """Refuse before sending what the peer said it cannot take."""
    size = extensions.get("SIZE", "")
    if size.isdigit() and int(size) > 0 and len(request.message) > int(size):
        raise PermanentFailure("5.3.4", f"message size {len(request.message)} exceeds the limit {size} "
                               f"of {request.peer}")
    if eight_bit and "8BITMIME" not in extensions:
        raise PermanentFailure("5.6.3", f"message has 8-bit data and {request.peer} does not support 8BITMIME")


async def _envelope(connection: _Connection, request: _Request, extensions: dict[str, str],
                    eight_bit: bool) -> list[Reply]:
    """MAIL and RCPTs, in one write when the peer pipelines; one reply per recipient."""
    mail = f"MAIL FROM:<{request.sender}>"
    if "SIZE" in extensions:
        mail += f" SIZE={len(request.message)}"
    if eight_bit:
        mail += " BODY=8BITMIME"
    rcpts = [f"RCPT TO:<{rcpt}>" for rcpt in request.recipients]
    timeout = request.timeouts.command
    if "PIPELINING" in extensions:
        mail_reply, *replies = await connection.pipeline([mail, *rcpts], timeout)
    else:
        mail_reply = await connection.command(mail, timeout)
        replies = []
        if mail_reply.code // 100 == 2:
            replies = [await connection.command(rcpt, timeout) for rcpt in rcpts]
    if mail_reply.code // 100 != 2:
        return [mail_reply] * len(rcpts)
    return replies


async def _session(connection: _Connection, request: _Request) -> Results:
    timeouts = request.timeouts
    greeting = await connection.expect(timeouts.greeting)
    if greeting.code != 220:
        raise TemporaryFailure("4.4.2", f"{request.peer} refused to talk to us: {greeting}")
    extensions = await _start_tls(connection, request, await _hello(connection, request))
    if request.tls_policy == "required" and not connection.secure:
        raise TemporaryFailure("4.7.4", f"TLS is required but {request.peer} does not offer STARTTLS")
    await _authenticate(connection, request, extensions)
    eight_bit = not request.message.isascii()
    _check_limits(request, extensions, eight_bit)
    replies = await _envelope(connection, request, extensions, eight_bit)
    results = {rcpt: (reply.code, reply.text) for rcpt, reply in zip(request.recipients, replies)}
    accepted = [rcpt for rcpt, reply in zip(request.recipients, replies) if reply.code // 100 == 2]
    if not accepted:
        return results
    reply = await connection.command("DATA", timeouts.data_init)
    if reply.code == 354:
        reply = await connection.send_body(stuffed(request.message), timeouts.data_block, timeouts.data_end)
    results.update({rcpt: (reply.code, reply.text) for rcpt in accepted})
    return results


def _endpoint(reactor, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """A plain TCP endpoint for an address (MX delivery), name resolution for a host name (smarthost)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    kind = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    return kind(reactor, host, port, timeout=timeout)


async def _run(reactor, host: str, port: int, request: _Request) -> Results:
    try:
        endpoint = _endpoint(reactor, host, port, request.timeouts.connect)
        connection = await connectProtocol(endpoint, _Connection(reactor, request.peer))
    except Exception as problem:
        raise TemporaryFailure("4.4.1", f"cannot connect to {request.peer}: {problem}") from None
    try:
        return await _session(connection, request)
    finally:
        await connection.close(request.timeouts.command)


def send(reactor, host: str, port: int, helo_name: str, sender: str, recipients: list[str], message: bytes, *,
         tls_policy: str = "opportunistic", tls_hostname: str = "",
         client_tls_options: IOpenSSLClientConnectionCreator | None = None,
         auth: tuple[str, str] | None = None, timeouts: Timeouts = Timeouts()) -> defer.Deferred:
    """Deliver `message` (wire form, CRLF) to `recipients` at host:port in one transaction.

    Deferred[Results]: the final reply for each recipient. tls_policy is "opportunistic" (STARTTLS
    when offered, certificate not checked, as MX delivery does), "required" (no STARTTLS or a bad
    certificate is a TemporaryFailure; verified against `client_tls_options`, by default the system
    CAs for `tls_hostname`) or "none". `auth` (user, password) is only ever sent over TLS.
    """
    if tls_policy == "required" and client_tls_options is None:
        client_tls_options = ssl.optionsForClientTLS(tls_hostname or host)
    request = _Request(helo_name, sender, list(recipients), message, tls_policy, client_tls_options, auth,
                       timeouts, f"{host}:{port}")
    return defer.ensureDeferred(_run(reactor, host, port, request))
