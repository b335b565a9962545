"""The IMAP session fed random command lines over StringTransport (as tests/unit/imap/harness.py does).

Whatever a client sends, each command gets one tagged OK, NO or BAD, every other line is an
untagged response or a continuation request, no command is answered "Internal error" (the sign
of a caught exception), and the session still answers NOOP afterwards (unless it said BYE).
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import example, given, strategies as st

from appliance.imap.session import MAX_ERRORS
from tests.unit.imap.harness import Session, SyncReactor, messages
from tests.unit.properties.strategies import examples, no_logged_failures, special_bytes

_TAGGED = re.compile(rb"^(t\d+|zz|\*) (OK|NO|BAD)[ \[]")
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")


def _logical_lines(out: bytes) -> list[bytes]:
    """Response lines, each literal ({n} CRLF and n octets) kept inside its line."""
    lines, pos, current = [], 0, b""
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        assert end >= 0, f"unterminated response: {out[pos:]!r}"
        current += out[pos:end]
        pos = end + 2
        literal = _LITERAL_AT_END.search(current)
        if literal:
            size = int(literal.group(1))
            assert pos + size <= len(out), f"short literal in {current!r}"
            current += b"\r\n" + out[pos:pos + size]
            pos += size
            continue
        lines.append(current)
        current = b""
    assert not current
    return lines


_sets = st.sampled_from([b"1", b"2", b"1:*", b"*", b"3", b"1,2", b"2:1", b"4294967295", b"0", b"1:", b"x", b"1:2,*"])
_atts = st.sampled_from([b"FLAGS", b"(UID FLAGS)", b"BODY[]", b"BODY.PEEK[HEADER]", b"BODYSTRUCTURE", b"ENVELOPE",
                         b"BODY[1]", b"BODY[1.2.MIME]", b"BODY[HEADER.FIELDS (Subject From)]", b"BODY[]<0.5>",
                         b"RFC822.SIZE", b"ALL", b"FULL", b"(BODY[", b"BODY[TEXT]<3.0>", b"INTERNALDATE",
                         b"BODY[]<4294967296.1>", b"BODY[]<0.0>", b"BODY[1.0]", b"BODY[0]", b"RFC822.HEADER",
                         b"BODY[99999999999999999999]", b"BODY[1.99999999999999999999.TEXT]", b"BINARY[1]",
                         b"BODY[HEADER.FIELDS ()]", b"BODY[HEADER.FIELDS.NOT (\xff)]", b"BODY[MIME]", b"RFC822"])
_names = st.sampled_from([b"INBOX", b"inbox", b'"A b"', b"Sent", b"&AOk-", b"&Jjo-!", b"&", b'"', b"a/b", b"*",
                          b'""', b"{3+}", b"INBOX/", b"/", b"..", b'"\\"', b"INBOX.x"])
_commands = st.one_of(
    st.sampled_from([b"NOOP", b"CAPABILITY", b"LOGIN alice@example.test secret", b"LOGIN alice@example.test x",
                     b"SELECT INBOX", b"EXAMINE INBOX", b"EXPUNGE", b"CLOSE", b"UNSELECT", b"CHECK", b"NAMESPACE",
                     b'LIST "" *', b'LSUB "" %', b"STATUS INBOX (MESSAGES UIDNEXT UNSEEN)", b"ID NIL",
                     b'ID ("name" "x")', b"IDLE", b"AUTHENTICATE PLAIN", b"STARTTLS", b"LOGOUT", b"SEARCH ALL",
                     b"UID SEARCH 1:*", b"SEARCH OR SEEN TEXT x", b"SEARCH CHARSET UTF-8 SUBJECT m1",
                     b"SEARCH BEFORE 1-Jan-2000", b"SEARCH LARGER x", b"ENABLE X"]),
    st.builds(lambda uid, verb, s, a: uid + verb + b" " + s + b" " + a, st.sampled_from([b"", b"UID "]),
              st.sampled_from([b"FETCH", b"STORE", b"COPY", b"MOVE", b"SEARCH"]), _sets,
              st.one_of(_atts, st.sampled_from([b"+FLAGS (\\Seen)", b"-FLAGS.SILENT (\\Deleted)",
                                                b"FLAGS ()", b"INBOX", b"Sent"]))),
    st.builds(lambda verb, name: verb + b" " + name,
              st.sampled_from([b"SELECT", b"CREATE", b"DELETE", b"SUBSCRIBE", b"STATUS", b"RENAME"]), _names),
    special_bytes.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
_lines = st.lists(st.tuples(_commands, special_bytes.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
                  max_size=MAX_ERRORS - 5)


def _without_literal(line: bytes) -> bytes:
    """A literal announced at the end of a line would swallow the next line: the literal test below sends those."""
    return line + b" x" if re.search(rb"\{\d*\+?\}\s*$", line) else line


def _run(commands: list[bytes], login_first: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, no_logged_failures() as failures:
        session = Session(SyncReactor(), Path(tmp), implicit=True)
        for message in messages(2):
            session.deliver(message)
        if login_first:
            session.login()
        for number, command in enumerate(commands):
            tag = b"t%d" % number
            out = session.cmd(tag + b" " + command)
            if out.endswith(b"\r\n") and _logical_lines(out)[-1:] and _logical_lines(out)[-1].startswith(b"+"):
                out += session.cmd(b"DONE")           # ends IDLE; AUTHENTICATE reads it as a bad response
            lines = _logical_lines(out)
            for line in lines:
                assert line.startswith((b"* ", b"+ ")) or _TAGGED.match(line), (command, line)
                assert b"Internal error" not in line, (command, line)
            if session.transport.disconnecting:
                assert any(line.startswith(b"* BYE") for line in lines), (command, lines)
                break
            assert any(line.startswith(tag + b" ") for line in lines), (command, lines)
        else:
            assert session.alive, commands
    assert not failures, failures[0][1].getTraceback()


@examples(0.25)
@given(_lines, st.booleans())
@example([(b"SELECT INBOX", b""), (b"FETCH 1 BODY[1.2.MIME]", b"")], True)
@example([(b"\x80", b"")], False)     # an 8-bit command name was answered "BAD Internal error"
@example([(b"\xc3\xa9", b"x")], True)
def test_the_session_answers_every_command_and_stays_alive(lines, login_first):
    _run([_without_literal(command + (b" " + extra if extra else b"")) for command, extra in lines], login_first)


@examples(0.08)
@given(st.lists(st.tuples(st.sampled_from([b"APPEND INBOX", b"APPEND INBOX (\\Seen)", b"LOGIN", b"LOGIN a",
                                           b"SELECT", b"CREATE", b"SEARCH TEXT", b"APPEND Nope"]),
                          st.booleans(), st.binary(max_size=40)), min_size=1, max_size=5))
def test_literals_of_every_kind_are_read_as_literals(items):
    with tempfile.TemporaryDirectory() as tmp, no_logged_failures() as failures:
        session = Session(SyncReactor(), Path(tmp), implicit=True)
        session.login()
        for number, (command, nonsync, octets) in enumerate(items):
            tag = b"t%d" % number
            head = tag + b" " + command + b" {%d%s}\r\n" % (len(octets), b"+" if nonsync else b"")
            out = session.send(head)
            if not nonsync and not out.startswith(b"+ "):
                continue                               # refused before the literal: nothing more is sent
            out += session.send(octets + b"\r\n")
            lines = _logical_lines(out)
            assert any(line.startswith(tag + b" ") for line in lines), (command, lines)
            assert all(b"Internal error" not in line for line in lines), lines
        assert session.alive
    assert not failures, failures[0][1].getTraceback()
