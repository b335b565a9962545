"""SELECT, EXAMINE, UNSELECT and CLOSE (RFC 3501 6.3.1-2, 6.4.2, RFC 3691)."""
from __future__ import annotations

import re

from tests.unit.imap.harness import talk, untagged


def test_select_reports_uids_and_fetch_uses_them(authed):
    protocol, transport = authed.protocol, authed.transport
    reply = talk(protocol, transport, b"s SELECT INBOX\r\n")
    for line in (b"* 2 EXISTS", b"* 2 RECENT", b"* OK [UIDNEXT 3]", b"s OK [READ-WRITE] SELECT completed"):
        assert line in reply
    reply = talk(protocol, transport, b"f UID FETCH 2:* (FLAGS RFC822.SIZE)\r\n")
    size = len(b"Subject: m1\r\nFrom: bob@example.test\r\n\r\nbody 1\r\n")
    assert reply == b"* 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.SIZE %d)\r\nf OK FETCH completed\r\n" % size


def test_select_sends_every_required_response_in_order(authed):
    reply = authed.cmd(b"s SELECT INBOX")
    reply = re.sub(rb"UIDVALIDITY \d+", b"UIDVALIDITY v", reply)
    assert reply == (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                     b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n"
                     b"* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1] First unseen\r\n"
                     b"* OK [UIDVALIDITY v] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\n"
                     b"s OK [READ-WRITE] SELECT completed\r\n")


def test_recent_goes_to_one_session_only(authed, reactor, tmp_path):
    from tests.unit.imap.harness import Session
    authed.select()
    other = Session(reactor, tmp_path, implicit=True).login()
    assert b"* 0 RECENT" in other.select()


def test_examine_is_read_only_and_claims_no_recent(authed):
    reply = authed.cmd(b"e EXAMINE INBOX")
    assert b"* OK [PERMANENTFLAGS ()] Flags permitted" in reply
    assert reply.endswith(b"e OK [READ-ONLY] EXAMINE completed\r\n")
    assert b"* 2 RECENT" in authed.cmd(b"s SELECT INBOX")


def test_empty_folder_has_no_unseen_line(authed):
    reply = authed.cmd(b"s SELECT Drafts")
    assert b"* 0 EXISTS" in reply and b"UNSEEN" not in reply


def test_failed_select_leaves_no_folder_selected(selected):
    assert selected.cmd(b"s SELECT Nope") == b"s NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert selected.cmd(b"f FETCH 1 FLAGS") == b"f BAD Unsupported command\r\n"
    assert selected.alive


def test_select_another_folder_switches(selected):
    assert b"* 0 EXISTS" in selected.cmd(b"s SELECT Trash")
    assert selected.cmd(b"f FETCH 1 FLAGS") == b"f BAD Invalid message sequence number\r\n"


def test_unselect_keeps_deleted_messages(selected):
    selected.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert selected.cmd(b"u UNSELECT") == b"u OK UNSELECT completed\r\n"
    assert selected.cmd(b"f FETCH 1 FLAGS") == b"f BAD Unsupported command\r\n"
    assert b"* 2 EXISTS" in selected.select()


def test_close_expunges_silently(selected):
    selected.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert selected.cmd(b"c CLOSE") == b"c OK UNSELECT completed\r\n"       # no EXPUNGE responses
    assert b"* 1 EXISTS" in selected.select()


def test_close_after_examine_expunges_nothing(authed):
    authed.select()
    authed.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    authed.ok(b"e EXAMINE INBOX")
    assert authed.cmd(b"c CLOSE") == b"c OK UNSELECT completed\r\n"
    assert b"* 2 EXISTS" in authed.select()


def test_check_is_a_noop_in_the_selected_state(selected):
    assert selected.cmd(b"c CHECK") == b"c OK NOOP completed\r\n"
    assert untagged(selected.cmd(b"c2 CHECK")) == []
