"""SEARCH and UID SEARCH (RFC 3501 6.4.4, 6.4.8): keys, charsets, refusals."""
from __future__ import annotations

import pytest


@pytest.fixture
def flagged(selected):
    selected.ok(b"s STORE 2 +FLAGS.SILENT (\\Deleted \\Seen)")
    selected.deliver(b"Subject: hello world\r\nFrom: carol@example.test\r\n\r\nthe text\r\n")
    selected.ok(b"n NOOP")
    return selected


@pytest.mark.parametrize("keys, found", [
    (b"ALL", b"1 2 3"),
    (b"DELETED", b"2"),
    (b"UNSEEN", b"1 3"),
    (b"NOT DELETED", b"1 3"),
    (b"OR DELETED SUBJECT hello", b"2 3"),
    (b"SUBJECT m1", b"2"),
    (b'SUBJECT "hello world"', b"3"),
    (b"FROM carol", b"3"),
    (b"BODY text", b"3"),
    (b"2:3 UNDELETED", b"3"),
    (b"UID 1,3", b"1 3"),
    (b"LARGER 50", b"3"),
    (b"RECENT", b"1 2 3"),
    (b"SUBJECT nothing", b""),
])
def test_search_keys(flagged, keys, found):
    expected = b"* SEARCH" + (b" " + found if found else b"")
    assert flagged.cmd(b"s SEARCH " + keys) == expected + b"\r\ns OK SEARCH completed\r\n"


def test_uid_search_answers_uids(flagged):
    flagged.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    flagged.ok(b"e EXPUNGE")
    assert flagged.cmd(b"s UID SEARCH ALL") == b"* SEARCH 3\r\ns OK SEARCH completed\r\n"
    assert flagged.cmd(b"s2 SEARCH ALL") == b"* SEARCH 1\r\ns2 OK SEARCH completed\r\n"


def test_charsets(selected):
    assert selected.cmd(b"s SEARCH CHARSET UTF-8 ALL").endswith(b"s OK SEARCH completed\r\n")
    assert selected.cmd(b"s2 SEARCH CHARSET US-ASCII ALL").endswith(b"s2 OK SEARCH completed\r\n")
    assert selected.cmd(b"s3 SEARCH CHARSET KOI8-R ALL") == \
        b"s3 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n"


@pytest.mark.parametrize("keys, reply", [
    (b"FROBBED", b"s BAD Unknown search key\r\n"),
    (b"(ALL", b"s BAD "),
    (b"SINCE yesterday", b"s BAD "),
])
def test_search_refusals(selected, keys, reply):
    assert selected.cmd(b"s SEARCH " + keys).startswith(reply)
    assert selected.alive
