"""APPEND (RFC 3501 6.3.11, RFC 4315 APPENDUID, RFC 7888 LITERAL+)."""
from __future__ import annotations

import re

from tests.unit.imap.harness import talk

DRAFT = b"Subject: d\r\n\r\n"


def test_literal_plus_append(authed):
    reply = talk(authed.protocol, authed.transport, b"x APPEND Drafts (\\Draft) {14+}\r\nSubject: d\r\n\r\n\r\n")
    assert reply.startswith(b"x OK [APPENDUID ") and b"+ " not in reply


def test_synchronising_literal_waits_for_the_continuation(authed):
    assert authed.cmd(b"a APPEND Drafts {%d}" % len(DRAFT)) == b"+ Ready for literal data\r\n"
    reply = authed.send(DRAFT + b"\r\n")
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", reply)


def test_flags_and_date_are_kept(authed):
    authed.ok(b'a APPEND Drafts (\\Seen \\Flagged) "14-Jul-2024 10:00:00 +0200" {%d+}\r\n%b' % (len(DRAFT), DRAFT))
    authed.select(b"Drafts")
    reply = authed.cmd(b"f FETCH 1 (FLAGS INTERNALDATE)")
    # \Recent too: the first session to select the folder after the APPEND (RFC 3501 6.3.11)
    assert reply == b'* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent) INTERNALDATE "14-Jul-2024 08:00:00 +0000")\r\n' \
                    b"f OK FETCH completed\r\n"


def test_append_to_the_selected_folder_reports_exists(selected):
    reply = selected.send(b"a APPEND INBOX {%d+}\r\n%b\r\n" % (len(DRAFT), DRAFT))
    assert reply.startswith(b"* 3 EXISTS\r\n") and b"a OK [APPENDUID " in reply


def test_append_to_a_missing_folder_says_trycreate(authed):
    reply = authed.send(b"a APPEND Nope {%d+}\r\n%b\r\n" % (len(DRAFT), DRAFT))
    assert reply == b"a NO [TRYCREATE] Mailbox does not exist\r\n"
    assert authed.alive


def test_bad_date_is_bad_and_the_literal_is_skipped(authed):
    reply = authed.send(b'a APPEND Drafts "31-Foo-2024 10:00:00 +0000" {%d+}\r\n%b\r\n' % (len(DRAFT), DRAFT))
    assert reply == b"a BAD Invalid arguments: Invalid date-time\r\n"
    assert authed.alive


def test_message_over_the_size_limit_is_refused_before_reading(authed):
    authed.protocol.factory.max_message_size = 10
    assert authed.cmd(b"a APPEND Drafts {%d}" % len(DRAFT)) == b"a BAD Invalid arguments: Literal too large\r\n"
    assert authed.alive
