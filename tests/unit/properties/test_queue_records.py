"""Properties of the queue's segment records (queue.py encode_record / scan_segment).

Records written by encode_record scan back identical, in order. After any damage (flipped,
dropped, inserted octets, a cut tail), the scan never raises and never returns a record whose
CRC is wrong: whatever it yields is byte for byte a record that was written. (How far a scan
gets past damage is the queue's business; this only holds it to the bytes it returns.)
"""
from __future__ import annotations

import os
import tempfile
import tracemalloc
import zlib

from hypothesis import example, given, strategies as st

from tests.unit.properties.strategies import examples
from appliance.queue import HEADER, MAGIC, encode_record, record_head, record_head_size, scan_segment

_qids = st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=16)
# Envelopes are JSON objects (queue.py writes envelope.to_json()); the scanner's cheap check
# before a CRC relies on that opening brace.
_envelopes = st.binary(max_size=60).map(lambda tail: b"{" + tail)
_records = st.lists(st.tuples(_qids, _envelopes, st.binary(max_size=200)), max_size=6)


def _scan(data: bytes) -> list[tuple[str, bytes, bytes, bytes]]:
    """(qid, envelope, body, the record's bytes as found) for each record the scan yields."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "seg")
        with open(path, "wb") as f:
            f.write(data)
        found = []
        for qid, envelope, location in scan_segment(path, 7):
            assert location.segment == 7
            body = data[location.offset:location.offset + location.length]
            assert len(body) == location.length
            start = location.offset - len(envelope) - len(qid.encode("ascii")) - HEADER.size
            assert start >= 0
            found.append((qid, envelope, body, data[start:location.offset + location.length]))
        return found


def _crc_ok(record: bytes) -> bool:
    magic, id_len, env_len, msg_len, crc = HEADER.unpack(record[:HEADER.size])
    return len(record) == HEADER.size + id_len + env_len + msg_len and zlib.crc32(record[HEADER.size:]) == crc


@given(_records)
def test_records_scan_back_identical(records):
    data = b"".join(encode_record(*r) for r in records)
    assert [(q, e, b) for q, e, b, _ in _scan(data)] == [(q, e, b) for q, e, b in records]


_damage = st.lists(st.tuples(st.sampled_from(["flip", "drop", "insert", "cut", "zero"]), st.integers(0, 1 << 20),
                             st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)


def _damaged(data: bytes, damage) -> bytes:
    for kind, where, octets in damage:
        at = where % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ (octets[0] or 1)]) + data[at + 1:]
        elif kind == "drop":
            data = data[:at] + data[at + len(octets):]
        elif kind == "insert":
            data = data[:at] + octets + data[at:]
        elif kind == "cut":
            data = data[:at]
        elif kind == "zero":
            data = data[:at] + bytes(len(octets)) + data[at + len(octets):]
    return data


@given(_records, _damage)
@example([("A1", b"{}", b"x")], [("insert", 0, b"MAQ1")])
def test_damage_never_raises_and_never_yields_a_bad_record(records, damage):
    written = [encode_record(*r) for r in records]
    data = _damaged(b"".join(written), damage)
    for qid, envelope, body, record in _scan(data):
        assert _crc_ok(record)
        assert record in written                      # a CRC-valid forgery is one chance in 2**32


@given(st.binary(max_size=300))
def test_any_bytes_scan_without_error(data):
    for _, _, _, record in _scan(data):
        assert _crc_ok(record)


_lengths = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF)


@examples(0.25)
@given(*_lengths, st.binary(max_size=100))
@example(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, b"x")   # read 8 GiB at once: MemoryError under a memory limit
def test_a_damaged_length_never_makes_the_scan_allocate_more_than_the_file(id_len, env_len, msg_len, tail):
    data = HEADER.pack(MAGIC, id_len, env_len, msg_len, 0) + tail
    tracemalloc.start()
    try:
        _scan(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


@given(_records)
def test_the_head_size_is_known_before_the_crc(records):
    """The reactor places records by record_head_size before the writer thread makes the heads."""
    for qid, envelope_json, message in records:
        assert len(record_head(qid, envelope_json, message)) == record_head_size(qid, envelope_json)
