"""Properties of LIST (appliance/imap/listing.py): the pattern matcher against the RFC's rule, the argument
parser against any bytes (read by the session's one tokenizer, parse.tokenize), and the answer against
what RFC 3501 6.3.8-9 and RFC 5258 promise.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, strategies as st
from twisted.internet import defer
from twisted.mail.imap4 import IllegalClientResponse

from appliance.imap.listing import (MAX_PATTERNS, MAX_TOKENS, ListRequest, ListSyntaxError, Snapshot, ancestors,
                                    matcher, parse_request, select)
from appliance.imap.parse import Literal, tokenize
from tests.unit.imap.harness import Session, SyncReactor, connect, tagged
from tests.unit.properties.strategies import any_bytes, examples

STATUS_ITEMS = (b"MESSAGES", b"UNSEEN")
_name_chars = st.sampled_from(["a", "b", "A", "B", ".", "/", "x", "ü", "ı", "INBOX", "inbox", "i", "N"])
names = st.lists(_name_chars, min_size=1, max_size=8).map("".join)
patterns = st.lists(st.one_of(_name_chars, st.sampled_from(["*", "%", "%", "*"])), max_size=8).map("".join)


def reference_match(pattern: str, name: str, delimiter: str) -> bool:
    """RFC 3501 6.3.8 as a regex: `*` is `.*`, `%` is "anything but the delimiter"; INBOX in any case (5.1)."""
    regex = "".join(".*" if c == "*" else "[^" + re.escape(delimiter) + "]*" if c == "%" else re.escape(c)
                    for c in pattern)
    return re.fullmatch(regex, name, re.S | (re.I | re.A if name == "INBOX" else 0)) is not None


@given(patterns, names, st.sampled_from([".", "/"]))
@example("INBOX", "INBOX", ".")
@example("inb%", "INBOX", ".")
@example("%.%", "a.b", ".")
@example("a%", "a.b", ".")
@example("*%*", "a/b", "/")
def test_the_matcher_agrees_with_the_rfc_rule(pattern, name, delimiter):
    assert matcher(pattern, delimiter)(name) == reference_match(pattern, name, delimiter)


def test_the_matcher_takes_linear_steps_where_a_regex_backtracks():
    # `*a*a*...*b` against `aaaa...` backtracks exponentially in a regex engine; the matcher's work is
    # len(name) x len(pattern) steps, so this returns at once.
    assert not matcher("*a" * 40 + "*b", ".")("a" * 200)


@given(st.lists(st.one_of(any_bytes, st.sampled_from([b"(", b")", b"RETURN", b"SUBSCRIBED", b"STATUS", b'""',
                                                       b"RECURSIVEMATCH", b"{3}", b"{0+}", b'"a\\"b"', b"*", b"%"])),
                max_size=12).map(b" ".join),
       st.lists(st.binary(max_size=6).map(Literal), max_size=2))
def test_list_arguments_parse_or_are_refused_as_syntax(line, literals):
    try:
        request = parse_request(tokenize([line] + literals), STATUS_ITEMS)
    except (IllegalClientResponse, ListSyntaxError):
        return
    assert request.patterns and all(isinstance(p, bytes) for p in request.patterns)
    assert isinstance(request.reference, bytes)
    assert "SUBSCRIBED" not in request.selection or "SUBSCRIBED" in request.returns
    assert "RECURSIVEMATCH" not in request.selection or request.selection - {"RECURSIVEMATCH", "REMOTE"}


def _pattern_list(count: int) -> list:
    return tokenize([b'"" (' + b" ".join(b"p%d" % n for n in range(count)) + b")"])


def test_one_list_command_is_bounded_in_patterns_and_tokens():
    assert len(parse_request(_pattern_list(MAX_PATTERNS), STATUS_ITEMS).patterns) == MAX_PATTERNS
    with pytest.raises(ListSyntaxError, match="Invalid pattern list"):
        parse_request(_pattern_list(MAX_PATTERNS + 1), STATUS_ITEMS)
    # 400 tokens, parentheses counted, as the command's text has them: `(` + 397 options + `)` + "" + *
    selection = tokenize([b"(" + b" SUBSCRIBED" * (MAX_TOKENS - 4) + b') "" *'])
    assert parse_request(selection, STATUS_ITEMS).selection == {"SUBSCRIBED"}
    with pytest.raises(ListSyntaxError, match="Too many arguments"):
        parse_request(tokenize([b"(" + b" SUBSCRIBED" * (MAX_TOKENS - 3) + b') "" *']), STATUS_ITEMS)


def test_a_quoted_option_or_parenthesis_is_a_name_not_syntax():
    request = parse_request(tokenize([b'"(" ")"']), STATUS_ITEMS)
    assert (request.reference, request.patterns, request.extended) == (b"(", [b")"], False)
    with pytest.raises(ListSyntaxError):
        parse_request(tokenize([b'("SUBSCRIBED") "" *']), STATUS_ITEMS)
    with pytest.raises(ListSyntaxError):
        parse_request(tokenize([b'"" * "RETURN" ()']), STATUS_ITEMS)


# ---- a LIST command's names in every form a client may write them, through a live session --------------
_NAME_FORMS = ("atom", "quoted", "literal", "literal+")
# Atom names: list-mailbox octets (RFC 3501 9: `%`, `*` and `]` too) without digits, so no word can
# end in a literal's `{n}`; quoted names: any octets a line can carry; literal names: any octets.
_atom_names = st.lists(st.sampled_from([b"a", b"INBOX", b".", b"%", b"*", b"]", b"[", b"{", b"&AOQ-"]),
                       min_size=1, max_size=5).map(b"".join)
_names = st.one_of(st.tuples(st.just("atom"), _atom_names),
                   st.tuples(st.just("quoted"), st.binary(max_size=20).map(lambda b: b.translate(None, b"\r\n\0"))),
                   st.tuples(st.sampled_from(_NAME_FORMS[2:]), st.binary(max_size=20)))


def _written(form: str, name: bytes) -> bytes:
    """`name` on the wire: a literal's marker ends the line, its octets follow the CRLF."""
    if form == "atom":
        return name
    if form == "quoted":
        return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return (b"{%d+}\r\n" if form == "literal+" else b"{%d}\r\n") % len(name) + name


def _list_arguments(wire: bytes) -> list:
    """LIST's argument parser in a live session, fed the whole of `wire` (its first line, then the rest)."""
    with tempfile.TemporaryDirectory() as tmp:
        protocol, _ = connect(SyncReactor(), Path(tmp), implicit=True)
        first, _, rest = wire.partition(b"\r\n")
        result = protocol.arg_list(first)
        if isinstance(result, defer.Deferred):
            results: list = []
            result.addBoth(results.append)
            protocol.dataReceived(rest + b"\r\n")
            assert results, "the literals were not read"
            result = results[0]
        tokens, rest_of_line = result
        assert rest_of_line == b""
        return tokens


@given(_names, st.lists(_names, min_size=1, max_size=4), st.booleans())
@example(("literal", b""), [("literal+", b"J*"), ("quoted", b'"(')], True)
@example(("atom", b"["), [("atom", b"%]")], False)
@example(("quoted", b"a"), [("literal", b"x\r\n{2}\r\n")], False)
def test_names_read_the_same_in_every_form(reference, patterns, extended):
    """RFC 3501 6.3.8 and 9: reference and patterns are atoms, quoted strings or literals, all alike."""
    written = [_written(*pattern) for pattern in patterns]
    wire = b" ".join([_written(*reference), b"(" + b" ".join(written) + b")" if extended else written[0]])
    if extended:
        wire = b"(SUBSCRIBED) " + wire + b" RETURN (CHILDREN STATUS (MESSAGES))"
    request = parse_request(_list_arguments(wire), STATUS_ITEMS)
    assert request.reference == reference[1]
    assert request.patterns == [name for _, name in (patterns if extended else patterns[:1])]
    assert request.extended == extended
    if extended:
        assert (request.selection, request.returns, request.status) == \
            ({"SUBSCRIBED"}, {"SUBSCRIBED", "CHILDREN", "STATUS"}, [b"MESSAGES"])


folder_sets = st.lists(st.lists(st.sampled_from(["a", "b", "Sent", "x"]), min_size=1, max_size=3).map(".".join),
                       max_size=8)


def _snapshot(folders: list[str], subscribed: list[str]) -> Snapshot:
    existing = ["INBOX"] + sorted(set(folders) - {"INBOX"})
    return Snapshot(existing, set(subscribed), {"Sent": "\\Sent"} if "Sent" in existing else {}, ".")


@given(folder_sets, folder_sets, st.sampled_from(["*", "%", "a.%", "*.b", "a*", "a", "%.%"]))
def test_list_answers_every_matching_folder_and_level_once(folders, subscribed, pattern):
    account = _snapshot(folders, subscribed)
    entries = select(ListRequest(b"", [b""]), "", [pattern], account)
    listed = [entry.name for entry in entries]
    assert len(listed) == len(set(listed))
    levels = {parent for name in account.names for parent in ancestors(name, ".")}
    expected = {name for name in set(account.names) | levels if reference_match(pattern, name, ".")}
    assert set(listed) == expected
    for entry in entries:
        assert ("\\Noselect" in entry.attributes) == (entry.name not in account.names)


@given(folder_sets, folder_sets, st.sampled_from(["*", "%", "a.%", "a*", "%.%"]), st.booleans())
def test_subscriptions_are_listed_whether_or_not_the_folder_exists(folders, subscribed, pattern, recursive):
    account = _snapshot(folders, subscribed)
    lsub = [entry.name for entry in select(ListRequest(b"", [b""], lsub=True), "", [pattern], account)]
    matching = {name for name in account.subscribed if reference_match(pattern, name, ".")}
    assert matching <= set(lsub) and len(lsub) == len(set(lsub))
    selection = {"SUBSCRIBED", "RECURSIVEMATCH"} if recursive else {"SUBSCRIBED"}
    request = ListRequest(b"", [b""], selection, {"SUBSCRIBED"}, extended=True)
    entries = select(request, "", [pattern], account)
    chosen = {entry.name for entry in entries if "\\Subscribed" in entry.attributes}
    assert chosen == matching
    for entry in entries:
        assert ("\\NonExistent" in entry.attributes) == (entry.name not in account.names)
        if entry.name not in matching:
            assert recursive and entry.childinfo == ["SUBSCRIBED"]


@given(st.lists(st.one_of(any_bytes, st.sampled_from([b"(", b")", b"RETURN", b"(SUBSCRIBED)", b"STATUS (MESSAGES)",
                                                       b"{2+}\r\nab", b'""', b"*", b"(*", b"INBOX"])),
                max_size=8).map(b" ".join))
@examples(0.2)
def test_any_list_command_is_answered_and_the_session_goes_on(tmp_path_factory, arguments):
    session = Session(SyncReactor(), tmp_path_factory.mktemp("list"), implicit=True).login()
    line = arguments.replace(b"\r", b" ").replace(b"\n", b" ")
    if line.endswith(b"}"):
        line += b" "              # a literal announced at the end would take the next command as its octets
    for command in (b"l LIST ", b"m LSUB "):
        answer = session.send(command + line + b"\r\n")
        assert answer, arguments
    assert session.alive
    assert tagged(session.cmd(b'z LIST "" ""'), b"z").startswith(b"z OK")
