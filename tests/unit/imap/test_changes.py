"""Other sessions' changes reach a session at its next command, not only at NOOP (issue 15, defect 2).

RFC 3501 7.4.1: EXISTS and FETCH FLAGS may come with any command; EXPUNGE never during FETCH,
STORE or SEARCH, so until NOOP the expunged message keeps its number.
"""
from __future__ import annotations

from tests.unit.imap.harness import untagged


def test_store_does_not_swallow_another_sessions_flag_change(selected, other):
    other.ok(b"o STORE 2 +FLAGS.SILENT (\\Flagged)")
    reply = selected.cmd(b"s STORE 1 +FLAGS (\\Seen)")
    assert b"* 2 FETCH (FLAGS (\\Flagged \\Recent))" in untagged(reply)
    assert b"* 1 FETCH (FLAGS (\\Seen \\Recent))" in untagged(reply)
    assert selected.cmd(b"n NOOP") == b"n OK NOOP completed\r\n"          # told once, not again


def test_concurrent_additions_to_one_message_are_both_kept(selected, other):
    other.ok(b"o STORE 1 +FLAGS.SILENT (\\Flagged)")
    selected.ok(b"s STORE 1 +FLAGS.SILENT (\\Seen)")                       # computed under the lock
    assert b"FLAGS (\\Flagged \\Seen)" in other.cmd(b"f FETCH 1 FLAGS")


def test_fetch_reports_new_mail_and_flags_but_holds_the_expunge(selected, other):
    other.ok(b"o STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok(b"e EXPUNGE")
    other.ok(b"o STORE 1 +FLAGS.SILENT (\\Answered)")                    # the old message 2
    other.send(b"a APPEND INBOX {14+}\r\nSubject: d\r\n\r\n\r\n")
    reply = selected.cmd(b"f FETCH 2 (FLAGS)")
    assert b"EXPUNGE" not in reply
    assert b"* 3 EXISTS" in untagged(reply)                                 # 2 old (one gone) + 1 new
    assert b"* 2 FETCH (FLAGS (\\Answered \\Recent))" in untagged(reply)
    assert selected.cmd(b"n NOOP").startswith(b"* 1 EXPUNGE\r\n")
    assert selected.cmd(b"s SEARCH ALL") == b"* SEARCH 1 2\r\ns OK SEARCH completed\r\n"


def test_a_new_keyword_announces_flags_and_permanentflags_to_others(selected, other):
    other.ok(b"o STORE 1 +FLAGS.SILENT (Project)")
    reply = selected.cmd(b"n NOOP")
    assert untagged(reply)[:2] == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Project)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Project \\*)] Flags permitted"]
    assert b"* 1 FETCH (FLAGS (Project \\Recent))" in reply
    assert selected.cmd(b"s SEARCH KEYWORD project") == b"* SEARCH 1\r\ns OK SEARCH completed\r\n"


def test_idle_hears_another_session_at_once_without_a_poll(selected, other, reactor):
    selected.cmd(b"i IDLE")
    selected.transport.clear()
    other.ok(b"o STORE 2 +FLAGS.SILENT (\\Seen)")
    reactor.advance(0)                       # the folder's own notice: no poll interval needed
    assert selected.transport.value() == b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n"
