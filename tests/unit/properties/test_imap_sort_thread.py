"""Properties of SORT's base subjects and THREAD's trees (imap/sort.py, imap/thread.py) over any input.

Base subject extraction (RFC 5256 2.1) is idempotent: a base subject is its own base subject.
Threading never loses or repeats a message, whatever Message-IDs and References claim (loops,
duplicates, references to themselves); ENVELOPE reading never fails on damaged cache bytes.
"""
from __future__ import annotations

import re

from hypothesis import example, given, strategies as st

from appliance.imap import envelope
from appliance.imap.sort import base_subject
from appliance.imap.thread import Post, ordered_subject, references, render
from tests.unit.properties.strategies import any_bytes

_subject_pieces = st.lists(st.sampled_from(["Re:", "re", "RE :", "Fwd:", "fw:", "[fwd:", "]", "[", "(fwd)", " ",
                                            "\t", "[list]", "x", "Hello", "é", "ß", ":", "Re[2]:", "[a] "]),
                           max_size=12).map("".join)


@given(st.one_of(_subject_pieces, st.text(max_size=40)))
@example("[fwd: [fwd: x]]")
@example("[a] [b]")
def test_base_subject_is_idempotent(subject):
    base, _ = base_subject(subject)
    assert base_subject(base)[0] == base


_ids = st.sampled_from([None, b"<1@x>", b"<2@x>", b"<3@x>", b"<4@x>", b"junk", b""])
_refs = st.lists(st.sampled_from([b"<1@x>", b"<2@x>", b"<3@x>", b"<4@x>", b"<5@x>", b"<>", b"x"]),
                 max_size=5).map(b" ".join)
_posts = st.lists(st.tuples(_ids, st.one_of(st.none(), _refs), st.one_of(st.none(), _refs),
                            st.sampled_from([b"a", b"Re: a", b"b", b"", None]), st.integers(0, 5)), max_size=12)


def _numbers(text: bytes) -> list[int]:
    return sorted(int(n) for n in re.findall(rb"\d+", text))


@given(_posts)
def test_every_message_is_in_exactly_one_place(items):
    posts = [Post(n + 1, n + 1, float(date), subject, mid, refs, irt)
             for n, (mid, refs, irt, subject, date) in enumerate(items)]
    for trees in (references(posts), ordered_subject(posts)):
        text = render(trees)
        assert _numbers(text) == list(range(1, len(posts) + 1)), text
        assert text.count(b"(") == text.count(b")")


@given(any_bytes)
def test_envelope_reading_never_fails(data):
    parsed = envelope.safe(data)
    assert isinstance(parsed, envelope.Envelope)
    assert isinstance(envelope.decode_header(data), str)
