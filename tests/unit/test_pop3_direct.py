"""POP3 answers sent at once (issue 14): one sendmsg() of a RETR answer's pieces on plain TCP, in order.

A real socket pair under a real tcp.Connection (tests/unit/test_smtp_replies_batched.py's rig):
what the peer receives is compared octet for octet, including answers bigger than the socket's
send buffer, answers queued behind unsent bytes, and the TLS case where nothing may bypass
the transport.
"""
from __future__ import annotations

import socket

from hypothesis import given, strategies as st
from twisted.internet.interfaces import ISSLTransport
from zope.interface import directlyProvides

from appliance.transport import DirectWriter, unsent
from tests.unit.test_smtp_replies_batched import connection, read_all


def drain(conn, peer: socket.socket, size: int) -> bytes:
    """Let the transport write what it holds while the peer reads, until `size` octets arrived."""
    received = b""
    for _ in range(100_000):
        if len(received) >= size:
            break
        if conn.reactor.writers:
            conn.doWrite()
        received += peer.recv(1 << 20)
    return received


def test_an_answer_in_pieces_goes_out_at_once_without_epoll_registration():
    conn, peer, reactor = connection()
    DirectWriter(conn).writeSequence([b"+OK 4 octets\r\n", b"hi\r\n", b".\r\n"])
    assert read_all(peer, 21) == b"+OK 4 octets\r\nhi\r\n.\r\n"
    assert reactor.writers == [] and not conn._tempDataBuffer


def test_an_answer_bigger_than_the_send_buffer_arrives_whole_and_before_the_next():
    conn, peer, reactor = connection()
    conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    body = bytes(range(256)) * 8192                          # 2 MiB: far more than the send buffer
    writer = DirectWriter(conn)
    writer.writeSequence([b"+OK big\r\n", body, b".\r\n"])
    assert reactor.writers == [conn]                         # the rest waits for writability
    writer.writeSequence([b"+OK next\r\n", b"x\r\n", b".\r\n"])   # behind unsent bytes: queued, not sent
    expected = b"+OK big\r\n" + body + b".\r\n" + b"+OK next\r\nx\r\n.\r\n"
    assert drain(conn, peer, len(expected)) == expected


def test_nothing_bypasses_tls():
    conn, peer, reactor = connection()
    directlyProvides(conn, ISSLTransport)
    DirectWriter(conn).writeSequence([b"+OK 3\r\n", b"abc", b"\r\n.\r\n"])
    assert conn._tempDataBuffer == [b"+OK 3\r\n", b"abc", b"\r\n.\r\n"]


def test_nothing_bypasses_a_connection_that_started_tls():
    """STLS: the tcp.Connection itself encrypts from then on (its TLS flag)."""
    conn, peer, reactor = connection()
    writer = DirectWriter(conn)                               # made at connect time, before STLS
    conn.TLS = True
    conn.protocol = TLSLayer()                               # what startTLS puts between
    writer.writeSequence([b"+OK 3\r\n", b"abc", b"\r\n.\r\n"])
    assert conn.protocol.plaintext == [b"+OK 3\r\n", b"abc", b"\r\n.\r\n"]
    assert conn._tempDataBuffer == [] and not readable(peer)


class TLSLayer:
    """Stands for the TLS protocol a started TLS puts below the connection: notes the plaintext."""

    def __init__(self) -> None:
        self.plaintext: list[bytes] = []

    def writeSequence(self, parts: list[bytes]) -> None:
        self.plaintext.extend(parts)


def readable(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        return bool(peer.recv(1))
    except BlockingIOError:
        return False


@given(st.lists(st.binary(max_size=40), max_size=6), st.data())
def test_unsent_is_exactly_what_follows_the_octets_sent(parts, data):
    whole = b"".join(parts)
    sent = data.draw(st.integers(0, len(whole)))
    rest = unsent(parts, sent)
    assert b"".join(rest) == whole[sent:]
    assert all(rest) or not whole[sent:] or b"" in parts     # no empty piece made up
