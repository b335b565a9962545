"""COMPRESS=DEFLATE (RFC 4978) byte by byte: the client side is zlib in the test, as a phone's would be."""
from __future__ import annotations

import zlib

from tests.unit.imap.harness import messages, tagged


class Client:
    """The client half of a DEFLATE session: raw deflate out, raw inflate in (RFC 4978 4)."""

    def __init__(self, session):
        self.session = session
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)

    def pack(self, data: bytes) -> bytes:
        return self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)

    def send(self, data: bytes) -> bytes:
        """Send `data` compressed; return the server's answer inflated."""
        return self.inflater.decompress(self.session.send(self.pack(data)))

    def cmd(self, line: bytes) -> bytes:
        return self.send(line + b"\r\n")


def compressed(session) -> Client:
    assert session.cmd(b"z COMPRESS DEFLATE") == b"z OK DEFLATE active\r\n"
    return Client(session)


def test_commands_and_replies_are_deflated_after_the_ok(selected):
    client = compressed(selected)
    raw = selected.send(client.pack(b"f FETCH 1:2 (FLAGS BODY[])\r\n"))
    assert b"FETCH" not in raw                          # on the wire it is deflate
    reply = client.inflater.decompress(raw)
    assert reply.count(b" FETCH (") == 2 and messages(2)[1] in reply
    assert tagged(reply, b"f") == b"f OK FETCH completed"
    assert client.cmd(b"n NOOP") == b"n OK NOOP completed\r\n"


def test_every_reply_is_flushed_whole(selected):
    """A reply must be readable at once: a sync flush after each write, never held back by the deflater."""
    client = compressed(selected)
    for n in range(5):
        assert client.cmd(b"n%d NOOP" % n) == b"n%d OK NOOP completed\r\n" % n


def test_second_compress_is_compressionactive(authed):
    client = compressed(authed)
    assert client.cmd(b"y COMPRESS DEFLATE") == b"y NO [COMPRESSIONACTIVE] Compression is already active\r\n"
    assert client.cmd(b"n NOOP") == b"n OK NOOP completed\r\n"


def test_unknown_mechanism_is_bad_and_nothing_changes(authed):
    assert authed.cmd(b"z COMPRESS LZ4") == b"z BAD Unknown compression mechanism\r\n"
    assert authed.cmd(b"z COMPRESS") .startswith(b"z BAD")
    assert authed.alive


def test_compress_before_login_is_refused(fresh):
    assert fresh.cmd(b"z COMPRESS DEFLATE") == b"z BAD Unsupported command\r\n"
    assert fresh.alive


def test_commands_pipelined_right_after_compress_are_read_compressed(authed):
    client = Client(authed)
    raw = authed.send(b"z COMPRESS DEFLATE\r\n" + client.pack(b"n NOOP\r\nl LIST \"\" INBOX\r\n"))
    plain, _, rest = raw.partition(b"\r\n")
    assert plain == b"z OK DEFLATE active"
    reply = client.inflater.decompress(rest)
    assert reply.startswith(b"n OK NOOP completed\r\n") and tagged(reply, b"l") == b"l OK LIST completed"


def test_literal_in_compressed_session(authed):
    client = compressed(authed)
    message = b"Subject: compressed\r\n\r\nsent over deflate\r\n"
    reply = client.cmd(b"a APPEND INBOX {%d+}\r\n" % len(message) + message)
    assert tagged(reply, b"a").startswith(b"a OK [APPENDUID ")
    assert b"sent over deflate" in client.cmd(b"s SELECT INBOX") + client.cmd(b"f FETCH 3 BODY[TEXT]")


def test_input_waits_while_the_session_is_paused(authed):
    """A paused session (a command busy on the disk) inflates nothing: memory stays at one socket read."""
    client = compressed(authed)
    authed.protocol.pauseProducing()
    assert authed.send(client.pack(b"n NOOP\r\n" * 3)) == b""
    assert authed.protocol._compressed                  # kept compressed, not inflated into the line buffer
    authed.transport.clear()
    authed.protocol.resumeProducing()
    assert client.inflater.decompress(authed.transport.value()) == b"n OK NOOP completed\r\n" * 3


def test_a_small_bomb_ends_in_line_too_long_not_in_memory(authed):
    client = compressed(authed)
    bomb = client.pack(b"A" * (8 * 1024 * 1024))        # 8 MiB of one line, ~8 KiB compressed
    assert len(bomb) < 16 * 1024
    reply = client.inflater.decompress(authed.send(bomb))
    assert reply == b"* BYE Command line too long\r\n"
    assert authed.transport.disconnecting
    assert len(authed.protocol._buffer) <= 2 * 65536


def test_garbage_instead_of_deflate_closes_the_connection(authed):
    compressed(authed)
    authed.send(b"\xff\xff\xff\xff not deflate at all\r\n")
    assert authed.transport.disconnecting


class HeldPool:
    """A disk pool that runs its jobs only when told: a command waits on the disk meanwhile."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run(self):
        while self.jobs:
            on_result, f, args, kwargs = self.jobs.pop(0)
            on_result(True, f(*args, **kwargs))


def test_commands_pipelined_behind_a_slow_one_are_answered_when_it_ends(authed):
    """mbsync sends several UID FETCH at once: those inflated while the first waited must run after it."""
    client = compressed(authed)
    pool = authed.protocol.factory.pool = HeldPool()
    assert authed.send(client.pack(b"s SELECT INBOX\r\nn1 NOOP\r\nn2 NOOP\r\n")) == b""
    authed.transport.clear()
    for _ in range(5):                        # SELECT's jobs, each in turn
        pool.run()
    reply = client.inflater.decompress(authed.transport.value())
    assert tagged(reply, b"s").startswith(b"s OK")
    assert reply.endswith(b"n1 OK NOOP completed\r\nn2 OK NOOP completed\r\n")
