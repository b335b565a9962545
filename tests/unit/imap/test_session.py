"""The session itself: replies in order, bad input answered BAD or NO, literals bounded, error limits."""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import Session, tagged, talk


def test_pipelined_commands_are_answered_in_order(authed):
    protocol, transport = authed.protocol, authed.transport
    reply = talk(protocol, transport, b"a SELECT INBOX\r\nb FETCH 1 BODY.PEEK[HEADER]\r\nc NOOP\r\n")
    assert reply.index(b"a OK") < reply.index(b"* 1 FETCH") < reply.index(b"b OK") < reply.index(b"c OK")


@pytest.mark.parametrize("command, reply", [
    (b"x APPEND INBOX {99999999999}", b"x BAD"),
    (b"x APPEND INBOX {-1}", b"x BAD"),
    (b"x LOGIN {70000}", b"x BAD"),
    (b"x FETCH 1:x FLAGS", b"x BAD"),
    (b"x FETCH 9 FLAGS", b"x BAD"),
    (b"x FETCH 1 (FLAGS", b"x BAD"),
    (b"x SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000, b"x BAD"),
    (b"x SEARCH " + b"NOT " * 100 + b"ALL", b"x BAD"),
    (b"x FROBNICATE", b"x BAD"),
    (b"x SELECT \"../../etc\"", b"x NO"),
    (b"x CREATE a/b", b"x NO"),
])
def test_bad_input_gets_bad_or_no(authed, command, reply):
    protocol, transport = authed.protocol, authed.transport
    talk(protocol, transport, b"s SELECT INBOX\r\n")
    answer = talk(protocol, transport, command + b"\r\n")
    assert tagged(answer, b"x").startswith(reply), answer      # (a SELECT first closes INBOX: `* OK [CLOSED]`)
    assert b"+ " not in answer                      # no continuation: the literal is never read
    assert talk(protocol, transport, b"n NOOP\r\n").endswith(b"n OK NOOP completed\r\n")


def test_nonsynchronising_literal_too_large_hangs_up(authed):
    reply = talk(authed.protocol, authed.transport, b"x APPEND INBOX {99999999999+}\r\n")
    assert reply.startswith(b"* BYE") and authed.transport.disconnecting


def test_empty_line_and_lone_tag_are_bad(fresh):
    assert fresh.send(b"\r\n") == b"* BAD Empty command line\r\n"
    assert fresh.cmd(b"a1") == b"a1 BAD Missing command\r\n"
    assert fresh.alive


def test_argument_errors_never_echo_internals(selected):
    assert selected.cmd(b"f FETCH 1 (FLAGS") == b"f BAD Invalid arguments: Invalid fetch attributes\r\n"
    assert selected.cmd(b'l LOGIN "unterminated') == b"l BAD Unsupported command\r\n"
    assert selected.cmd(b'c CREATE "unterminated') == b"c BAD Invalid arguments: Unmatched quotes\r\n"


def test_refused_command_never_runs_its_literal_plus_octets(fresh):
    # Before login APPEND is not a command; its message must not be read as commands (RFC 7888 4).
    message = b"a2 LOGIN alice@example.test secret\r\n"
    reply = fresh.send(b"a1 APPEND INBOX {%d+}\r\n%b\r\n" % (len(message), message))
    assert reply == b"a1 BAD Unsupported command\r\n"
    assert fresh.cmd(b"a3 SELECT INBOX") == b"a3 BAD Unsupported command\r\n"     # still not logged in
    assert fresh.alive


def test_refused_literal_plus_split_across_packets_and_lines(selected):
    assert selected.send(b"x FROB {10+}\r\nx NOO") == b"x BAD Unsupported command\r\n"
    assert selected.send(b"P\r\n1 {3+}\r\nabc\r\n") == b""         # the rest of the line announces another
    assert selected.alive


def test_refused_literal_plus_over_the_size_limit_hangs_up(fresh):
    reply = fresh.send(b"a1 APPEND INBOX {99999999999+}\r\n")
    assert reply == b"a1 BAD Unsupported command\r\n* BYE Literal too large\r\n"
    assert fresh.transport.disconnecting


def test_line_too_long_says_bye(fresh):
    reply = fresh.send(b"a1 NOOP " + b"x" * 70000 + b"\r\n")
    assert reply == b"* BYE Command line too long\r\n" and fresh.transport.disconnecting


def test_too_many_errors_say_bye(fresh):
    for n in range(19):
        assert fresh.cmd(b"b%d FROB" % n) == b"b%d BAD Unsupported command\r\n" % n
    assert fresh.cmd(b"b19 FROB") == b"b19 BAD Unsupported command\r\n* BYE Too many errors\r\n"
    assert fresh.transport.disconnecting


def test_idle_timeout_before_login(reactor, tmp_path):
    session = Session(reactor, tmp_path, implicit=True)
    reactor.advance(61)
    assert session.transport.value().endswith(b"* BYE Autologout; connection idle too long\r\n")
    assert session.transport.disconnecting


def test_after_login_the_timeout_is_thirty_minutes(authed, reactor):
    reactor.advance(29 * 60)
    assert authed.alive
    reactor.advance(31 * 60)
    assert authed.transport.disconnecting


@pytest.mark.parametrize("command", [
    b"LOGIN", b"SELECT", b"EXAMINE", b"CREATE", b"DELETE", b"RENAME x", b"SUBSCRIBE", b"LIST", b"LIST \"\"",
    b"STATUS", b"STATUS INBOX", b"APPEND", b"APPEND INBOX", b"FETCH", b"FETCH 1", b"STORE 1", b"STORE 1 +FLAGS",
    b"COPY", b"COPY 1", b"MOVE 1", b"UID", b"UID FETCH", b"UID EXPUNGE", b"SEARCH",
])
def test_missing_arguments_are_bad_not_internal_errors(selected, command):
    reply = selected.cmd(b"m " + command)
    assert reply.startswith(b"m BAD ") and b"Internal error" not in reply, reply
    assert selected.alive
