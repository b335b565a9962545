"""The IMAP session after COMPRESS DEFLATE, fed random bytes and random valid DEFLATE (tests/unit/imap/harness.py).

The inflater reads outside bytes: whatever arrives, the session never logs a caught failure,
and it either ends the connection (input that is not DEFLATE) or answers every complete command
line it inflated, compressed, with a tagged reply; afterwards a NOOP still works unless it closed.
"""
from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

from hypothesis import given, strategies as st

from tests.unit.imap.harness import Session, SyncReactor, messages
from tests.unit.properties.strategies import any_bytes, examples, no_logged_failures

_lines = st.lists(st.one_of(st.sampled_from([b"NOOP", b"SELECT INBOX", b"FETCH 1:* (FLAGS BODY[])", b"COMPRESS DEFLATE",
                                             b"GETQUOTAROOT INBOX", b'GETQUOTA ""', b"APPEND INBOX {3+}\r\nabc",
                                             b"SEARCH ALL", b"LOGOUT", b"", b"FETCH"]),
                            any_bytes.map(lambda b: b.replace(b"\r\n", b" "))), min_size=1, max_size=6)


def _compressed_session(folder: str):
    session = Session(SyncReactor(), Path(folder), implicit=True)
    for message in messages(2):
        session.deliver(message)
    session.login()
    assert session.cmd(b"z COMPRESS DEFLATE") == b"z OK DEFLATE active\r\n"
    return session


@examples(0.2)
@given(any_bytes)
def test_any_bytes_after_compress_never_break_the_server(data):
    with tempfile.TemporaryDirectory() as folder, no_logged_failures() as caught:
        session = _compressed_session(folder)
        session.send(data)
        assert caught == []


@examples(0.2)
@given(_lines, st.integers(1, 7))
def test_valid_deflate_of_any_commands_gets_compressed_answers(lines, cut):
    deflater, inflater = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)
    wire = b"".join(b"t%d %b\r\n" % (n, line) for n, line in enumerate(lines))
    packed = deflater.compress(wire) + deflater.flush(zlib.Z_SYNC_FLUSH)
    with tempfile.TemporaryDirectory() as folder, no_logged_failures() as caught:
        session = _compressed_session(folder)
        answer = b""
        for start in range(0, len(packed), cut):           # in awkward pieces, as TCP may deliver them
            answer += session.send(packed[start:start + cut])
        plain = inflater.decompress(answer)
        assert caught == []
        assert b"Internal error" not in plain
        if not session.transport.disconnecting:
            final = deflater.compress(b"zz NOOP\r\n") + deflater.flush(zlib.Z_SYNC_FLUSH)
            assert inflater.decompress(session.send(final)).endswith(b"zz OK NOOP completed\r\n")
