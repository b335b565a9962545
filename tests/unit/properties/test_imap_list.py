"""Properties of LIST (appliance/imap/listing.py): the pattern matcher against the RFC's rule, the argument
parser against any bytes, and the answer against what RFC 3501 6.3.8-9 and RFC 5258 promise.
"""
from __future__ import annotations

import re

from hypothesis import example, given, strategies as st

from appliance.imap.listing import (ListRequest, ListSyntaxError, Snapshot, ancestors, matcher, parse_request,
                                    select, tokenize)
from tests.unit.imap.harness import Session, SyncReactor, tagged
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
                max_size=12).map(b" ".join))
def test_list_arguments_parse_or_are_refused_as_syntax(line):
    try:
        tokens, literal = tokenize(line)
        request = parse_request(tokens, STATUS_ITEMS)
    except ListSyntaxError:
        return
    assert literal is None or literal.startswith(b"{")
    assert request.patterns and all(isinstance(p, bytes) for p in request.patterns)
    assert "SUBSCRIBED" not in request.selection or "SUBSCRIBED" in request.returns
    assert "RECURSIVEMATCH" not in request.selection or request.selection - {"RECURSIVEMATCH", "REMOTE"}


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
