"""STORE and UID STORE (RFC 3501 6.4.6): add, remove, replace, .SILENT, read-only folders."""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import other_session


def test_add_remove_replace(selected):
    assert selected.cmd(b"s STORE 2 +FLAGS (\\Flagged \\Seen)") == \
        b"* 2 FETCH (FLAGS (\\Flagged \\Seen \\Recent))\r\ns OK STORE completed\r\n"
    assert selected.cmd(b"s2 STORE 2 -FLAGS (\\Seen)") == \
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\ns2 OK STORE completed\r\n"
    assert selected.cmd(b"s3 STORE 1:2 FLAGS (\\Answered)") == \
        b"* 1 FETCH (FLAGS (\\Answered \\Recent))\r\n* 2 FETCH (FLAGS (\\Answered \\Recent))\r\ns3 OK STORE completed\r\n"


def test_silent_sends_no_fetch(selected):
    assert selected.cmd(b"s STORE 1 +FLAGS.SILENT (\\Seen)") == b"s OK STORE completed\r\n"
    assert selected.cmd(b"f FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"


def test_uid_store_reports_uids(selected):
    assert selected.cmd(b"s UID STORE 2:3 +FLAGS (\\Deleted)") == \
        b"* 2 FETCH (FLAGS (\\Deleted \\Recent) UID 2)\r\ns OK STORE completed\r\n"


def test_unknown_system_flags_and_recent_are_bad_as_in_dovecot(selected):
    for flag in (b"\\Bogus", b"\\Recent"):
        assert selected.cmd(b"s STORE 1 +FLAGS ($Label %b)" % flag).startswith(b"s BAD Invalid system flag")
    assert selected.cmd(b"s STORE 1 +FLAGS ($Label)") == \
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)\r\n" \
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)] Flags permitted\r\n" \
        b"* 1 FETCH (FLAGS ($Label \\Recent))\r\ns OK STORE completed\r\n"


def test_flags_persist_across_sessions(selected, reactor, tmp_path):
    selected.ok(b"s STORE 1 +FLAGS.SILENT (\\Flagged)")
    other = other_session(reactor, tmp_path)               # opened after the change: read from the store
    assert other.cmd(b"f FETCH 1 FLAGS") == b"* 1 FETCH (FLAGS (\\Flagged))\r\nf OK FETCH completed\r\n"


@pytest.mark.parametrize("command, reply", [
    (b"s STORE 1 +FOO (\\Seen)", b"s BAD Invalid STORE item\r\n"),
    (b"s STORE 5 +FLAGS (\\Seen)", b"s BAD Invalid message sequence number\r\n"),
    (b"s STORE 1 +FLAGS", b"s BAD Invalid arguments: "),
])
def test_store_refusals(selected, command, reply):
    assert selected.cmd(command).startswith(reply)
    assert selected.alive


def test_read_only_folder_refuses_store(authed):
    authed.ok(b"e EXAMINE INBOX")
    assert authed.cmd(b"s STORE 1 +FLAGS (\\Seen)") == b"s NO [READ-ONLY] Mailbox is read-only\r\n"
    assert authed.alive
