"""Properties of the IMAP argument parsers (imap/parse.py) and sequence sets (imap/view.py).

parse_set raises SequenceError only and reads back every set it could be given; parse_date
answers a time or None; mailbox_name answers a name or MailboxError; a view resolves a parsed
set to exactly the messages the set names (RFC 3501 9: seq-range and uid-range), or SequenceError.
"""
from __future__ import annotations

import calendar

from hypothesis import example, given, strategies as st

from appliance.imap.backend import MailboxError, Snapshot
from appliance.imap.parse import mailbox_name, nonsync_literal_size, parse_date, quote_name
from appliance.imap.view import MAX_NUMBER, SequenceError, View, parse_set
from tests.unit.properties.strategies import any_bytes

_number = st.one_of(st.integers(1, 20), st.integers(1, MAX_NUMBER), st.none())
_ranges = st.lists(st.tuples(_number, _number), min_size=1, max_size=6)
_set_text = st.lists(st.sampled_from([b"1", b"*", b":", b",", b"0", b"9", b"4294967295", b"4294967296", b"-", b" "]),
                     max_size=12).map(b"".join)


def _text(ranges) -> bytes:
    def one(v):
        return b"*" if v is None else b"%d" % v
    return b",".join(one(a) if a == b else one(a) + b":" + one(b) for a, b in ranges)


@given(st.one_of(any_bytes, _set_text))
@example(b"1:" + b"9" * 70000)
def test_parse_set_gives_ranges_or_sequence_error(text):
    try:
        ranges = parse_set(text)
    except SequenceError:
        return
    assert ranges
    for low, high in ranges:
        for value in (low, high):
            assert value is None or 1 <= value <= MAX_NUMBER


@given(_ranges)
def test_parse_set_reads_back_what_a_client_wrote(ranges):
    assert parse_set(_text(ranges)) == ranges


@given(st.one_of(any_bytes, st.builds(
    lambda d, m, y, h, mi, s, z: b'%s-%s-%s %s:%s:%s %s' % (d, m, y, h, mi, s, z),
    st.sampled_from([b"1", b"01", b"31", b"32", b"0", b" 1", b"x"]),
    st.sampled_from([b"Jan", b"feb", b"DEC", b"Foo", b""]),
    st.sampled_from([b"2024", b"1969", b"0", b"99999", b"-1"]),
    st.sampled_from([b"00", b"23", b"24", b"99"]), st.sampled_from([b"00", b"59", b"60"]),
    st.sampled_from([b"00", b"60", b"61"]), st.sampled_from([b"+0000", b"-0130", b"+", b"", b"+99999"]))))
def test_parse_date_is_a_time_or_none(text):
    date = parse_date(text)
    assert date is None or isinstance(date, float)


@given(st.datetimes(timezones=st.just(None)).filter(lambda d: 1900 <= d.year))
def test_parse_date_reads_back_what_a_client_wrote(when):
    text = when.strftime("%d-%b-%Y %H:%M:%S +0130").encode()
    assert parse_date(text) == float(calendar.timegm(when.timetuple()) - 5400)


@given(any_bytes)
def test_mailbox_name_is_a_name_or_a_refusal(raw):
    try:
        name = mailbox_name(raw)
    except MailboxError:
        return
    assert isinstance(name, str)


# Control characters are left out: no such name can be created (store/account.py refuses them), and
# Twisted's imap4-utf-7 codec writes "\r" as "&-", which reads back as "&".
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30))
def test_mailbox_names_read_back_quoted(name):
    quoted = quote_name(name)
    assert quoted.startswith(b'"') and quoted.endswith(b'"')
    inner = quoted[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    assert mailbox_name(inner) == ("INBOX" if name.upper() == "INBOX" else name)


@given(any_bytes)
def test_nonsync_literal_size_is_a_size_or_none(line):
    size = nonsync_literal_size(line)
    assert size is None or size >= 0


@given(st.lists(st.integers(1, 60), unique=True, max_size=12), _ranges, st.booleans())
def test_a_view_resolves_exactly_the_messages_a_set_names(uids, ranges, by_uid):
    uids.sort()
    view = View(Snapshot.build(1, (uids[-1] + 1) if uids else 1, [(u, frozenset()) for u in uids]),
                frozenset(), readonly=False)
    star = (uids[-1] if uids else 0) if by_uid else len(uids)

    def named(number: int) -> bool:
        for item in ranges:
            low, high = (star if v is None else v for v in item)
            if min(low, high) <= number <= max(low, high):
                return True
        return False

    try:
        picked = view.resolve(ranges, by_uid)
    except SequenceError:
        assert not by_uid
        return
    assert [seq for seq, _ in picked] == sorted({seq for seq, _ in picked})
    assert all(uids[seq - 1] == uid for seq, uid in picked)
    expected = [(n + 1, uid) for n, uid in enumerate(uids) if named(uid if by_uid else n + 1)]
    assert picked == expected
