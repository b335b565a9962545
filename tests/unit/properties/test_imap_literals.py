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

from appliance.imap.parse import Literal, Str, tokenize
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
    assert _shapes(tokenize([b"X ", Literal(value), b" Y"])) == _shapes([b"X", Str(value), b"Y"])


# ---- parse.tokenize: the one reader of argument octets (SEARCH, SORT, THREAD, ID, LIST, LSUB) ----------
def _shapes(tokens: list) -> list:
    """Tokens with their kind made visible: Str(b"a") == b"a", but a string is no word."""
    return [_shapes(t) if isinstance(t, list) else ("string" if isinstance(t, Str) else "word", bytes(t))
            for t in tokens]


@given(st.lists(st.one_of(special_bytes, st.binary(max_size=20).map(Literal)), max_size=6))
@example([b"(" * 70 + b")" * 70])
@example([b'(a "b', Literal(b")"), b")"])
@example([b"a)"])
def test_tokenize_gives_tokens_or_illegal_client_response(segments):
    """Any line parts and literals: tokens, or the one syntax error the session answers BAD."""
    try:
        tokens = tokenize(segments)
    except IllegalClientResponse:
        return

    def check(items: list, depth: int) -> None:
        assert depth <= 65
        for item in items:
            if isinstance(item, list):
                check(item, depth + 1)
            elif not isinstance(item, Str):
                assert item and not any(c in b' ()"' for c in item), item
    check(tokens, 1)


# Words as a client writes them: atoms, list-mailbox patterns (`%`, `*`, `]`, RFC 3501 9), and octets
# the grammar does not allow in an atom but every command has always taken as word octets (`{`, CTLs).
_word = st.one_of(st.binary(min_size=1, max_size=8).map(lambda b: b.translate(None, b' ()"')).filter(bool),
                  st.sampled_from([b"%", b"*", b"INBOX.%", b"a]", b"[Gmail]/*", b"{3}", b"1:*", b"\\Seen"]))
_leaf = st.one_of(st.tuples(st.just("word"), _word),
                  st.tuples(st.sampled_from(["quoted", "literal"]), st.binary(max_size=12)))
_trees = st.lists(st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=10), max_size=6)


def _segments_of(tree: list) -> list[bytes]:
    """`tree` written as a command's arguments: line parts, and a Literal wherever a literal's octets go."""
    segments: list[bytes] = []
    line = bytearray()

    def write(items: list) -> None:
        nonlocal line
        for n, item in enumerate(items):
            line += b" " if n else b""
            if isinstance(item, list):
                line += b"("
                write(item)
                line += b")"
            elif item[0] == "literal":
                segments.extend([bytes(line), Literal(item[1])])
                line = bytearray()
            else:
                line += _wire(item[1], "quoted")[0] if item[0] == "quoted" else item[1]
    write(tree)
    return segments + [bytes(line)]


def _expected(tree: list) -> list:
    return [_expected(item) if isinstance(item, list) else ("word" if item[0] == "word" else "string", item[1])
            for item in tree]


@given(_trees)
@example([("word", b"LIST"), [("literal", b"a b"), ("quoted", b'"(')], ("word", b"RETURN"), []])
@example([[[("literal", b"")]], ("quoted", b"\\")])
def test_tokenize_reads_back_words_strings_and_lists_in_every_form(tree):
    """What a client writes, as atoms, quoted strings and literals in lists, is what the command gets."""
    assert _shapes(tokenize(_segments_of(tree))) == _expected(tree)


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
