"""Properties of appliance.mime: parse, BODYSTRUCTURE, ENVELOPE and sections on any message.

Nothing raises but SectionError (for a part the message does not have); BODYSTRUCTURE, BODY and
ENVELOPE are one well-formed IMAP value each (balanced parentheses, closed quotes, exact
literals); a generated multipart tree is found again, part by part, octet for octet.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance import mime
from appliance.mime import SectionError
from tests.unit.properties.imap_syntax import check_one_value
from tests.unit.properties.strategies import any_bytes, examples

_header_values = st.one_of(
    st.sampled_from([b"multipart/mixed; boundary=b1", b"multipart/alternative; boundary=\"b 2\"", b"message/rfc822",
                     b"multipart/digest; boundary=d", b"text/plain; charset=\"utf\\\"-8\"; format", b"text/",
                     b"/x", b"multipart/mixed", b"multipart/mixed; boundary=", b"image/png; name=\"a\r\n b\"",
                     b"text/plain; a=\"unterminated", b"=?utf-8?q?x?=", b"\"Bob\" <b@x>, c@y", b"<m@x>", b"",
                     b"attachment; filename=\"\xe9.txt\"", b"undisclosed-recipients:;", b"a@b, (comment) <c@d>",
                     b"\"\\\" <x@y>", b"group: a@b, c@d;"]),
    any_bytes.map(lambda b: b.replace(b"\r\n", b" ")))
_names = st.sampled_from([b"Content-Type", b"content-type", b"Content-Transfer-Encoding", b"Content-Disposition",
                          b"Content-ID", b"Content-Description", b"Content-MD5", b"From", b"To", b"Cc", b"Bcc",
                          b"Sender", b"Reply-To", b"Subject", b"Date", b"Message-ID", b"In-Reply-To", b" folded",
                          b"X-Junk", b"no colon"])
_heads = st.lists(st.tuples(_names, _header_values), max_size=6).map(
    lambda fields: b"".join(name + b": " + value + b"\r\n" for name, value in fields))


@st.composite
def entities(draw, depth: int = 0) -> bytes:
    """A MIME entity, sometimes well formed, sometimes cut or nested past MAX_DEPTH."""
    kind = draw(st.sampled_from(["leaf", "multipart", "message", "junk"] if depth < 20 else ["leaf"]))
    head = draw(_heads)
    if kind == "multipart":
        boundary = draw(st.sampled_from([b"b1", b"=_x", b"a b", b"--", b"b1b"]))
        children = draw(st.lists(entities(depth + 1), max_size=3))
        close = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--" + boundary + b"\r\n"]))
        body = draw(st.sampled_from([b"", b"preamble\r\n"])) + b"".join(
            b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children) + close
        head = b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n" + head
    elif kind == "message":
        head, body = b"Content-Type: message/rfc822\r\n" + head, draw(entities(depth + 1))
    elif kind == "junk":
        return draw(any_bytes)
    else:
        body = draw(st.binary(max_size=40))
    return head + draw(st.sampled_from([b"\r\n", b"", b"\n"])) + body


def _sections(root: mime.Part) -> list[tuple[int, ...]]:
    """Section numbers that exist in `root` and a few that do not."""
    found = [(1,), (2,), (1, 1), (99,), (0,), (1, 2, 3)]
    for number, child in enumerate(root.children, 1):
        found.append((number,))
        found += [(number, *n) for n in _sections(child.message or child)[:4]]
    return found


@given(st.one_of(entities(), any_bytes), st.integers(0, 30),
       st.sampled_from(["", "HEADER", "HEADER.FIELDS", "TEXT", "MIME"]), st.booleans())
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n", 0, "MIME", False)
@example(b"Content-Type: message/rfc822\r\n\r\n" * 40 + b"x", 5, "TEXT", False)
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" * 40, 5, "", False)
def test_any_message_parses_and_renders_as_imap(raw, pick, kind, negate):
    root = mime.parse(raw)
    check_one_value(mime.bodystructure(root))
    check_one_value(mime.bodystructure(root, extended=False))
    check_one_value(mime.envelope(root.head))
    sections = _sections(root)
    numbers = sections[pick % len(sections)] if pick else ()
    try:
        octets = mime.section(raw, numbers, kind, [b"Subject", b"content-type"], negate)
    except SectionError:
        return
    assert isinstance(octets, bytes)
    if kind in ("", "TEXT"):
        assert octets in raw                          # sections are served as stored, never re-encoded


@st.composite
def trees(draw, depth: int = 0):
    """(message bytes, its leaves' bodies in section order) for a well-formed multipart tree."""
    count = draw(st.integers(1, 3)) if depth < 3 else 0
    if not count:
        body = draw(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b" ")))
        return b"Content-Type: text/plain\r\n\r\n" + body, body
    boundary = b"=_b%d_" % depth
    children = [draw(trees(depth + 1)) for _ in range(count)]
    body = b"".join(b"--" + boundary + b"\r\n" + raw + b"\r\n" for raw, _ in children) + b"--" + boundary + b"--\r\n"
    return b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n" + body, [c for _, c in children]


def _leaves(shape, prefix=()):
    if isinstance(shape, bytes):
        yield prefix, shape
        return
    for number, child in enumerate(shape, 1):
        yield from _leaves(child, prefix + (number,))


@examples(0.5)
@given(trees())
def test_every_part_of_a_generated_tree_is_found_again(tree):
    raw, shape = tree
    for numbers, body in _leaves(shape):
        if numbers:
            assert mime.section(raw, numbers, "") == body
    check_one_value(mime.bodystructure(mime.parse(raw)))


@given(st.one_of(st.binary(max_size=200), st.text(max_size=50).map(lambda t: t.encode())))
def test_nstring_is_one_imap_value(value):
    rendered = mime.nstring(value)
    check_one_value(b"(" + rendered + b")")


@given(any_bytes)
def test_wire_size_is_the_size_of_the_wire_form(data):
    assert mime.wire_size(data) == len(mime.crlf(data)) or b"\r" in data
