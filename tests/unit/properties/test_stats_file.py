"""The counters file is read back at start: whatever bytes are there (a torn write, a disk error,
a hand edit), reading either gives counters within bounds or raises StatsFileError, never
anything else, and what was written reads back the same."""
from __future__ import annotations

import json

from hypothesis import given, strategies as st

from appliance import statsfile
from appliance.stats import DAY, MINUTE, EventCounters
from appliance.statsfile import StatsFileError
from tests.unit.properties.strategies import any_bytes

NOW = 1_800_000_000.0

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)
kinds = st.sampled_from(["received", "delivered", "relayed", "deferred", "bounced", "rejected", "failed-login"])
keys = st.tuples(kinds, st.text(max_size=40))
buckets = st.lists(st.tuples(st.integers(min_value=0, max_value=2**40),
                             st.dictionaries(keys, st.integers(min_value=1, max_value=2**40), max_size=5)),
                   max_size=8)
snapshots = st.fixed_dictionaries({"minute": buckets, "hour": buckets})


def read(data: bytes) -> None:
    """Decode, and restore into counters: the only outcomes are counters or StatsFileError."""
    try:
        snapshot, saved = statsfile.decode(data)
    except StatsFileError as e:
        assert str(e)
        return
    counters = EventCounters(lambda: NOW, max_labels=8)
    counters.restore(snapshot)
    assert all(len(labels) <= 8 for labels in counters._labels.values())
    assert len(counters._minutes.counts) == DAY // MINUTE


@given(any_bytes)
def test_any_bytes_read_or_are_refused(data):
    read(data)


@given(json_values)
def test_any_json_reads_or_is_refused(value):
    read(json.dumps(value).encode())


flat_buckets = st.lists(st.tuples(st.integers(min_value=-2, max_value=2**41),
                                  st.lists(st.integers(min_value=-2, max_value=6), max_size=8)).map(list), max_size=5)
key_lists = st.lists(st.lists(st.text(max_size=10), min_size=1, max_size=3), max_size=5)


@given(st.one_of(json_values, flat_buckets, key_lists), st.sampled_from(["minute", "hour", "keys", "saved", "format"]))
def test_a_counters_file_with_any_one_part_changed_reads_or_is_refused(value, part):
    document = {"format": statsfile.FORMAT, "saved": NOW, "keys": [["received", ""], ["rejected", "x"]],
                "minute": [[int(NOW // 60), [0, 1, 1, 2]]], "hour": [], part: value}
    read(json.dumps(document).encode())


@given(snapshots, st.floats(min_value=0, max_value=4e9))
def test_what_is_written_reads_back_the_same(snapshot, saved):
    got, when = statsfile.decode(statsfile.encode(snapshot, saved))
    assert when == saved
    assert got == {ring: [(n, dict(counts)) for n, counts in snapshot[ring]] for ring in ("minute", "hour")}


@given(snapshots, st.data())
def test_a_file_cut_anywhere_is_refused(snapshot, data):
    whole = statsfile.encode(snapshot, NOW)
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    try:
        statsfile.decode(whole[:cut])
    except StatsFileError:
        return
    raise AssertionError(f"a file cut at {cut} of {len(whole)} bytes was read")


def test_deep_nesting_and_huge_files_are_refused_not_crashed_on():
    for data in (b"[" * 200_000, b'{"a":' * 200_000, b" " * (statsfile.MAX_BYTES + 1)):
        try:
            statsfile.decode(data)
        except StatsFileError:
            continue
        raise AssertionError(f"{data[:20]!r}... was read")
