"""Literals in every string argument (RFC 3501 4.3 and 9, RFC 7888 LITERAL+), over a real socket.

Each command gets one of its string arguments as a synchronising literal (`{n}`, the server must
answer "+" before the octets) and as a non-synchronising one (`{n+}`, the octets follow at once),
and the command after it must still work: a literal that is not read as one turns its octets
into commands (the desync of issue 15, defect 3).
"""
from __future__ import annotations

import pytest

from tests.unit.imap.live import command, read_until_tagged

MESSAGE = b"Subject: caf\xc3\xa9 ol\xc3\xa9\r\nFrom: Bob <bob@example.test>\r\nMessage-ID: <1@x>\r\n\r\nhello there\r\n"


@pytest.fixture
def client(server):
    client = server.client()
    client.append("INBOX", None, None, MESSAGE)
    client.create("Old")
    client.create("Keep")
    client.select("INBOX")
    return client


def send(client, mode: str, before: bytes, literal: bytes, after: bytes = b"") -> list[bytes]:
    """One command with `literal` sent in `mode`; its lines up to the tagged answer."""
    if mode == "sync":
        return command(client, before + b"{%d}\r\n" % len(literal), literal + after + b"\r\n")
    return command(client, before + b"{%d+}\r\n" % len(literal) + literal + after + b"\r\n")


def still_in_step(client) -> None:
    """The next command is answered as itself: nothing of the literal was left to run as a command."""
    assert command(client, b"z1 NOOP\r\n")[-1] == b"z1 OK NOOP completed\r\n"
    lines = command(client, b"z2 STATUS INBOX (UIDNEXT)\r\n")
    assert lines == [b'* STATUS "INBOX" (UIDNEXT 2)\r\n', b"z2 OK STATUS completed\r\n"], lines


MODES = ["sync", "nonsync"]

# (command before the literal, the literal, the rest of the command, what its answer must hold)
CASES = {
    "SELECT": (b"a SELECT ", b"INBOX", b"", b"[READ-WRITE]"),
    "EXAMINE": (b"a EXAMINE ", b"Keep", b"", b"[READ-ONLY]"),
    "CREATE": (b"a CREATE ", b"Caf&AOk- New", b"", b"a OK"),
    "DELETE": (b"a DELETE ", b"Old", b"", b"a OK"),
    "RENAME": (b"a RENAME ", b"Old", b" Older", b"a OK"),
    "RENAME both": (b"a RENAME ", b"Old", b" {5+}\r\nOlder", b"a OK"),
    "LIST both": (b"a LIST ", b"", b" {5+}\r\nKeep*", b'"Keep"'),
    "SUBSCRIBE": (b"a SUBSCRIBE ", b"Keep", b"", b"a OK"),
    "UNSUBSCRIBE": (b"a UNSUBSCRIBE ", b"Keep", b"", b"a OK"),
    "LIST": (b'a LIST "" ', b"Kee*", b"", b'"Keep"'),
    "LSUB": (b'a LSUB "" ', b"*", b"", b"a OK"),
    "STATUS": (b"a STATUS ", b"INBOX", b" (MESSAGES)", b"(MESSAGES 1)"),
    "APPEND": (b"a APPEND ", b"Keep", b" (\\Seen) {5+}\r\nhello", b"[APPENDUID "),
    "SEARCH SUBJECT": (b"a UID SEARCH CHARSET UTF-8 SUBJECT ", "café".encode(), b"", b"* SEARCH 1"),
    "SEARCH CHARSET": (b"a SEARCH CHARSET ", b"UTF-8", b" BODY there", b"* SEARCH 1"),
    "SEARCH HEADER": (b"a SEARCH HEADER ", b"Message-ID", b" <1@x>", b"* SEARCH 1"),
    "SEARCH in a list": (b"a SEARCH (OR SUBJECT nothing FROM ", b"bob", b") ALL", b"* SEARCH 1"),
    "FETCH header list": (b"a FETCH 1 BODY.PEEK[HEADER.FIELDS (", b"Message-ID", b")]", b"BODY[HEADER.FIELDS"),
    "COPY": (b"a COPY 1 ", b"Keep", b"", b"[COPYUID "),
    "UID COPY": (b"a UID COPY 1 ", b"Keep", b"", b"[COPYUID "),
    "UID FETCH header list": (b"a UID FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS.NOT (", b"Subject", b" From)])",
                              b"Message-ID: <1@x>"),
    "UID SEARCH HEADER": (b"a UID SEARCH HEADER ", b"From", b" {3+}\r\nbob", b"* SEARCH 1"),
    "ID": (b'a ID ("name" ', b"imaplib", b")", b"* ID "),
    "SORT": (b"a SORT (SUBJECT) UTF-8 SUBJECT ", "olé".encode(), b"", b"* SORT 1"),
    "THREAD": (b"a THREAD REFERENCES ", b"UTF-8", b" ALL", b"* THREAD (1)"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_string_argument_as_a_literal(client, case, mode):
    before, literal, after, wanted = CASES[case]
    lines = send(client, mode, before, literal, after)
    assert lines[-1].startswith(b"a OK"), lines
    assert wanted in b"".join(lines), lines
    still_in_step(client)


@pytest.mark.parametrize("mode", MODES)
def test_move_to_a_literal_name(client, mode):
    lines = send(client, mode, b"a MOVE 1 ", b"Keep")
    assert lines[-1].startswith(b"a OK"), lines
    assert command(client, b"z1 NOOP\r\n")[-1] == b"z1 OK NOOP completed\r\n"
    assert command(client, b"z2 STATUS Keep (MESSAGES)\r\n")[0] == b'* STATUS "Keep" (MESSAGES 1)\r\n'


@pytest.mark.parametrize("mode", MODES)
def test_login_with_literals(server, mode):
    client = server.client(login=False)
    if mode == "sync":
        client.send(b"a LOGIN {18}\r\n")
        assert client.readline().startswith(b"+")
        client.send(b"alice@example.test {6}\r\n")
        assert client.readline().startswith(b"+")
        client.send(b"secret\r\n")
        lines = read_until_tagged(client, b"a")
    else:
        lines = command(client, b"a LOGIN {18+}\r\nalice@example.test {6+}\r\nsecret\r\n")
    assert lines[-1].startswith(b"a OK"), lines
    assert command(client, b"b SELECT INBOX\r\n")[-1].startswith(b"b OK")


def test_two_literals_in_one_search(client):
    lines = command(client, b"a SEARCH CHARSET UTF-8 SUBJECT {5+}\r\ncaf\xc3\xa9 BODY {5+}\r\nthere\r\n")
    assert lines == [b"* SEARCH 1\r\n", b"a OK SEARCH completed\r\n"]
    still_in_step(client)


def test_a_literal_where_no_string_goes_is_refused_in_step(client):
    """STORE's flags are atoms: the literal is refused, and its octets are skipped, not run."""
    lines = command(client, b"a STORE 1 +FLAGS {9+}\r\nz0 LOGOUT\r\n")
    assert lines[-1].startswith(b"a BAD"), lines
    still_in_step(client)


def test_authenticate_takes_no_literal_and_skips_one(server):
    """AUTHENTICATE has no string argument (its response is a line of base64): a LITERAL+ is skipped."""
    client = server.client(login=False)
    lines = command(client, b"a AUTHENTICATE PLAIN {9+}\r\nz0 LOGOUT\r\n")
    assert lines[-1].startswith(b"a BAD"), lines
    assert command(client, b"b LOGIN alice@example.test secret\r\n")[-1].startswith(b"b OK")


def test_a_refused_search_skips_its_literal(client):
    lines = command(client, b"a SEARCH FROBNICATE {9+}\r\nz0 LOGOUT\r\n")
    assert lines[-1].startswith(b"a BAD"), lines
    still_in_step(client)


def test_a_huge_literal_is_refused_before_a_byte_is_read(client):
    """A synchronising literal over the limit: BAD, and the client never sends it."""
    client.send(b"a SEARCH SUBJECT {999999999}\r\n")
    assert client.readline().startswith(b"a BAD")
    still_in_step(client)


def test_a_huge_nonsync_literal_ends_the_session(client):
    """A LITERAL+ literal over the limit is already on its way: the server says why and hangs up."""
    client.send(b"a SEARCH SUBJECT {999999999+}\r\n" + b"x" * 1000)
    assert client.readline().startswith(b"* BYE")
    rest = [client.readline() for _ in range(3)]
    assert rest[-1] == b"", rest                       # closed (after at most the command's BAD)


def test_too_many_literals_in_one_command_are_refused(client):
    data = b"a SEARCH " + b"".join(b"SUBJECT {1+}\r\nx " for _ in range(40)) + b"ALL\r\n"
    client.send(data)
    lines = []
    for _ in range(5):
        line = client.readline()
        lines.append(line)
        if not line or line.startswith(b"a "):
            break
    assert lines[0].startswith(b"* BYE"), lines          # the octets were on their way: no other safe answer
