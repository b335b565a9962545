"""Properties of string arguments (imap/parse.py): quoted, literal and LITERAL+ forms read alike; SEARCH,
SORT, THREAD, FETCH and ID answer any bytes with a tagged OK, NO or BAD and stay in step.

RFC 3501 4.3 and 9: an astring is an atom, a quoted string or a literal; RFC 7888: a literal may be
non-synchronising. Whatever form a client picks, the command must see the same octets.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import example, given, strategies as st
from twisted.internet import defer
from twisted.mail.imap4 import IllegalClientResponse

from appliance.imap.parse import Str, tokenize
from tests.unit.imap.harness import Session, SyncReactor, connect, messages, tagged
from tests.unit.properties.strategies import examples, no_logged_failures, special_bytes

_quotable = st.binary(max_size=60).map(lambda b: b.translate(None, b"\r\n\0"))
_FORMS = ("quoted", "literal", "literal+")


def _wire(value: bytes, form: str) -> tuple[bytes, bytes]:
    """(the end of the command line, the octets after it) carrying `value` in `form`."""
    if form == "quoted":
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', b""
    marker = b"{%d+}" if form == "literal+" else b"{%d}"
    return marker % len(value), value


def _parse(parser_name: str, line_end: bytes, octets: bytes, rest: bytes) -> tuple:
    """Run one argument parser of a live session over `line_end` (+ literal octets and `rest`)."""
    with tempfile.TemporaryDirectory() as tmp:
        protocol, transport = connect(SyncReactor(), Path(tmp), implicit=True)
        parser = getattr(protocol, parser_name)
        result = parser(line_end)
        results: list = []
        if isinstance(result, defer.Deferred):
            result.addBoth(results.append)
            protocol.dataReceived(octets + rest + b"\r\n")
            assert results, "the literal was not read"
            result = results[0]
        return result


@given(_quotable, st.sampled_from(_FORMS))
@example(b"", "literal")
@example(b'a"b\\c', "quoted")
def test_an_astring_reads_the_same_in_every_form(value, form):
    line_end, octets = _wire(value, form)
    if form != "quoted":
        arg, rest = _parse("arg_astring", line_end, octets, b" NEXT")
        assert (arg, rest) == (value, b" NEXT")
    else:
        arg, rest = _parse("arg_astring", line_end + b" NEXT", b"", b"")
        assert (arg, rest) == (value, b"NEXT")


@given(st.binary(max_size=60), st.sampled_from(_FORMS[1:]))
def test_any_octets_in_a_literal_reach_search_unchanged(value, form):
    line_end, octets = _wire(value, form)
    tokens, rest = _parse("arg_tokens", b"CHARSET UTF-8 (SUBJECT " + line_end, octets, b") ALL")
    assert tokens == [b"CHARSET", b"UTF-8", [b"SUBJECT", Str(value)], b"ALL"] and rest == b""


@given(_quotable)
def test_quoted_and_literal_strings_tokenize_alike(value):
    quoted = _wire(value, "quoted")[0]
    assert tokenize([b"X " + quoted + b" Y"]) == [b"X", Str(value), b"Y"]


@given(special_bytes)
def test_tokenize_gives_tokens_or_illegal_client_response(line):
    try:
        tokens = tokenize([line.replace(b"\r", b"").replace(b"\n", b"")])
    except IllegalClientResponse:
        return
    assert isinstance(tokens, list)


_VERBS = st.sampled_from([b"SEARCH", b"UID SEARCH", b"SEARCH RETURN (COUNT)", b"SORT", b"SORT (DATE)",
                          b"UID SORT (REVERSE SUBJECT) UTF-8", b"THREAD", b"THREAD REFERENCES",
                          b"UID THREAD ORDEREDSUBJECT UTF-8", b"FETCH 1", b"FETCH 1 BODY[HEADER.FIELDS (",
                          b"ID", b"SEARCH CHARSET"])
_LITERAL_AT_END = re.compile(rb"\{(\d+)(\+?)\}$")


@examples(0.3)
@given(st.lists(st.tuples(_VERBS, special_bytes.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
                min_size=1, max_size=6))
@example([(b"SEARCH", b"SUBJECT {3+}")])
@example([(b"SORT", b"(DATE) UTF-8 {0}")])
def test_random_arguments_get_a_tagged_answer_and_the_session_stays_in_step(items):
    with tempfile.TemporaryDirectory() as tmp, no_logged_failures() as failures:
        session = Session(SyncReactor(), Path(tmp), implicit=True)
        for message in messages(3):
            session.deliver(message)
        session.login()
        session.select()
        for number, (verb, arguments) in enumerate(items):
            tag = b"t%d" % number
            out = session.cmd(tag + b" " + verb + b" " + arguments)
            literal = _LITERAL_AT_END.search(arguments)
            if literal and not tagged(out, tag):
                # The line announced a literal (and the server asked for it, or LITERAL+): send its octets.
                out += session.send(b"x" * int(literal.group(1)) + b"\r\n")
            if session.transport.disconnecting:
                assert b"* BYE" in out, out
                break
            assert tagged(out, tag)[len(tag) + 1:].startswith((b"OK", b"NO", b"BAD")), (verb, arguments, out)
            assert b"Internal error" not in out and b"SERVERBUG" not in out, out
        else:
            assert session.alive
    assert not failures, failures[0][1].getTraceback()
