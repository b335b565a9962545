"""Properties of the bulk passes over every byte of a message: line ends (lineends.py), the DATA
scan (smtp/server.py find_end, unstuff) and the mbox From_ quoting (store/mbox.py).

Each fast form is checked against the plain definition it replaces (counts, a two-byte
replace, a MULTILINE regex), on any bytes and on bytes made of the awkward pieces: CR, LF,
dots, "From " at line starts.
"""
from __future__ import annotations

import re

from hypothesis import example, given, strategies as st

from appliance import lineends
from appliance.smtp.server import _END, find_end, unstuff
from appliance.store import mbox
from tests.unit.properties.strategies import any_bytes, examples
from tests.unit.test_smtp_server import Rig, codes

_pieces = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"x", b"From ", b">", b"\0", b"\r\n."]),
                   max_size=40).map(b"".join)
data = st.one_of(_pieces, any_bytes)


def _crlf_only_by_counting(raw: bytes) -> bool:
    lines = raw.count(b"\r\n")
    return raw.count(b"\r") == lines == raw.count(b"\n")


@given(data)
@example(b"\n\r")                       # as many CR as LF, but neither is a line end
@example(b"\r\r\n\n")
def test_crlf_only_is_the_counting_definition(raw):
    assert lineends.crlf_only(raw) == _crlf_only_by_counting(raw)


@given(data)
def test_normalised_makes_every_line_end_crlf_and_changes_nothing_else(raw):
    out = lineends.normalised(raw)
    assert out == re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    assert _crlf_only_by_counting(out)
    if _crlf_only_by_counting(raw):
        assert out is raw                  # the usual message: no copy


@given(data)
@example(b"a\rb\r\n")                   # a bare CR stays (only CRLF becomes LF)
def test_to_lf_is_the_crlf_replace(raw):
    assert lineends.to_lf(raw) == raw.replace(b"\r\n", b"\n")


# ---------------------------------------------------------------- the DATA scan

@given(data, st.booleans())
@example(b"x\r\n.\r", False)            # undecided: the end may follow in the next chunk
@example(b"\r\n..\r\n.\r\n", False)     # a stuffed line before the end
@example(b"\r\n.x\r\n", False)          # a dot-line that is not stuffed: later ones may be
def test_find_end_finds_the_first_end_and_notices_dot_lines_before_it(joined, dotted):
    end, now_dotted = find_end(joined, dotted)
    assert end == joined.find(_END)
    before = joined if end < 0 else joined[:end]
    if dotted:
        assert now_dotted
    # A dot-line wholly before the end (or, with no end, before the last four bytes that are
    # scanned again with the next chunk) is always noticed.
    decided = before if end >= 0 else before[:-4]
    for hit in re.finditer(rb"\r\n\.", joined):
        if hit.start() + len(_END) <= len(joined) and hit.start() < len(decided) and hit.start() != end:
            assert now_dotted


@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=10))
def test_unstuff_told_no_dot_lines_agrees_when_there_are_none(lines):
    body = b"".join(line + b"\r\n" for line in lines if not line.startswith(b"."))
    assert unstuff(body, dotted=False) == unstuff(body, dotted=True) == body


# ---------------------------------------------------------------- mbox quoting

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


@given(data)
@example(b"From x\nFrom y")
@example(b">>From \n\n>From")
def test_mbox_quoting_is_the_multiline_definition(raw):
    assert mbox.quote_from_lines(raw) == _FROM_LINE.sub(rb">\1", raw)


# ---------------------------------------------------------------- DATA cut at every position

_line_pieces = st.lists(st.sampled_from([b".", b"..", b"x", b"\r", b"\n", b"From ", b" ", b"\r\n."[1:]]), max_size=6)
_message_lines = st.lists(_line_pieces.map(b"".join).filter(lambda line: b"\r\n" not in line), max_size=6)


def _stuff(lines: list[bytes]) -> bytes:
    """What a client sends for these lines (RFC 5321 4.5.2): a dot doubled at a line's start, then the end."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def _transaction(rig: Rig, chunks: list[bytes]) -> bytes:
    """One MAIL/RCPT/DATA on the open session, DATA fed in `chunks`: the message the queue got."""
    assert codes(rig.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")) == \
        [b"250", b"250", b"354"]
    replies: list[bytes] = []
    for chunk in chunks:
        replies += rig.send(chunk)
    assert codes(replies) == [b"250", b"250"], replies      # the message, then the RSET after it
    return _QUEUE_ID.sub(b"id QUEUEID", rig.queue.items.pop()[1])


_QUEUE_ID = re.compile(rb"id \w+")


@examples(0.1)
@given(_message_lines, st.integers(min_value=0, max_value=1 << 16))
@example([b".", b"..", b"\r"], 0)
@example([b"x\r", b"\n.", b"."], 3)
def test_data_cut_anywhere_queues_the_same_message_as_sent_whole(lines, second):
    """Cut into two chunks at every position (and into three, the second cut anywhere after the
    first), the queued message is the one the uncut transfer queues: unstuffed, CRLF only."""
    wire = _stuff(lines) + b"RSET\r\n"
    rig = Rig()
    assert codes(rig.send(b"EHLO client.example.org\r\n")) == [b"250"]
    whole = _transaction(rig, [wire])
    body = lineends.normalised(b"".join(line + b"\r\n" for line in lines))
    assert whole.endswith(body) and whole.startswith(b"Received: ")
    assert _crlf_only_by_counting(whole)
    for cut in range(1, len(wire)):
        assert _transaction(rig, [wire[:cut], wire[cut:]]) == whole, cut
        other = cut + second % (len(wire) - cut)
        assert _transaction(rig, [wire[:cut], wire[cut:other], wire[other:]]) == whole, (cut, other)
