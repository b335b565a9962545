"""SEARCH with CHARSET UTF-8 (RFC 3501 6.4.4): non-ASCII strings against decoded headers and bodies.

Headers are matched with their RFC 2047 encoded words decoded, bodies with their transfer encoding
and charset decoded, case-insensitively (Unicode case folding, as Dovecot's i;unicode-casemap).
Through imaplib over a real socket: imaplib sends the search string as a synchronising literal.
"""
from __future__ import annotations

import base64

import pytest

from tests.unit.imap.live import FORMATS, command, selected_inbox

GREETINGS = (b"Subject: =?UTF-8?B?" + base64.b64encode("Grüße aus Köln".encode()) + b"?=\r\n"
             b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.test>\r\n"
             b"To: alice@example.test\r\n\r\nplain ascii body\r\n")
LATIN = (b"Subject: =?ISO-8859-1?Q?Caf=E9?= menu\r\nFrom: bob@example.test\r\n"
         b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"Die Stra=DFe ist lang\r\n")
BASE64_BODY = (b"Subject: plain\r\nFrom: carol@example.test\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes("une façade naïve\n".encode()) +
               b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>\xc3\x9cn\xc3\xafc\xc3\xb6d\xc3\xa9</p>\r\n--b--\r\n")
RAW_UTF8 = "Subject: Ключ к успеху\r\nFrom: dave@example.test\r\n\r\nтело письма\r\n".encode()
MESSAGES = [GREETINGS, LATIN, BASE64_BODY, RAW_UTF8]


@pytest.fixture(scope="module", params=sorted(FORMATS))
def client(request, tmp_path_factory):
    """One mailbox per format for the whole module: searching changes nothing."""
    yield from selected_inbox(tmp_path_factory.mktemp("search"), request.param,
                              [(None, None, data) for data in MESSAGES])


def search(client, *criteria: str, text: str, charset: str = "UTF-8") -> list[int]:
    """UID SEARCH CHARSET x <criteria> {literal}: imaplib sends `text` as a synchronising literal."""
    client.literal = text.encode("utf-8")
    typ, data = client.uid("SEARCH", "CHARSET", charset, *criteria)
    assert typ == "OK", (typ, data)
    return [int(n) for n in data[0].split()]


@pytest.mark.parametrize("criteria, text, found", [
    (("SUBJECT",), "grüße", [1]),
    (("SUBJECT",), "KÖLN", [1]),                      # case folded beyond ASCII
    (("SUBJECT",), "GRÜSSE", [1]),                    # ß folds to ss, as i;unicode-casemap does
    (("FROM",), "jürgen müller", [1]),                # an encoded display name
    (("SUBJECT",), "café", [2]),                      # ISO-8859-1 encoded word
    (("BODY",), "straße", [2]),                       # quoted-printable Latin-1 body
    (("BODY",), "FAÇADE NAÏVE", [3]),                 # base64 UTF-8 part
    (("BODY",), "ünïcödé", [3]),                      # the HTML alternative is text too
    (("SUBJECT",), "ключ", [4]),                      # raw UTF-8 header (RFC 6532)
    (("TEXT",), "ПИСЬМА", [4]),
    (("TEXT",), "köln", [1]),                         # TEXT covers the header
    (("BODY",), "köln", []),                          # BODY does not
    (("OR", "SUBJECT", "nothing", "SUBJECT"), "café", [2]),
    (("NOT", "SUBJECT"), "café", [1, 3, 4]),
])
def test_non_ascii_search(client, criteria, text, found):
    assert search(client, *criteria, text=text) == found


def test_us_ascii_charset_is_accepted(client):
    assert search(client, "SUBJECT", text="plain", charset="US-ASCII") == [3]


def test_other_charsets_are_refused_with_the_list(client):
    lines = command(client, b"a SEARCH CHARSET KOI8-R SUBJECT x\r\n")
    assert lines == [b"a NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n"]
    assert command(client, b"b NOOP\r\n") == [b"b OK NOOP completed\r\n"]


def test_search_string_that_is_not_utf8_is_bad(client):
    lines = command(client, b"a SEARCH CHARSET UTF-8 SUBJECT {2+}\r\n\xff\xfe\r\n")
    assert lines[-1].startswith(b"a BAD")
    assert command(client, b"b NOOP\r\n") == [b"b OK NOOP completed\r\n"]


def test_quoted_utf8_without_charset_is_searched_as_utf8(client):
    lines = command(client, 'a UID SEARCH SUBJECT "köln"\r\n'.encode())
    assert lines == [b"* SEARCH 1\r\n", b"a OK SEARCH completed\r\n"]
