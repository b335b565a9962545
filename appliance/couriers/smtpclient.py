"""SMTP sessions with one host: ESMTP, STARTTLS, AUTH PLAIN, PIPELINING, SIZE and 8BITMIME, and in
each session one transaction after another for several recipients, with a reply per recipient.

`open_session` connects and greets (TLS and AUTH done); `Session.transaction` sends one message,
and may be called again on the same session (the outbound courier keeps sessions for reuse, see
couriers/sessions.py). `send` is both for one message.

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
class Settings:
    """How to talk to one host: the same for every message sent over a session with it."""

    helo_name: str
    tls_policy: str              # "opportunistic", "required" or "none"
    tls_options: IOpenSSLClientConnectionCreator | None
    auth: tuple[str, str] | None
    timeouts: Timeouts
    peer: str                    # "host:port", as messages name the peer


class SessionGone(TemporaryFailure):
    """A reused session the peer had dropped before answering our MAIL (a lost connection, a
    timeout, or 421 "closing"): nothing of the message was accepted or refused, so the caller
    tries again on a fresh connection instead of counting it as the message's failure."""


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

    def send_commands(self, commands: list[str], timeout: float) -> list[defer.Deferred]:
        """Send the commands in one write (RFC 2920); a Deferred[Reply] for each, in order."""
        self.transport.write("".join(command + "\r\n" for command in commands).encode("utf-8"))
        return [self.expect(timeout) for _ in commands]

    async def pipeline(self, commands: list[str], timeout: float) -> list[Reply]:
        """Send the commands in one write and wait for all their replies (RFC 2920)."""
        return await _all(self.send_commands(commands, timeout))

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


async def _all(waiters: list[defer.Deferred]) -> list[Reply]:
    """Every reply, or the first failure (the others' failures are consumed)."""
    try:
        return await defer.gatherResults(waiters, consumeErrors=True)
    except defer.FirstError as first:
        first.subFailure.raiseException()


def _ignore(waiters: list[defer.Deferred]) -> None:
    """Replies nobody will read any more: their failures must not be logged as unhandled."""
    for waiter in waiters:
        waiter.addErrback(lambda _: None)


def _extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-case) -> their parameters."""
    keywords = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        keywords[keyword.upper()] = params.strip()
    return keywords


async def _hello(connection: _Connection, settings: Settings) -> dict[str, str]:
    """EHLO, or HELO for an old peer that does not know it; any other refusal ends the session."""
    reply = await connection.command(f"EHLO {settings.helo_name}", settings.timeouts.command)
    if reply.code == 250:
        return _extensions(reply)
    if reply.code in (500, 502):
        reply = await connection.command(f"HELO {settings.helo_name}", settings.timeouts.command)
        if reply.code == 250:
            return {}
    raise TemporaryFailure("4.4.2", f"{settings.peer} refused our greeting: {reply}")


async def _start_tls(connection: _Connection, settings: Settings, extensions: dict[str, str]) -> dict[str, str]:
    """STARTTLS when offered (opportunistic) or insisted on (required); returns the new extensions."""
    if settings.tls_policy == "none" or "STARTTLS" not in extensions:
        return extensions
    reply = await connection.command("STARTTLS", settings.timeouts.command)
    if reply.code != 220:
        if settings.tls_policy == "required":
            raise TemporaryFailure("4.7.4", f"{settings.peer} refused STARTTLS: {reply}")
        return extensions
    if connection.clearLineBuffer():
        raise TemporaryFailure("4.7.0", f"{settings.peer} sent data after its STARTTLS reply")
    connection.transport.startTLS(settings.tls_options or ssl.CertificateOptions())
    connection.secure = True
    return await _hello(connection, settings)


async def _authenticate(connection: _Connection, settings: Settings, extensions: dict[str, str]) -> None:
    """AUTH PLAIN (RFC 4616), never over a cleartext connection."""
    if settings.auth is None:
        return
    if not connection.secure:
        raise TemporaryFailure("4.7.4", f"not sending credentials to {settings.peer} without TLS")
    if "PLAIN" not in extensions.get("AUTH", "").upper().split():
        raise TemporaryFailure("4.7.0", f"{settings.peer} does not offer AUTH PLAIN")
    user, password = settings.auth
    token = base64.b64encode(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")).decode("ascii")
    reply = await connection.command(f"AUTH PLAIN {token}", settings.timeouts.command)
    if reply.code != 235:
        raise TemporaryFailure("4.7.0", f"{settings.peer} refused our credentials: {reply}")


async def _greet(connection: _Connection, settings: Settings) -> dict[str, str]:
    """From the banner to a session ready for MAIL: EHLO, STARTTLS, EHLO again, AUTH."""
    greeting = await connection.expect(settings.timeouts.greeting)
    if greeting.code != 220:
        raise TemporaryFailure("4.4.2", f"{settings.peer} refused to talk to us: {greeting}")
    extensions = await _start_tls(connection, settings, await _hello(connection, settings))
    if settings.tls_policy == "required" and not connection.secure:
        raise TemporaryFailure("4.7.4", f"TLS is required but {settings.peer} does not offer STARTTLS")
    await _authenticate(connection, settings, extensions)
    return extensions


class Session:
    """A greeted SMTP session (TLS and AUTH done) that carries one transaction after another.

    A transaction that got its final reply to DATA leaves the session ready for the next MAIL
    (RFC 5321 4.1.1.4: that reply clears the server's buffers, whatever its code); one that
    stopped half-way (MAIL refused, no recipient accepted, DATA refused) is ended with RSET
    (RFC 5321 4.1.1.5) before the session carries another.
    """

    def __init__(self, connection: _Connection, settings: Settings, extensions: dict[str, str]) -> None:
        self.connection = connection
        self.settings = settings
        self.extensions = extensions
        self.transactions = 0        # started on this session
        self.clean = True            # no transaction left half-way

    @property
    def usable(self) -> bool:
        """Still connected, and nothing went wrong that leaves the conversation out of step."""
        return self.connection.problem is None

    @property
    def closed(self) -> defer.Deferred:
        """Fires when the connection is gone, whoever ended it."""
        return self.connection.closed

    async def transaction(self, sender: str, recipients: list[str], message: bytes) -> Results:
        """Send `message` (wire form, CRLF) from `sender` to `recipients`: the final reply of each.

        Raises PermanentFailure for what the peer said it cannot take (nothing is sent then),
        TemporaryFailure when the session broke, and SessionGone when it broke before MAIL was
        answered on a session that had carried a transaction already.
        """
        reused = self.transactions > 0
        self.transactions += 1
        eight_bit = not message.isascii()
        _check_limits(self.settings.peer, message, self.extensions, eight_bit)
        self.clean = False
        replies = await self._envelope(sender, recipients, len(message), eight_bit, reused)
        results = {rcpt: (reply.code, reply.text) for rcpt, reply in zip(recipients, replies)}
        accepted = [rcpt for rcpt, reply in zip(recipients, replies) if reply.code // 100 == 2]
        if not accepted:
            return results
        timeouts = self.settings.timeouts
        reply = await self.connection.command("DATA", timeouts.data_init)
        if reply.code == 354:
            reply = await self.connection.send_body(stuffed(message), timeouts.data_block, timeouts.data_end)
            self.clean = True
        results.update({rcpt: (reply.code, reply.text) for rcpt in accepted})
        return results

    async def _envelope(self, sender: str, recipients: list[str], size: int, eight_bit: bool,
                        reused: bool) -> list[Reply]:
        """MAIL and RCPTs, in one write when the peer pipelines; one reply per recipient."""
        mail = f"MAIL FROM:<{sender}>"
        if "SIZE" in self.extensions:
            mail += f" SIZE={size}"
        if eight_bit:
            mail += " BODY=8BITMIME"
        rcpts = [f"RCPT TO:<{rcpt}>" for rcpt in recipients]
        timeout = self.settings.timeouts.command
        pipelined = "PIPELINING" in self.extensions
        waiters = self.connection.send_commands([mail, *rcpts] if pipelined else [mail], timeout)
        mail_reply = await self._mail_reply(waiters, reused)
        if pipelined:
            replies = await _all(waiters[1:])
        else:
            replies = []
            if mail_reply.code // 100 == 2:
                replies = [await self.connection.command(rcpt, timeout) for rcpt in rcpts]
        if mail_reply.code // 100 != 2:
            return [mail_reply] * len(rcpts)
        return replies

    async def _mail_reply(self, waiters: list[defer.Deferred], reused: bool) -> Reply:
        """MAIL's reply; on a reused session, a peer that had hung up is SessionGone, not an answer."""
        try:
            reply = await waiters[0]
        except TemporaryFailure as problem:
            _ignore(waiters[1:])
            if reused:
                raise SessionGone(problem.status, f"{problem.text} (a reused session)") from None
            raise
        if reused and reply.code == 421:
            _ignore(waiters[1:])
            self.connection.abort("4.4.2", f"{self.settings.peer} closed a reused session: {reply}")
            raise SessionGone("4.4.2", f"{self.settings.peer} closed a reused session: {reply}")
        return reply

    async def reset(self) -> bool:
        """Ready the session for another transaction: RSET when one stopped half-way.

        False when the peer cannot take another (RSET refused, or the connection is gone).
        """
        if not self.usable:
            return False
        if self.clean:
            return True
        try:
            reply = await self.connection.command("RSET", self.settings.timeouts.command)
        except TemporaryFailure:
            return False
        self.clean = reply.code == 250
        return self.clean

    def close(self) -> defer.Deferred:
        """QUIT (when still usable); fires once the connection is gone."""
        return self.connection.close(self.settings.timeouts.command)


def _check_limits(peer: str, message: bytes, extensions: dict[str, str], eight_bit: bool) -> None:
    """Refuse before sending what the peer said it cannot take."""
    size = extensions.get("SIZE", "")
    if size.isdigit() and int(size) > 0 and len(message) > int(size):
        raise PermanentFailure("5.3.4", f"message size {len(message)} exceeds the limit {size} of {peer}")
    if eight_bit and "8BITMIME" not in extensions:
        raise PermanentFailure("5.6.3", f"message has 8-bit data and {peer} does not support 8BITMIME")


def _endpoint(reactor, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """A plain TCP endpoint for an address (MX delivery), name resolution for a host name (smarthost)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    kind = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    return kind(reactor, host, port, timeout=timeout)


async def open_session(reactor, host: str, port: int, settings: Settings) -> Session:
    """Connect to host:port and greet it; TemporaryFailure when that fails (the connection is then closed)."""
    try:
        endpoint = _endpoint(reactor, host, port, settings.timeouts.connect)
        connection = await connectProtocol(endpoint, _Connection(reactor, settings.peer))
    except Exception as problem:
        raise TemporaryFailure("4.4.1", f"cannot connect to {settings.peer}: {problem}") from None
    try:
        extensions = await _greet(connection, settings)
    except BaseException:
        await connection.close(settings.timeouts.command)
        raise
    return Session(connection, settings, extensions)


def settings_for(host: str, port: int, helo_name: str, *, tls_policy: str = "opportunistic", tls_hostname: str = "",
                 client_tls_options: IOpenSSLClientConnectionCreator | None = None,
                 auth: tuple[str, str] | None = None, timeouts: Timeouts = Timeouts()) -> Settings:
    """The Settings `send` documents; for "required" TLS without options, the system CAs for `tls_hostname`."""
    if tls_policy == "required" and client_tls_options is None:
        client_tls_options = ssl.optionsForClientTLS(tls_hostname or host)
    return Settings(helo_name, tls_policy, client_tls_options, auth, timeouts, f"{host}:{port}")


async def _run(reactor, host: str, port: int, settings: Settings, sender: str, recipients: list[str],
               message: bytes) -> Results:
    session = await open_session(reactor, host, port, settings)
    try:
        return await session.transaction(sender, recipients, message)
    finally:
        await session.close()


def send(reactor, host: str, port: int, helo_name: str, sender: str, recipients: list[str], message: bytes, *,
         tls_policy: str = "opportunistic", tls_hostname: str = "",
         client_tls_options: IOpenSSLClientConnectionCreator | None = None,
         auth: tuple[str, str] | None = None, timeouts: Timeouts = Timeouts()) -> defer.Deferred:
    """Deliver `message` (wire form, CRLF) to `recipients` at host:port in one transaction on its own session.

    Deferred[Results]: the final reply for each recipient. tls_policy is "opportunistic" (STARTTLS
    when offered, certificate not checked, as MX delivery does), "required" (no STARTTLS or a bad
    certificate is a TemporaryFailure; verified against `client_tls_options`, by default the system
    CAs for `tls_hostname`) or "none". `auth` (user, password) is only ever sent over TLS.
    """
    settings = settings_for(host, port, helo_name, tls_policy=tls_policy, tls_hostname=tls_hostname,
                            client_tls_options=client_tls_options, auth=auth, timeouts=timeouts)
    return defer.ensureDeferred(_run(reactor, host, port, settings, sender, list(recipients), message))
