"""EXPUNGE and UID EXPUNGE (RFC 3501 6.4.3, RFC 4315 2.1)."""
from __future__ import annotations


def test_expunge_removes_deleted_highest_number_first(selected):
    selected.deliver(b"Subject: m2\r\n\r\nx\r\n")
    selected.ok(b"n NOOP")
    selected.ok(b"st STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert selected.cmd(b"e EXPUNGE") == b"* 2 EXPUNGE\r\n* 1 EXPUNGE\r\ne OK EXPUNGE completed\r\n"
    assert selected.cmd(b"f FETCH 1 UID") == b"* 1 FETCH (UID 3)\r\nf OK FETCH completed\r\n"


def test_expunge_with_nothing_deleted(selected):
    assert selected.cmd(b"e EXPUNGE") == b"e OK EXPUNGE completed\r\n"


def test_uid_expunge_removes_only_the_named_uids(selected):
    selected.ok(b"st STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert selected.cmd(b"e UID EXPUNGE 2") == b"* 2 EXPUNGE\r\ne OK EXPUNGE completed\r\n"
    assert selected.cmd(b"f FETCH 1 (UID FLAGS)") == \
        b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\nf OK FETCH completed\r\n"


def test_uid_expunge_syntax(selected):
    assert selected.cmd(b"e UID EXPUNGE 1 2") == b"e BAD Invalid arguments: Too many arguments\r\n"
    assert selected.cmd(b"e2 UID EXPUNGE x") == b"e2 BAD Invalid arguments: Invalid sequence set\r\n"
    assert selected.alive


def test_expunge_in_a_read_only_folder_is_refused(authed):
    authed.ok(b"e EXAMINE INBOX")
    assert authed.cmd(b"x EXPUNGE") == b"x NO [READ-ONLY] Mailbox is read-only\r\n"
    assert authed.cmd(b"x2 UID EXPUNGE 1") == b"x2 NO [READ-ONLY] Mailbox is read-only\r\n"


def test_expunge_by_another_session_reaches_this_one_at_noop(selected, other):
    other.ok(b"st STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert other.cmd(b"e EXPUNGE") == b"* 2 EXPUNGE\r\ne OK EXPUNGE completed\r\n"
    assert selected.cmd(b"n NOOP") == b"* 2 EXPUNGE\r\nn OK NOOP completed\r\n"
