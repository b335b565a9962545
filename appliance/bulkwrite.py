"""Sending a long run of large pieces (FETCH's message literals) on a plain TCP socket, uncopied.

Twisted's transport.writeSequence() keeps the pieces in a list; when the buffer runs low its
doWrite() joins them into one bytes (a copy of every octet) and sends at most 128 KiB per
reactor turn. For `FETCH 1:* (BODY.PEEK[])` that copy, ~1,000 send() calls and as many epoll
wake-ups per 125 MB were a third of the reactor's CPU. PieceWriter hands the socket the pieces
themselves with sendmsg() (scatter-gather: the kernel copies from each piece straight into the
socket buffer), as much as the socket takes in one call, and only when the socket is full does
it give one piece to transport.write(): Twisted then waits for room the usual way and, being
registered as a pull producer, calls resumeProducing() when its buffer has drained, and the
direct sending goes on.

Order stays right: a piece goes to sendmsg() only while Twisted holds nothing unsent, so nothing
written through the transport before is overtaken; the pieces themselves keep their order.
Only a plain TCP connection qualifies: TLS encrypts inside the transport and COMPRESS deflates
in a wrapper, so `over()` returns None there and the caller writes through the transport.
A send() error is left to Twisted, as appliance.transport.DirectWriter does: the piece goes to
transport.write(), whose doWrite() meets the same error and closes the connection.
"""
from __future__ import annotations

import os
from bisect import bisect_right
from collections import deque
from itertools import accumulate, islice
from typing import Any

from twisted.internet import defer, interfaces
from zope.interface import implementer

from appliance import maillog
from appliance.transport import plain_tcp

try:
    IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)      # pieces per sendmsg()
except (ValueError, OSError):
    IOV_MAX = 16


HAND_OVER = 64 << 10         # octets given to Twisted's buffer when the socket is full


@implementer(interfaces.IPullProducer)
class PieceWriter:
    """Pieces to a plain TCP connection: sendmsg() while the socket takes them, Twisted's buffer otherwise.

    At most the pieces given to write() are held (the caller waits for `drained()` before giving
    more), and of those one at a time in Twisted's buffer.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._pending: deque[bytes | memoryview] = deque()
        self._waiting: list[defer.Deferred] = []
        self.stopped = False          # the connection went away: pieces are dropped

    @classmethod
    def over(cls, transport: Any) -> PieceWriter | None:
        """A writer for `transport` when it is plain TCP with no producer of its own, else None."""
        conn = plain_tcp(transport)
        if conn is None or conn.TLS or conn.producer is not None or not conn.connected:
            return None
        return cls(conn)

    def start(self) -> None:
        """Become the connection's (pull) producer; `stop()` must follow."""
        self._conn.registerProducer(self, False)

    def stop(self) -> None:
        self._conn.unregisterProducer()

    def write(self, pieces: list[bytes]) -> None:
        """Queue `pieces` behind what is queued and send what the socket takes now."""
        if self.stopped:
            return
        self._pending.extend(piece for piece in pieces if piece)
        self._flush()

    def drained(self) -> defer.Deferred:
        """Fires once every piece given is in the socket or in Twisted's buffer (or the connection is gone)."""
        if not self._pending:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    # ---- IPullProducer: Twisted calls these --------------------------------------------------------
    def resumeProducing(self) -> None:
        """Twisted's buffer is empty (the piece it held went out): the socket is ours again."""
        self._flush()

    def stopProducing(self) -> None:
        self.stopped = True
        self._pending.clear()
        self._wake()

    # ---- inside ------------------------------------------------------------------------------------
    def _flush(self) -> None:
        conn = self._conn
        flushed_log = False
        while self._pending:
            if self.stopped or not conn.connected or conn.disconnecting:
                self._pending.clear()
                break
            if conn._tempDataLen or len(conn.dataBuffer) > conn.offset:
                return            # Twisted still holds unsent octets; it calls resumeProducing() when done
            if not flushed_log:
                maillog.flush_pending()        # the log lines of this turn before what they explain
                flushed_log = True
            offered = list(islice(self._pending, IOV_MAX))
            try:
                sent = conn.socket.sendmsg(offered)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = -1
            ends = list(accumulate(map(len, offered)))
            if sent > 0:
                self._consume(sent, ends)
            if sent < ends[-1]:
                self._hand_over()
                return
        self._wake()

    def _consume(self, sent: int, ends: list[int]) -> None:
        """Drop the `sent` octets from the front of the queue (a partly sent piece becomes its rest);
        `ends` are the running totals of the pieces offered, so whole pieces go without a loop of ours."""
        whole = bisect_right(ends, sent)
        pending = self._pending
        if whole == len(pending):
            pending.clear()
        else:
            for _ in range(whole):
                pending.popleft()
        done = ends[whole - 1] if whole else 0
        if sent > done:
            pending[0] = memoryview(pending[0])[sent - done:]

    def _hand_over(self) -> None:
        """The socket is full (or failed): Twisted gets the start of the next piece (at most
        HAND_OVER octets, so a partly sent 50 MB message is not copied whole), waits for room (or
        meets the error), and calls resumeProducing() once that is out."""
        piece = self._pending[0]
        if len(piece) <= HAND_OVER:
            self._pending.popleft()
            self._conn.write(piece if isinstance(piece, bytes) else bytes(piece))
        else:
            view = memoryview(piece)
            self._conn.write(bytes(view[:HAND_OVER]))
            self._pending[0] = view[HAND_OVER:]
        if not self._pending:
            self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
