"""Issue 10, defect 16: only consecutive BADs end a session, and every sequence set gets RFC 3501's answer."""
from __future__ import annotations

from tests.unit.imap.harness import tagged, untagged


def test_bad_replies_spread_over_a_long_session_do_not_close_it(selected):
    for n in range(30):
        assert tagged(selected.cmd(b"b%d FROB" % n), b"b%d" % n).startswith(b"b%d BAD" % n)
        assert selected.alive                 # a good command ends the streak
    assert not selected.transport.disconnecting


def test_a_no_also_ends_the_streak(selected):
    for n in range(25):
        selected.cmd(b"b%d FROB" % n)
        assert b" NO " in selected.cmd(b"n%d SELECT nosuchbox" % n)
        selected.select()
    assert not selected.transport.disconnecting


def test_consecutive_bad_replies_close_with_bye(selected):
    for n in range(19):
        selected.cmd(b"b%d FROB" % n)
    assert not selected.transport.disconnecting
    assert b"* BYE Too many errors" in selected.cmd(b"b19 FROB")
    assert selected.transport.disconnecting


def test_uids_that_do_not_exist_are_ignored_without_error(selected):
    assert tagged(selected.cmd(b"u1 UID FETCH 999 FLAGS"), b"u1").startswith(b"u1 OK")
    assert tagged(selected.cmd(b"u2 UID FETCH 1,999:1000 FLAGS"), b"u2").startswith(b"u2 OK")
    assert tagged(selected.cmd(b"u3 UID STORE 999 +FLAGS (\\Seen)"), b"u3").startswith(b"u3 OK")
    assert tagged(selected.cmd(b"u4 UID COPY 999 INBOX"), b"u4").startswith(b"u4 OK")
    reply = selected.cmd(b"u5 UID SEARCH UID 999")
    assert untagged(reply) == [b"* SEARCH"] and tagged(reply, b"u5").startswith(b"u5 OK")
    assert tagged(selected.cmd(b"u6 UID EXPUNGE 999"), b"u6").startswith(b"u6 OK")
    assert tagged(selected.cmd(b"u7 UID MOVE 999 INBOX"), b"u7").startswith(b"u7 OK")


def test_uid_range_with_star_beyond_the_last_uid_names_the_last_message(selected):
    reply = selected.cmd(b"u1 UID FETCH 999:* UID")
    assert len([line for line in untagged(reply) if b" FETCH " in line]) == 1
    assert tagged(reply, b"u1").startswith(b"u1 OK")


def test_message_numbers_beyond_the_mailbox_are_bad(selected):
    assert tagged(selected.cmd(b"s1 FETCH 3 FLAGS"), b"s1").startswith(b"s1 BAD")
    assert tagged(selected.cmd(b"s2 STORE 1:3 +FLAGS (\\Seen)"), b"s2").startswith(b"s2 BAD")
    assert tagged(selected.cmd(b"s3 COPY 9 INBOX"), b"s3").startswith(b"s3 BAD")
    assert tagged(selected.cmd(b"s4 FETCH 1:2 FLAGS"), b"s4").startswith(b"s4 OK")
    reply = selected.cmd(b"s5 SEARCH 2:9")             # a search key matches what exists (RFC 3501 6.4.4)
    assert tagged(reply, b"s5").startswith(b"s5 OK")
