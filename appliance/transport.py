"""Small facts about a connection's transport that every protocol needs."""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

from appliance import maillog


def no_delay(transport: Any) -> None:
    """Set TCP_NODELAY on the socket below any TLS wrapper.

    Our protocols answer a client that waits for the answer; a reply's last small segment must
    not also wait for the client's delayed ACK (Nagle): stock Twisted POP3 lost 43 ms per RETR so.
    """
    for _ in range(4):
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if callable(set_no_delay):
            try:
                set_no_delay(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)


def plain_tcp(transport: Any) -> tcp.Connection | None:
    """The tcp.Connection when `transport` is one, or a chain of pass-through ProtocolWrappers
    (appliance.connlimit's) down to one; None for anything else.

    Only known pass-through layers are looked through: a layer that changes the octets (an
    implicit-TLS port's TLSMemoryBIOProtocol, COMPRESS's DeflatingTransport, which forwards
    attribute look-ups, `.transport` too) must never be skipped, or bytes would reach the
    socket unencrypted or uncompressed.
    """
    for _ in range(4):
        if ISSLTransport.providedBy(transport):
            return None
        if isinstance(transport, tcp.Connection):
            return transport
        if not isinstance(transport, ProtocolWrapper) or isinstance(transport, TLSMemoryBIOProtocol):
            return None
        transport = transport.transport
    return None


def unsent(parts: list[bytes], sent: int) -> list[bytes]:
    """What is left of `parts` after the first `sent` octets went out."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return ([part[sent:]] if sent else [part]) + parts[index + 1:]
        sent -= len(part)
    return []


class DirectWriter:
    """Write to a plain TCP connection with one send() when nothing is queued before it.

    Twisted's transport.write() only buffers: it registers the socket for writability with
    epoll (epoll_ctl), the reactor wakes up on the next poll, sends, and unregisters again.
    For a protocol that answers a few bytes per command (SMTP, POP3) that is two epoll_ctl
    calls and an extra wake-up per reply; the issue's profile of an SMTP ingest found 9% of the
    reactor there. A reply that fits in the socket's send buffer is sent at once instead.

    Order stays right: when the transport still holds unsent bytes, a producer, TLS (which
    encrypts in the transport), or the connection is closing, everything goes through
    transport.write() as before; only the part that did not fit is handed to it. A send()
    error is left to Twisted too: the data goes to transport.write(), whose next doWrite()
    meets the same error and closes the connection the usual way.

    The log lines of this turn are written first (maillog.flush_pending): a reply sent at once
    would otherwise reach the client before the line that explains it reaches the log, and a
    script (or a test) that reads the log after the reply would not find it.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._tcp = plain_tcp(transport)

    def _direct(self) -> tcp.Connection | None:
        """The connection when a send now cannot overtake anything or bypass a layer, else None."""
        conn = self._tcp
        if (conn is None or conn.TLS or not conn.connected or conn.disconnecting or conn.producer is not None
                or conn._tempDataLen or len(conn.dataBuffer) > conn.offset):
            return None
        return conn

    def write(self, data: bytes) -> None:
        conn = self._direct()
        sent = None if conn is None or not data else self._send_now(conn.socket.send, data)
        if sent is None:
            self.transport.write(data)
        elif sent < len(data):
            self.transport.write(data[sent:])

    def writeSequence(self, parts: list[bytes]) -> None:
        """`parts` in one sendmsg(): the kernel gathers them, with no join copy of a message in
        Twisted's doWrite (a POP3 RETR answer is the status line, the message, the terminator)."""
        conn = self._direct()
        sent = None if conn is None else self._send_now(conn.socket.sendmsg, parts)
        if sent is None:
            self.transport.writeSequence(parts)
        elif sent < sum(map(len, parts)):
            self.transport.writeSequence(unsent(parts, sent))

    @staticmethod
    def _send_now(send: Callable[[Any], int], payload: Any) -> int | None:
        """How many bytes `send(payload)` took (0 when the buffer is full); None on a send error,
        which is left to Twisted: the caller hands everything to the transport, whose next
        doWrite() meets the same error and closes the connection the usual way."""
        maillog.flush_pending()
        try:
            return send(payload)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return None
