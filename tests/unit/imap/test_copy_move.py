"""COPY, MOVE and their UID forms (RFC 3501 6.4.7, RFC 6851, RFC 4315 COPYUID)."""
from __future__ import annotations

import re

from tests.unit.imap.harness import untagged


def validity(session, name: bytes) -> int:
    reply = session.cmd(b"v STATUS " + name + b" (UIDVALIDITY)")
    return int(re.search(rb"UIDVALIDITY (\d+)", reply).group(1))


def test_copy_answers_copyuid_and_keeps_flags(selected):
    selected.ok(b"st STORE 2 +FLAGS.SILENT (\\Flagged)")
    trash = validity(selected, b"Trash")
    assert selected.cmd(b"c COPY 1:2 Trash") == b"c OK [COPYUID %d 1:2 1:2] COPY completed\r\n" % trash
    assert b"* 2 EXISTS" in selected.cmd(b"s SELECT Trash")
    # The copy is \Recent for the first session to select Trash (RFC 3501 6.4.7)
    assert b"* 2 FETCH (FLAGS (\\Flagged \\Recent))" in selected.cmd(b"f FETCH 2 FLAGS")


def test_uid_copy_of_nothing_is_ok_without_copyuid(selected):
    assert selected.cmd(b"c UID COPY 99 Trash") == b"c OK COPY completed\r\n"


def test_copy_to_a_missing_folder_says_trycreate(selected):
    assert selected.cmd(b"c COPY 1 Nope") == b"c NO [TRYCREATE] Mailbox does not exist\r\n"
    assert selected.alive


def test_copy_to_the_same_folder_reports_exists(selected):
    reply = selected.cmd(b"c COPY 1 INBOX")
    assert b"* 3 EXISTS" in reply and reply.endswith(b"] COPY completed\r\n")


def test_move_sends_copyuid_then_expunge(selected):
    junk = validity(selected, b"Junk")
    assert selected.cmd(b"m MOVE 2 Junk") == \
        b"* OK [COPYUID %d 2 1]\r\n* 2 EXPUNGE\r\nm OK MOVE completed\r\n" % junk
    assert selected.cmd(b"s SEARCH ALL") == b"* SEARCH 1\r\ns OK SEARCH completed\r\n"


def test_uid_move_drops_deleted_in_the_copy(selected):
    selected.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted \\Seen)")
    reply = selected.cmd(b"m UID MOVE 1 Trash")
    assert untagged(reply)[1:] == [b"* 1 EXPUNGE"] and reply.endswith(b"m OK MOVE completed\r\n")
    selected.select(b"Trash")
    assert selected.cmd(b"f FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"


def test_move_out_of_a_read_only_folder_is_refused_but_copy_is_not(authed):
    authed.ok(b"e EXAMINE INBOX")
    assert authed.cmd(b"m MOVE 1 Trash") == b"m NO [READ-ONLY] Mailbox is read-only\r\n"
    assert authed.cmd(b"c COPY 1 Trash").startswith(b"c OK [COPYUID ")


def test_copy_with_a_bad_set_is_bad(selected):
    assert selected.cmd(b"c COPY 7 Trash") == b"c BAD Invalid message sequence number\r\n"
    assert selected.alive
