"""The shortcuts that make a first FETCH cheap give exactly the answers of the slow, general paths.

- `address_list` (a regex for everyday address headers) equals email.utils.getaddresses on any text;
- `head_block` (the header block of a stored message, converting only it) equals splitting the
  whole converted message;
- `envelope` (fields picked in one pass, the From address rendered once) equals the one-field-at-a-
  time rendering it replaced, written out below as the reference.
"""
from __future__ import annotations

import email.utils

from hypothesis import example, given, strategies as st

from appliance import message, mime
from tests.unit.properties.strategies import any_bytes
from tests.unit.properties.test_mime import entities

_atext = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-\xe9\xff", min_size=1, max_size=6)
_dot_atom = st.lists(_atext, min_size=1, max_size=3).map(".".join)
_blank = st.sampled_from(["", " ", "  ", "\t", " \t "])
_name = st.lists(_atext, max_size=3).map(" ".join)


@st.composite
def simple_addresses(draw) -> str:
    addr = draw(_dot_atom) + "@" + draw(_dot_atom)
    if draw(st.booleans()):
        return draw(_blank) + addr + draw(_blank)
    return draw(_blank) + draw(_name) + draw(_blank) + "<" + addr + ">" + draw(_blank)


_address_headers = st.one_of(
    st.lists(simple_addresses(), min_size=1, max_size=4).map(",".join),
    st.text(alphabet="ab .@<>,\"()\\:;[]\t\xe9", max_size=40),        # anything else: the fallback
    st.lists(st.one_of(simple_addresses(), st.sampled_from(['"Q, R" <q@r>', "(c) a@b", "g: a@b;", "a..b@c",
                                                            "<@r:a@b>", "a@[1.2.3.4]", "", " "])),
             min_size=1, max_size=3).map(",".join))


@given(_address_headers)
@example("Sender 5 <sender5@example.org>")
@example("John Q. Public <jqp@example.org>")
@example("a@b,")
def test_address_list_equals_getaddresses(text):
    assert mime.address_list(text) == email.utils.getaddresses([text])


def _stored(raw: bytes, lf: bool) -> bytes:
    return raw.replace(b"\r\n", b"\n") if lf else raw


@given(st.one_of(entities(), any_bytes), st.booleans())
@example(b"\r\n", False)
@example(b"\n\rX", False)
@example(b"A: b\r\r\n\r\nbody", False)
@example(b"A: b\n\r\nbody", False)
def test_head_block_equals_splitting_the_whole_message(raw, lf):
    stored = _stored(raw, lf)
    assert mime.head_block(stored) == mime.split_head(mime.crlf(stored))[0]


def _reference_envelope(head: bytes) -> bytes:
    """The rendering before the fast paths: each field looked up alone, every address list through getaddresses."""
    fields = message.headers(head)

    def get(name: bytes) -> bytes | None:
        return message.get(fields, name)

    def addresses(value: bytes | None) -> bytes:
        if value is None:
            return b"NIL"
        items = []
        for name, addr in email.utils.getaddresses([value.decode("latin-1")]):
            if not addr and not name:
                continue
            mailbox, _, host = addr.rpartition("@") if "@" in addr else (addr, "", "")
            parts = [name or None, None, mailbox or None, host or None]
            items.append(b"(" + b" ".join(mime.nstring(p.encode("latin-1") if p is not None else None)
                                          for p in parts) + b")")
        return b"(" + b"".join(items) + b")" if items else b"NIL"

    sender = get(b"from")
    return b"(" + b" ".join([
        mime.nstring(get(b"date")), mime.nstring(get(b"subject")), addresses(sender),
        addresses(get(b"sender") or sender), addresses(get(b"reply-to") or sender),
        addresses(get(b"to")), addresses(get(b"cc")), addresses(get(b"bcc")),
        mime.nstring(get(b"in-reply-to")), mime.nstring(get(b"message-id"))]) + b")"


_envelope_heads = st.lists(
    st.tuples(st.sampled_from([b"From", b"from", b"Sender", b"Reply-To", b"To", b"Cc", b"Bcc", b"Subject", b"Date",
                               b"Message-ID", b"In-Reply-To", b"X-Other"]),
              st.one_of(_address_headers.map(lambda t: t.encode("latin-1")), any_bytes.map(
                  lambda b: b.replace(b"\r", b" ").replace(b"\n", b" ")))),
    max_size=8).map(lambda fields: b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n")


@given(st.one_of(_envelope_heads, entities()))
@example(b"From: A <a@b>\r\nSender:\r\nReply-To: \r\n\r\n")
def test_envelope_equals_the_field_by_field_rendering(raw):
    head = mime.split_head(raw)[0]
    assert mime.envelope(head) == _reference_envelope(head)
