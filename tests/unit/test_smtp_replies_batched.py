"""Replies go out in as few writes as the client allows (issue 14), and the direct socket write keeps order.

A client that pipelines (RFC 2920) gets the replies to one chunk of commands in one write; the
250 a command waited for (the queue's fsync) goes out together with the replies to what the
client pipelined behind it; a client that waits for each reply still gets each one at once.
"""
from __future__ import annotations

import socket

from twisted.internet import defer, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides

from appliance import maillog
from appliance.transport import DirectWriter
from tests.unit.test_smtp_server import Rig, codes


class CountingTransport(StringTransport):
    """Keeps each write apart, so a test sees how the replies were grouped."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 4321))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def rig() -> tuple[Rig, CountingTransport]:
    rig = Rig()
    transport = CountingTransport()
    rig.proto = rig.factory.buildProtocol(None)
    rig.transport = transport
    rig.proto.makeConnection(transport)
    transport.writes.clear()
    transport.clear()
    return rig, transport


def test_pipelined_commands_get_their_replies_in_order_in_one_write():
    r, transport = rig()
    r.proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                         b"RCPT TO:<nobody@example.test>\r\nNOOP\r\nRSET\r\n")
    [write] = transport.writes
    assert codes(write.split(b"\r\n")[:-1]) == [b"250", b"250", b"250", b"550", b"250", b"250"]


def test_a_client_that_waits_for_each_reply_gets_each_at_once():
    r, transport = rig()
    for command, code in ((b"EHLO client.test", b"250"), (b"MAIL FROM:<x@remote.test>", b"250"),
                          (b"RCPT TO:<alice@example.test>", b"250"), (b"DATA", b"354")):
        transport.writes.clear()
        r.proto.dataReceived(command + b"\r\n")
        [write] = transport.writes                            # written before dataReceived returned
        assert codes(write.split(b"\r\n")[:-1]) == [code]


def test_the_250_after_the_queue_goes_out_with_the_replies_pipelined_behind_it():
    r, transport = rig()
    r.queue.hold = defer.Deferred()                           # the fsync is in flight
    r.proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                         b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
    [first] = transport.writes
    assert codes(first.split(b"\r\n")[:-1]) == [b"250", b"250", b"250", b"354"]
    r.queue.hold.callback(None)                               # durable now
    assert len(transport.writes) == 2
    assert codes(transport.writes[1].split(b"\r\n")[:-1]) == [b"250", b"250", b"221"]
    assert transport.writes[1].startswith(b"250 2.0.0 Ok: queued as ")
    assert transport.disconnecting


class FakeReactor:
    """What a tcp.Connection asks of its reactor when it must wait for the socket to drain."""

    def __init__(self) -> None:
        self.writers: list = []

    def addWriter(self, writer) -> None:
        if writer not in self.writers:      # as epoll: registered once however often asked
            self.writers.append(writer)

    def removeWriter(self, writer) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


def connection() -> tuple[tcp.Connection, socket.socket, FakeReactor]:
    ours, peer = socket.socketpair()
    reactor = FakeReactor()
    conn = tcp.Connection(ours, Protocol(), reactor=reactor)
    conn.connected = True
    peer.settimeout(5)
    return conn, peer, reactor


def read_all(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += peer.recv(1 << 20)
    return data


def test_a_reply_goes_out_with_one_send_and_no_epoll_registration():
    conn, peer, reactor = connection()
    DirectWriter(conn).write(b"250 ok\r\n")
    assert peer.recv(100) == b"250 ok\r\n"
    assert reactor.writers == [] and conn.dataBuffer == b"" and not conn._tempDataBuffer


def test_the_log_lines_of_this_turn_are_written_before_a_reply_sent_at_once(monkeypatch):
    """A client that reads the log after a reply finds the line explaining it (not one turn later)."""
    conn, peer, reactor = connection()
    order: list[str] = []

    class Writer:
        def flush(self) -> None:
            order.append("log")

    monkeypatch.setattr(maillog, "_writer", Writer())
    real_send = conn.socket.send
    monkeypatch.setattr(conn, "socket", SendSpy(real_send, order))
    DirectWriter(conn).write(b"451 later\r\n")
    assert peer.recv(100) == b"451 later\r\n"
    assert order == ["log", "send"]


class SendSpy:
    """A socket stand-in that notes each send, then sends."""

    def __init__(self, send, order: list[str]) -> None:
        self._send, self._order = send, order

    def send(self, data: bytes) -> int:
        self._order.append("send")
        return self._send(data)


def test_bytes_already_waiting_in_the_transport_go_first():
    conn, peer, reactor = connection()
    conn.write(b"first ")                                    # buffered: waits for writability
    DirectWriter(conn).write(b"second")
    assert reactor.writers == [conn]
    conn.doWrite()
    assert read_all(peer, 12) == b"first second"


def test_what_does_not_fit_in_the_socket_is_left_to_the_transport_in_order():
    conn, peer, reactor = connection()
    conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 8192                          # 2 MiB: far more than the send buffer
    DirectWriter(conn).write(data)
    DirectWriter(conn).write(b"tail")
    assert reactor.writers == [conn]                         # the rest waits for writability
    received = b""
    for _ in range(100_000):
        if len(received) >= len(data) + 4:
            break
        conn.doWrite()
        received += peer.recv(1 << 20)
    assert received == data + b"tail"


def test_nothing_is_sent_around_tls():
    conn, peer, reactor = connection()
    directlyProvides(conn, ISSLTransport)
    DirectWriter(conn).write(b"secret")
    assert conn._tempDataBuffer == [b"secret"]               # left to the TLS layer's transport.write
