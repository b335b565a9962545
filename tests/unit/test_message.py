"""The one header parser: header block, unfolding, lookups and edits, over CRLF, bare LF and 8-bit text."""
from __future__ import annotations

import pytest

from appliance import message

FOLDED = (b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
          b"Subject: one\r\n two\r\n"
          b"TO: bob@example.test\r\n"
          b"to : carol@example.test\r\n"
          b"\r\n"
          b"Body: not a header\r\n")


@pytest.mark.parametrize("raw, head, rest", [
    (FOLDED, FOLDED[:FOLDED.index(b"\r\n\r\n") + 2], b"\r\nBody: not a header\r\n"),
    (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n", b"\nbody\n"),                       # bare LF
    (b"A: 1\nB: 2\n\r\nbody", b"A: 1\nB: 2\n", b"\r\nbody"),                       # mixed
    (b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n", b""),                              # no body, no empty line
    (b"A: 1", b"A: 1", b""),                                                       # no line end at all
    (b"A: 1\r\n\r\n", b"A: 1\r\n", b"\r\n"),                                       # empty body
    (b"Hello there\r\n\r\nA: 1\r\n", b"", b"Hello there\r\n\r\nA: 1\r\n"),         # body only
    (b"\r\nA: 1\r\n", b"", b"\r\nA: 1\r\n"),                                       # starts with the empty line
    (b" A: 1\r\n\r\nx", b"", b" A: 1\r\n\r\nx"),                                   # indented first line
    (b"", b"", b""),
    ("Sübject: ça\r\n\r\nx".encode(), "Sübject: ça\r\n".encode(), b"\r\nx"),     # 8-bit
])
def test_split(raw, head, rest):
    assert message.split(raw) == (head, rest)
    assert head + rest == raw


@pytest.mark.parametrize("raw, body", [
    (b"A: 1\r\n\r\nbody\r\n", b"body\r\n"),
    (b"A: 1\n\nbody\n", b"body\n"),
    (b"A: 1\r\n", b""),
    (b"just text\r\n", b"just text\r\n"),
])
def test_body(raw, body):
    assert message.body(raw) == body


def test_fields_keep_folding_and_join_back_to_the_header_block():
    found = message.fields(FOLDED)
    assert [name for name, _ in found] == [b"Received", b"Subject", b"TO", b"to"]
    assert found[1] == (b"Subject", b"Subject: one\r\n two\r\n")
    assert b"".join(text for _, text in found) == message.split(FOLDED)[0]


def test_a_line_without_a_colon_keeps_its_place_but_has_no_name():
    raw = b"A: 1\r\njunk line\r\nB: 2\r\n\r\n"
    assert message.fields(raw) == [(b"A", b"A: 1\r\n"), (b"", b"junk line\r\n"), (b"B", b"B: 2\r\n")]
    assert message.headers(raw) == [(b"A", b"1"), (b"B", b"2")]


@pytest.mark.parametrize("raw, name, first, every", [
    (FOLDED, "subject", b"one two", [b"one two"]),
    (FOLDED, b"SUBJECT", b"one two", [b"one two"]),
    (FOLDED, "to", b"bob@example.test", [b"bob@example.test", b"carol@example.test"]),
    (FOLDED, "received", b"from a\tby b; Mon, 1 Jan 2024 00:00:00 +0000",
     [b"from a\tby b; Mon, 1 Jan 2024 00:00:00 +0000"]),
    (FOLDED, "body", None, []),                                       # past the header block
    (FOLDED, "cc", None, []),
    (b"Subject: a\n  b\nX: y\n\n", "subject", b"a  b", [b"a  b"]),   # bare LF folding
    (b"Subject:\r\n", "subject", b"", [b""]),                        # empty value
    ("Subject: Grüße\r\n\r\n".encode(), "subject", "Grüße".encode(), ["Grüße".encode()]),
    (b"hello: world, this is the body\r\n", "hello", b"world, this is the body", [b"world, this is the body"]),
])
def test_get_and_get_all(raw, name, first, every):
    assert message.get(raw, name) == first
    assert message.get_all(raw, name) == every
    assert message.has(raw, name) is (first is not None)
    parsed = message.headers(raw)
    assert message.get(parsed, name) == first and message.get_all(parsed, name) == every


def test_headers_are_unfolded_in_order():
    assert message.headers(FOLDED) == [
        (b"Received", b"from a\tby b; Mon, 1 Jan 2024 00:00:00 +0000"), (b"Subject", b"one two"),
        (b"TO", b"bob@example.test"), (b"to", b"carol@example.test")]


@pytest.mark.parametrize("raw, expected", [
    (b"Subject: s\r\n\r\nbody\r\n", b"Date: d\r\nMessage-ID: <m>\r\nSubject: s\r\n\r\nbody\r\n"),
    (b"Subject: s\r\n", b"Date: d\r\nMessage-ID: <m>\r\nSubject: s\r\n"),
    (b"just a body\r\n", b"Date: d\r\nMessage-ID: <m>\r\n\r\njust a body\r\n"),   # the body stays a body
    (b"", b"Date: d\r\nMessage-ID: <m>\r\n\r\n"),
])
def test_prepend(raw, expected):
    assert message.prepend(raw, ("Date", "d"), (b"Message-ID", b"<m>")) == expected


def test_prepend_a_folded_field_and_nothing():
    raw = b"A: 1\r\n\r\nx"
    assert message.prepend(raw, ("Received", "from a\r\n\tby b")) == b"Received: from a\r\n\tby b\r\nA: 1\r\n\r\nx"
    assert message.prepend(raw) is raw


@pytest.mark.parametrize("raw, names, expected", [
    (b"To: a\r\nBcc: b,\r\n c\r\nSubject: s\r\n\r\nBcc: body\r\n", ("bcc",),
     b"To: a\r\nSubject: s\r\n\r\nBcc: body\r\n"),
    (b"To: a\nBCC: b\n\nx\n", ("Bcc",), b"To: a\n\nx\n"),
    (b"To: a\r\nCc: b\r\nBcc: c\r\n", ("cc", "bcc"), b"To: a\r\n"),
    (b"To: a\r\n\r\nx", ("bcc",), b"To: a\r\n\r\nx"),
    (b"Bcc: b\r\n\r\nx", ("bcc",), b"\r\nx"),
])
def test_remove(raw, names, expected):
    assert message.remove(raw, *names) == expected


def test_remove_returns_the_same_object_when_nothing_matches():
    raw = b"To: a\r\n\r\nx"
    assert message.remove(raw, "bcc") is raw


@pytest.mark.parametrize("raw, expected", [
    (b"A: 1\r\nSubject: old\r\n folded\r\nB: 2\r\nsubject: again\r\n\r\nx", b"A: 1\r\nSubject: new\r\nB: 2\r\n\r\nx"),
    (b"A: 1\r\n\r\nx", b"Subject: new\r\nA: 1\r\n\r\nx"),
    (b"body only", b"Subject: new\r\n\r\nbody only"),
])
def test_replace(raw, expected):
    assert message.replace(raw, "Subject", "new") == expected


def test_rewrite_changes_only_the_named_fields_and_keeps_folding():
    raw = b"From: a@x\r\n\tb@x\r\nTo: c@x\r\n\r\nFrom: d@x\r\n"
    out = message.rewrite(raw, ["from"], lambda text: text.replace(b"@x", b"@y"))
    assert out == b"From: a@y\r\n\tb@y\r\nTo: c@x\r\n\r\nFrom: d@x\r\n"
    assert message.rewrite(raw, ["reply-to"], lambda text: b"") is raw


def test_eight_bit_bytes_pass_through_edits_untouched():
    raw = b"Subject: \xff\xfe caf\xc3\xa9\r\nFrom: \xe9@x\r\n\r\n\x80body"
    assert message.remove(raw, "x-none") is raw
    assert message.remove(raw, "from") == b"Subject: \xff\xfe caf\xc3\xa9\r\n\r\n\x80body"
    assert message.get(raw, "subject") == b"\xff\xfe caf\xc3\xa9"


def test_removing_the_top_field_never_turns_the_other_fields_into_body():
    """A colon-less line below a removed Bcc must not become the first line (found by the properties)."""
    raw = b"Bcc: secret@example.test\r\nnot a field\r\nTo: b@example.test\r\n\r\nbody\r\n"
    cleaned = message.remove(raw, "Bcc")
    assert cleaned == b"To: b@example.test\r\n\r\nbody\r\n"
    assert message.get(cleaned, "To") == b"b@example.test" and b"secret" not in cleaned


def test_remove_matching_drops_only_the_fields_the_predicate_accepts():
    raw = (b"Authentication-Results: mail.example.test;\r\n\tspf=pass\r\nTo: a\r\n"
           b"authentication-results: other.example; dkim=pass\r\n\r\nAuthentication-Results: body\r\n")
    out = message.remove_matching(raw, "Authentication-Results", lambda value: value.startswith(b"mail."))
    assert out == (b"To: a\r\nauthentication-results: other.example; dkim=pass\r\n\r\n"
                   b"Authentication-Results: body\r\n")
    assert message.remove_matching(raw, "Authentication-Results", lambda value: False) is raw
    assert message.remove_matching(raw, "To", lambda value: value == b"a").count(b"To: a") == 0
