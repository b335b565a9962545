"""Properties of the mbox splitter and quoting (store/mbox.py).

Entries our writer makes for any message and any envelope sender read back as the message
(mboxrd round trip, LF form), in order, however many; any bytes at all split without error
into entries that tile the file.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance import mime
from appliance.store import mbox
from tests.unit.properties.strategies import any_bytes

_line = st.one_of(st.sampled_from([b"From x", b">From x", b">>From ", b"From", b"", b"from x", b" From x", b"From \r"]),
                  st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")))
bodies = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda lines, eol, last: eol.join(lines) + last, st.lists(_line, max_size=8),
              st.sampled_from([b"\n", b"\r\n"]), st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"])))
senders = st.one_of(st.text(max_size=20), st.sampled_from(["", "a@b", "MAILER-DAEMON", "a b\nFrom x", "\u2028"]))


def _expected(message: bytes) -> bytes:
    lf = message.replace(b"\r\n", b"\n")
    return lf + b"\n" if lf and not lf.endswith(b"\n") else lf


@given(st.lists(st.tuples(bodies, senders), max_size=5), st.floats(0, 4e9))
@example([(b"\n", "a"), (b"From x\n", "b")], 0.0)
def test_what_the_writer_wrote_reads_back_identical(items, now):
    data = b"".join(mbox.entry(message, sender, now) for message, sender in items)
    entries = mbox.split(data)
    assert len(entries) == len(items)
    for (start, begin, end), (message, _) in zip(entries, items):
        stored = data[begin:end]
        assert mbox.message_of(stored) == _expected(message)
        assert mbox.wire_size_of(stored) == len(mime.crlf(mbox.message_of(stored)))
        assert data[start:begin].startswith(b"From ") and data[start:begin].count(b"\n") == 1


@given(st.one_of(any_bytes, st.lists(st.sampled_from([b"From a\n", b"\n", b"x\n", b">From b\n", b"From "]),
                                      max_size=12).map(b"".join)))
def test_any_bytes_split_into_entries_that_tile_the_file(data):
    entries = mbox.split(data)
    previous_end = 0 if data.startswith(b"From ") else None
    for start, begin, end in entries:
        assert start <= begin <= end <= len(data)
        assert data[start:].startswith(b"From ")
        if previous_end is not None:
            assert start == previous_end
        previous_end = end
        stored = data[begin:end]
        assert mbox.wire_size_of(stored) == len(mime.crlf(mbox.message_of(stored)))
        assert isinstance(mbox._from_line_date(data[start:begin]), float)
    if entries:
        assert entries[-1][2] == len(data)
