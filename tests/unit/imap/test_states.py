"""The illegal-state sweep: every command in every RFC 3501 state gets the RFC's answer, and the session lives.

RFC 3501 3 and 6: CAPABILITY, NOOP, LOGOUT (and ID, RFC 2971) are valid in every state;
STARTTLS, AUTHENTICATE and LOGIN only before authentication; SELECT to APPEND (and NAMESPACE,
IDLE) once authenticated; CHECK to UID (and UNSELECT, MOVE) only with a mailbox selected. A
command not valid in the current state is answered BAD and changes nothing. In a read-only
(EXAMINEd) mailbox the commands that would change it are answered NO [READ-ONLY]. After LOGOUT
nothing more is answered.
"""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import LOOPBACK, PLAIN_TOKEN, Session, messages, tagged

DRAFT = b"Subject: d\r\n\r\n"
STATES = ["unauth", "auth", "select", "examine"]

# name: the bytes a client sends (tag "x"); several lines where the command needs them
COMMANDS = {
    "CAPABILITY": b"x CAPABILITY\r\n",
    "NOOP": b"x NOOP\r\n",
    "ID": b"x ID NIL\r\n",
    "LOGOUT": b"x LOGOUT\r\n",
    "STARTTLS": b"x STARTTLS\r\n",
    "LOGIN": b"x LOGIN alice@example.test secret\r\n",
    "AUTHENTICATE": b"x AUTHENTICATE PLAIN " + PLAIN_TOKEN + b"\r\n",
    "SELECT": b"x SELECT INBOX\r\n",
    "EXAMINE": b"x EXAMINE INBOX\r\n",
    "CREATE": b"x CREATE Projects\r\n",
    "DELETE": b"x DELETE Old\r\n",
    "RENAME": b"x RENAME Old New\r\n",
    "SUBSCRIBE": b"x SUBSCRIBE Old\r\n",
    "UNSUBSCRIBE": b"x UNSUBSCRIBE Old\r\n",
    "LIST": b'x LIST "" *\r\n',
    "LSUB": b'x LSUB "" *\r\n',
    "STATUS": b"x STATUS INBOX (MESSAGES)\r\n",
    "APPEND": b"x APPEND INBOX {%d+}\r\n%b\r\n" % (len(DRAFT), DRAFT),
    "NAMESPACE": b"x NAMESPACE\r\n",
    "IDLE": b"x IDLE\r\n",                # DONE follows only once the server says "+ idling"
    "CHECK": b"x CHECK\r\n",
    "CLOSE": b"x CLOSE\r\n",
    "UNSELECT": b"x UNSELECT\r\n",
    "EXPUNGE": b"x EXPUNGE\r\n",
    "SEARCH": b"x SEARCH ALL\r\n",
    "FETCH": b"x FETCH 1 FLAGS\r\n",
    "STORE": b"x STORE 1 +FLAGS (\\Seen)\r\n",
    "COPY": b"x COPY 1 Old\r\n",
    "MOVE": b"x MOVE 1 Old\r\n",
    "UID FETCH": b"x UID FETCH 1 FLAGS\r\n",
    "UID SEARCH": b"x UID SEARCH ALL\r\n",
    "UID STORE": b"x UID STORE 1 +FLAGS (\\Seen)\r\n",
    "UID COPY": b"x UID COPY 1 Old\r\n",
    "UID MOVE": b"x UID MOVE 1 Old\r\n",
    "UID EXPUNGE": b"x UID EXPUNGE 1\r\n",
    "SORT": b"x SORT (DATE) UTF-8 ALL\r\n",
    "THREAD": b"x THREAD REFERENCES UTF-8 ALL\r\n",
    "UID SORT": b"x UID SORT (REVERSE SUBJECT) UTF-8 ALL\r\n",
    "UID THREAD": b"x UID THREAD ORDEREDSUBJECT UTF-8 ALL\r\n",
    "ENABLE": b"x ENABLE CONDSTORE\r\n",
    "GETQUOTAROOT": b"x GETQUOTAROOT INBOX\r\n",
    "GETQUOTA": b'x GETQUOTA ""\r\n',                  # no limit here, so no quota root: NO
    "SETQUOTA": b'x SETQUOTA "" (STORAGE 512)\r\n',    # the administrator sets quotas: NO
    "COMPRESS": b"x COMPRESS DEFLATE\r\n",             # after OK the session speaks DEFLATE (test_compress.py)
    "FROBNICATE": b"x FROBNICATE\r\n",
}

ANY_STATE = {"CAPABILITY", "NOOP", "ID", "LOGOUT"}
NOT_AUTHENTICATED = {"STARTTLS", "LOGIN", "AUTHENTICATE"}
AUTHENTICATED = {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
                 "STATUS", "APPEND", "NAMESPACE", "IDLE", "GETQUOTAROOT", "GETQUOTA", "SETQUOTA", "COMPRESS"}
REFUSED = {"GETQUOTA": b"x NO [NONEXISTENT] No such quota root\r\n",
           "SETQUOTA": b"x NO [NOPERM] Quotas are set by the administrator\r\n"}
SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID FETCH",
            "UID SEARCH", "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE",
            "SORT", "THREAD", "UID SORT", "UID THREAD"}
CHANGES_THE_MAILBOX = {"EXPUNGE", "STORE", "MOVE", "UID STORE", "UID MOVE", "UID EXPUNGE"}


def expected(command: str, state: str) -> bytes:
    """The RFC's tagged status for `command` in `state`."""
    if command in ANY_STATE:
        return b"OK"
    if command in NOT_AUTHENTICATED:
        return b"OK" if state == "unauth" else b"BAD"
    if command in AUTHENTICATED:
        return b"BAD" if state == "unauth" else b"NO" if command in REFUSED else b"OK"
    if command in SELECTED:
        if state in ("unauth", "auth"):
            return b"BAD"
        return b"NO" if state == "examine" and command in CHANGES_THE_MAILBOX else b"OK"
    return b"BAD"                       # not an IMAP4rev1 command we offer, in any state


def in_state(state: str, reactor, tmp_path) -> Session:
    """A session in `state`; from 127.0.0.1 with plaintext login allowed, so STARTTLS and LOGIN can both work."""
    session = Session(reactor, tmp_path, peer="127.0.0.1", plaintext=LOOPBACK)
    if state == "unauth":
        return session
    for message in messages(2):
        session.deliver(message)
    session.login()
    session.ok(b"c0 CREATE Old")
    if state == "select":
        session.ok(b"s0 SELECT INBOX")
    elif state == "examine":
        session.ok(b"s0 EXAMINE INBOX")
    return session


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_in_every_state(command, state, reactor, tmp_path):
    session = in_state(state, reactor, tmp_path)
    reply = session.send(COMMANDS[command])
    if reply == b"+ idling\r\n":
        reply += session.send(b"DONE\r\n")
    status = expected(command, state)
    line = tagged(reply, b"x")
    assert line.startswith(b"x " + status + b" "), (command, state, reply)
    assert reply.endswith(line + b"\r\n"), reply                     # the tagged line comes last
    if status == b"BAD" and command not in ("ENABLE", "FROBNICATE"):
        assert reply == b"x BAD Unsupported command\r\n"               # refused whole: nothing read, nothing sent
    if status == b"NO":
        assert reply == REFUSED.get(command, b"x NO [READ-ONLY] Mailbox is read-only\r\n")
    if command == "COMPRESS" and status == b"OK":
        assert reply == b"x OK DEFLATE active\r\n" and session.send(b"z NOOP\r\n") == b""   # NOOP is no DEFLATE
    elif command == "LOGOUT":
        assert reply.startswith(b"* BYE ") and session.transport.disconnecting
    else:
        assert session.alive, (command, state)


@pytest.mark.parametrize("state", STATES)
def test_refusal_changes_no_state(state, reactor, tmp_path):
    session = in_state(state, reactor, tmp_path)
    for command in COMMANDS:
        if expected(command, state) == b"BAD":
            session.send(COMMANDS[command])
    listing = session.cmd(b"c CAPABILITY")
    assert (b"AUTH=PLAIN" in listing) == (state == "unauth")
    fetch = session.cmd(b"f FETCH 1 FLAGS")
    assert fetch.startswith(b"f BAD" if state in ("unauth", "auth") else b"* 1 FETCH")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "LOGOUT"])
def test_nothing_is_answered_after_logout(command, state, reactor, tmp_path):
    session = in_state(state, reactor, tmp_path)
    reply = session.send(b"l LOGOUT\r\n" + COMMANDS[command])
    assert reply == b"* BYE Logging out\r\nl OK LOGOUT completed\r\n"
    assert session.transport.disconnecting


def test_the_table_covers_every_command_the_server_knows():
    from appliance.imap.session import IMAPServer
    known = {name.split("_", 1)[1] for name in dir(IMAPServer)
             if name.split("_", 1)[0] in ("unauth", "auth", "select")}
    swept = {name.split()[0] for name in COMMANDS}
    assert known <= swept, known - swept
