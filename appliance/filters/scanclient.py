"""One request, one answer: how spamd and clamd are asked, over TCP or a unix socket, without blocking.

Both daemons read a request, write one answer and close the connection, so one small Protocol
serves both: it writes the request, gathers the answer until the daemon closes, and gives up
at a deadline. The answer is bounded (a daemon that talks forever is cut off), and every way
of not getting one (refused, reset, too slow, too long) is a ScannerUnavailable, which the
checks turn into `[checks] scanner_failure`: deliver unscanned, or 451 4.7.1.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from appliance import replies
from appliance.filters.base import Verdict

ACCEPT, TEMPFAIL = "accept", "tempfail"     # the values of [checks] scanner_failure


class ScannerUnavailable(Exception):
    """No usable answer from the scanner; the text says why, for the log line."""


def endpoint(reactor: Any, where: str) -> Any:
    """A client endpoint for `[checks] spamd/clamd`: a unix socket path, or host:port (IPv6 without brackets)."""
    if where.startswith("/"):
        return UNIXClientEndpoint(reactor, where)
    host, _, port = where.rpartition(":")
    return HostnameEndpoint(reactor, host.strip("[]"), int(port))


class _Exchange(Protocol):
    """Writes the request, then keeps what the daemon answers until it closes the connection."""

    def __init__(self, request: Sequence[bytes], limit: int, answer: defer.Deferred) -> None:
        self.request = request
        self.limit = limit
        self.answer = answer
        self.received: list[bytes] = []
        self.size = 0

    def connectionMade(self) -> None:
        self.transport.writeSequence(list(self.request))

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._finish(Failure(ScannerUnavailable(f"answer longer than {self.limit} bytes")))
            self.transport.abortConnection()
            return
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The daemon closing its side ends the answer; a reset before anything came is a failure.
        if self.received or reason.check(error.ConnectionDone):
            self._finish(b"".join(self.received))
        else:
            self._finish(Failure(ScannerUnavailable(f"connection lost: {reason.getErrorMessage()}")))

    def _finish(self, result: object) -> None:
        if self.answer.called:
            return
        if isinstance(result, Failure):
            self.answer.errback(result)
        else:
            self.answer.callback(result)


class _Request(Factory):
    """One connection, one exchange: the factory hands out its single _Exchange and can abort it."""

    noisy = False               # no "Starting factory" line in the log for every message scanned

    def __init__(self, request: Sequence[bytes], limit: int) -> None:
        self.answer: defer.Deferred = defer.Deferred(self._cancel)
        self.exchange = _Exchange(request, limit, self.answer)
        self.connecting: defer.Deferred | None = None

    def buildProtocol(self, addr: Any) -> _Exchange:
        return self.exchange

    def _cancel(self, _: defer.Deferred) -> None:
        """The deadline passed: drop the connection, or the attempt to make one."""
        if self.exchange.transport is not None:
            self.exchange.transport.abortConnection()
        if self.connecting is not None:
            self.connecting.cancel()

    def connect_failed(self, failure: Failure) -> None:
        if not self.answer.called:
            self.answer.errback(failure)


def ask(reactor: Any, where: str, request: Sequence[bytes], timeout: float, limit: int) -> defer.Deferred:
    """Deferred[bytes]: the whole answer to `request`; fails with ScannerUnavailable, never anything else.

    `timeout` covers everything from connecting to the daemon's close, so a daemon that accepts
    and then says nothing costs this one message `timeout` seconds and blocks nobody else.
    """
    factory = _Request(request, limit)
    factory.connecting = endpoint(reactor, where).connect(factory)
    factory.connecting.addErrback(factory.connect_failed)
    answer = factory.answer
    answer.addTimeout(timeout, reactor)
    answer.addErrback(_unavailable, timeout)
    return answer


def _unavailable(failure: Failure, timeout: float) -> Failure:
    """Every failure as ScannerUnavailable with a short reason (no tracebacks in the mail log)."""
    if failure.check(ScannerUnavailable):
        return failure
    if failure.check(defer.TimeoutError, defer.CancelledError):
        reason = f"no answer within {timeout:g} s"
    elif failure.check(error.ConnectionRefusedError):
        reason = "connection refused"
    else:
        reason = failure.getErrorMessage() or failure.type.__name__
    return Failure(ScannerUnavailable(reason))


def unavailable(name: str, failure_mode: str, reason: str) -> Verdict:
    """What `[checks] scanner_failure` makes of a scanner that did not answer: accept or 451 4.7.1."""
    if failure_mode == TEMPFAIL:
        return Verdict.tempfail(replies.SCANNER_UNAVAILABLE, f"{name} unavailable: {reason}")
    return Verdict.accept(f"{name} unavailable: {reason}; delivered unscanned")


def too_big(name: str, size: int, limit: int, key: str) -> Verdict:
    """A message above the scanner's size limit is delivered unscanned, as spamc and clamav-milter do."""
    return Verdict.accept(f"not scanned: {size} bytes is more than {key} = {limit}")
