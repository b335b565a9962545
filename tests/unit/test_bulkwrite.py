"""bulkwrite.PieceWriter over a real Twisted tcp.Connection on a real socket pair: the octets arrive
whole and in order whether the socket takes everything at once or fills up, and behind what was
written through the transport before."""
from __future__ import annotations

import socket

from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactor

from appliance.bulkwrite import PieceWriter


class _Reactor(MemoryReactor):
    """Records which descriptors want to write, as epoll would be asked to."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set = set()

    def addWriter(self, writer) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer) -> None:
        self.writers.discard(writer)

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


def _connection(sndbuf: int = 0) -> tuple[tcp.Connection, socket.socket, _Reactor]:
    ours, peer = socket.socketpair()
    if sndbuf:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    ours.setblocking(False)
    reactor = _Reactor()
    conn = tcp.Connection(ours, protocol.Protocol(), reactor)
    conn.connected = True
    return conn, peer, reactor


def _receive_all(conn, peer: socket.socket, reactor: _Reactor, size: int, writer: PieceWriter) -> bytes:
    """Read from the peer, letting the 'reactor' run doWrite whenever the connection asked to write."""
    peer.setblocking(False)
    got = bytearray()
    for _ in range(100_000):
        if len(got) >= size:
            break
        try:
            got += peer.recv(1 << 16)
        except BlockingIOError:
            pass
        if conn in reactor.writers:
            conn.doWrite()
    return bytes(got)


def _pieces(count: int) -> list[bytes]:
    """Pieces of many sizes, one of them (the 8th) far bigger than the socket and the hand-over size."""
    sizes = [5000 + 997 * n if n != 7 else 700_000 for n in range(count)]
    return [b"* %d FETCH (BODY[] {%d}\r\n" % (n, size) + bytes([65 + n % 26]) * size for n, size in enumerate(sizes)]


def test_everything_fits_at_once():
    conn, peer, reactor = _connection()
    writer = PieceWriter(conn)
    writer.start()
    pieces = [b"a" * 10, b"b" * 3000, b"c"]
    writer.write(pieces)
    assert writer.drained().called and not reactor.writers        # sent at once, nothing left to Twisted
    assert peer.recv(10000) == b"".join(pieces)
    writer.stop()


def test_a_full_socket_hands_over_to_twisted_and_order_holds():
    conn, peer, reactor = _connection(sndbuf=4096)
    conn.write(b"* OK before\r\n")                 # already in Twisted's buffer: must arrive first
    writer = PieceWriter(conn)
    writer.start()
    pieces = _pieces(40)
    expected = b"* OK before\r\n" + b"".join(pieces)
    writer.write(pieces[:20])
    done = writer.drained()
    assert not done.called                         # far more than the socket holds
    got = _receive_all(conn, peer, reactor, len(expected) // 2, writer)
    writer.write(pieces[20:])
    got += _receive_all(conn, peer, reactor, len(expected) - len(got), writer)
    assert got == expected and done.called and writer.drained().called
    writer.stop()
    conn.write(b"f OK FETCH completed\r\n")        # after the writer: behind every piece
    assert _receive_all(conn, peer, reactor, 22, writer) == b"f OK FETCH completed\r\n"


def test_a_lost_connection_drops_the_rest_and_wakes_the_waiter():
    conn, peer, reactor = _connection(sndbuf=4096)
    writer = PieceWriter(conn)
    writer.start()
    writer.write(_pieces(30))
    done = writer.drained()
    assert not done.called
    writer.stopProducing()                         # what Twisted calls when the connection is lost
    assert done.called and writer.stopped
    writer.write([b"more"])
    assert writer.drained().called


def test_only_plain_tcp_qualifies():
    """Plain TCP, or connlimit's pass-through wrapper around it; never TLS, never COMPRESS (whose
    deflating wrapper forwards `.transport` and every other look-up to the layer below)."""
    from twisted.internet.testing import StringTransport
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    from appliance.imap.compress import DeflatingTransport
    assert PieceWriter.over(StringTransport()) is None
    conn, _, _ = _connection()
    wrapper = ProtocolWrapper(WrappingFactory(protocol.Factory()), protocol.Protocol())
    wrapper.transport = conn
    assert isinstance(PieceWriter.over(conn), PieceWriter) and isinstance(PieceWriter.over(wrapper), PieceWriter)
    assert PieceWriter.over(DeflatingTransport(wrapper)) is None
    assert PieceWriter.over(DeflatingTransport(conn)) is None
    conn.TLS = True
    assert PieceWriter.over(conn) is None and PieceWriter.over(wrapper) is None
