"""CAPABILITY, NOOP, LOGOUT and ID (RFC 3501 6.1, RFC 2971): valid in every state."""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import tagged

BASE = (b"IMAP4rev1 LITERAL+ SASL-IR ID IDLE NAMESPACE UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN"
        b" LIST-EXTENDED LIST-STATUS ESEARCH SORT SORT=DISPLAY ESORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES"
        b" QUOTA QUOTA=RES-STORAGE COMPRESS=DEFLATE"
        b" ENABLE CONDSTORE QRESYNC")


def test_greeting_is_ok_with_capabilities(fresh):
    assert fresh.greeting == b"* OK [CAPABILITY " + BASE + b" AUTH=PLAIN] mailappliance IMAP4rev1 ready\r\n"


def test_capability_before_login_offers_auth(fresh):
    assert fresh.cmd(b"c CAPABILITY") == b"* CAPABILITY " + BASE + b" AUTH=PLAIN\r\nc OK CAPABILITY completed\r\n"


@pytest.mark.parametrize("state", ["authed", "selected"])
def test_capability_after_login_has_no_auth(state, request):
    session = request.getfixturevalue(state)
    assert session.cmd(b"c CAPABILITY") == b"* CAPABILITY " + BASE + b"\r\nc OK CAPABILITY completed\r\n"


def test_capability_takes_no_arguments(fresh):
    assert fresh.cmd(b"c CAPABILITY IMAP4rev1").startswith(b"c BAD Illegal syntax: Too many arguments")
    assert fresh.alive


@pytest.mark.parametrize("state", ["fresh", "authed"])
def test_noop_outside_a_folder(state, request):
    assert request.getfixturevalue(state).cmd(b"n NOOP") == b"n OK NOOP completed\r\n"


def test_noop_in_a_folder_reports_new_mail(selected):
    selected.deliver(b"Subject: late\r\n\r\nx\r\n")
    assert selected.cmd(b"n NOOP") == b"* 3 EXISTS\r\n* 3 RECENT\r\nn OK NOOP completed\r\n"
    assert selected.cmd(b"n2 NOOP") == b"n2 OK NOOP completed\r\n"


def test_noop_reports_flags_changed_by_another_session(selected, other):
    other.ok(b"st STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert selected.cmd(b"n NOOP") == b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\nn OK NOOP completed\r\n"


def test_noop_reports_expunges_by_another_session(selected, other):
    other.ok(b"st STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok(b"e EXPUNGE")
    assert selected.cmd(b"n NOOP") == b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n"


@pytest.mark.parametrize("state", ["fresh", "authed", "selected"])
def test_id_answers_with_our_name(state, request):
    session = request.getfixturevalue(state)
    assert session.cmd(b'i ID ("name" "mutt")') == b'* ID ("name" "mailappliance")\r\ni OK ID completed\r\n'
    assert session.cmd(b"i2 ID NIL") == b'* ID ("name" "mailappliance")\r\ni2 OK ID completed\r\n'


@pytest.mark.parametrize("state", ["fresh", "authed", "selected"])
def test_logout_says_bye_then_ok_and_closes(state, request):
    session = request.getfixturevalue(state)
    assert session.cmd(b"l LOGOUT") == b"* BYE Logging out\r\nl OK LOGOUT completed\r\n"
    assert session.transport.disconnecting


def test_nothing_pipelined_after_logout_runs(selected):
    reply = selected.send(b"l LOGOUT\r\nn NOOP\r\nd DELETE Trash\r\n")
    assert reply == b"* BYE Logging out\r\nl OK LOGOUT completed\r\n"
    assert tagged(reply, b"n") == b"" and tagged(reply, b"d") == b""
