"""MIME sections and BODYSTRUCTURE of raw messages (appliance/mime.py, moved from test_mailbox.py)."""
from __future__ import annotations

import pytest

from appliance import mime


def test_mime_sections_and_bodystructure():
    raw = (b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=\"XyZ\"\r\n\r\n"
           b"preamble\r\n--XyZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
           b"--XyZ\r\nContent-Type: application/pdf; name=\"A B.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"QUJD\r\n--XyZ--\r\n")
    assert mime.section(raw, (1,), "") == b"hello"
    assert mime.section(raw, (2,), "MIME").startswith(b"Content-Type: application/pdf")
    assert mime.section(raw, (), "HEADER.FIELDS", [b"SUBJECT"]) == b"Subject: parts\r\n\r\n"
    structure = mime.bodystructure(mime.parse(raw))
    assert structure.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1')
    assert b'("NAME" "A B.pdf")' in structure and structure.endswith(b'"MIXED" ("BOUNDARY" "XyZ") NIL NIL NIL)')
    with pytest.raises(mime.SectionError):
        mime.section(raw, (3,), "")

