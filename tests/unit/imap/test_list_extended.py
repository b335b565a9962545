"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and the SPECIAL-USE selection (RFC 6154), over a real socket.

The expected lines are what Dovecot 2.3 answers to the same commands on the same folders.
"""
from __future__ import annotations

import pytest

from tests.unit.imap.live import command


@pytest.fixture
def raw(server):
    """A logged-in client that sends commands byte for byte (live.command)."""
    return server.client()


def answer_to(raw, *parts: bytes) -> bytes:
    """A command sent in `parts` (live.command); its whole answer."""
    return b"".join(command(raw, *parts))


def send(raw, line: bytes) -> list[bytes]:
    """One command's untagged lines; its tagged reply must be OK."""
    answer = answer_to(raw, line + b"\r\n").split(b"\r\n")
    tag = line.split(b" ", 1)[0]
    assert answer[-2].startswith(tag + b" OK"), answer
    return [entry for entry in answer if entry.startswith(b"* ")]


def refused(raw, line: bytes) -> bytes:
    answer = answer_to(raw, line + b"\r\n")
    return answer.rsplit(b"\r\n", 2)[-2]


def setup_folders(raw) -> None:
    """INBOX, Drafts, Junk, Sent, Trash exist (first login); add a.b.c, foo, foo.bar; subscribe a.b.c and foo."""
    for name in (b"a.b.c", b"foo", b"foo.bar"):
        send(raw, b"c CREATE " + name)
    send(raw, b"s SUBSCRIBE a.b.c")
    send(raw, b"s SUBSCRIBE foo")


def test_capabilities_name_the_extensions(raw):
    capability = send(raw, b"c CAPABILITY")[0].split()
    assert b"LIST-EXTENDED" in capability and b"LIST-STATUS" in capability


def test_subscribed_selection_lists_subscriptions_with_their_state(raw):
    setup_folders(raw)
    send(raw, b"d DELETE a.b.c")
    send(raw, b"s SUBSCRIBE Nowhere")
    assert send(raw, b'l LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN)') == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." "INBOX"',
        b'* LIST (\\Subscribed \\HasNoChildren \\Drafts) "." "Drafts"',
        b'* LIST (\\Subscribed \\HasNoChildren \\Junk) "." "Junk"',
        b'* LIST (\\Subscribed \\NonExistent \\HasNoChildren) "." "Nowhere"',
        b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "." "Sent"',
        b'* LIST (\\Subscribed \\HasNoChildren \\Trash) "." "Trash"',
        b'* LIST (\\Subscribed \\NonExistent \\HasNoChildren) "." "a.b.c"',
        b'* LIST (\\Subscribed \\HasChildren) "." "foo"']
    # without RECURSIVEMATCH, a level above a subscription is not listed
    assert send(raw, b'l2 LIST (SUBSCRIBED) "" "a%"') == []


def test_recursivematch_reports_subscribed_children_in_childinfo(raw):
    setup_folders(raw)
    send(raw, b"s SUBSCRIBE foo.bar")
    lines = send(raw, b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)')
    assert b'* LIST (\\NonExistent \\HasChildren) "." "a" ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert b'* LIST (\\Subscribed \\HasChildren) "." "foo" ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert b'* LIST (\\Subscribed \\HasNoChildren) "." "INBOX"' in lines
    assert not any(b'"foo.bar"' in line for line in lines)            # `%` stops at the delimiter


def test_recursivematch_alone_and_unknown_options_are_bad(raw):
    assert refused(raw, b'l LIST (RECURSIVEMATCH) "" "*"').startswith(b"l BAD")
    assert refused(raw, b'l2 LIST (REMOTE RECURSIVEMATCH) "" "*"').startswith(b"l2 BAD")
    assert refused(raw, b'l3 LIST (BOGUS) "" "*"').startswith(b"l3 BAD")
    assert refused(raw, b'l4 LIST "" "*" RETURN (BOGUS)').startswith(b"l4 BAD")
    assert refused(raw, b'l5 LIST "" "*" RETURN (STATUS (MESSAGES BOGUS))').startswith(b"l5 BAD")
    assert refused(raw, b'l6 LIST "" "*" RETURN').startswith(b"l6 BAD")
    assert refused(raw, b'l7 LIST "" ("a" ("b"))').startswith(b"l7 BAD")
    assert refused(raw, b'l8 LSUB (SUBSCRIBED) "" "*"').startswith(b"l8 BAD")
    assert send(raw, b"n NOOP") == []                                  # the session goes on


def test_return_subscribed_and_children_decorate_a_full_listing(raw):
    setup_folders(raw)
    lines = send(raw, b'l LIST "" "%" RETURN (SUBSCRIBED CHILDREN)')
    assert b'* LIST (\\NonExistent \\HasChildren) "." "a"' in lines
    assert b'* LIST (\\Subscribed \\HasChildren) "." "foo"' in lines
    assert b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "." "Sent"' in lines
    # extended syntax without CHILDREN: no child attributes (as Dovecot); levels are \NonExistent
    assert b'* LIST (\\NonExistent) "." "a"' in send(raw, b'l2 LIST () "" "%"')
    assert b'* LIST () "." "foo"' in send(raw, b'l3 LIST (REMOTE) "" "%"')


def test_several_patterns_in_one_list(raw):
    setup_folders(raw)
    lines = send(raw, b'l LIST "" ("INBOX" "Sent" foo.% nothing)')
    assert lines == [b'* LIST () "." "INBOX"', b'* LIST (\\Sent) "." "Sent"', b'* LIST () "." "foo.bar"']
    assert send(raw, b'l2 LIST "" ("inbox" "INBOX")') == [b'* LIST () "." "INBOX"']   # each name once


def test_list_status_follows_each_selectable_folder_with_its_status(raw):
    setup_folders(raw)
    for n in range(3):
        message = b"Subject: m%d\r\n\r\nbody\r\n" % n
        flags = b"(\\Seen) " if n == 0 else b""
        assert b"OK" in answer_to(raw, b"ap APPEND foo.bar " + flags + b"{%d+}\r\n" % len(message), message + b"\r\n")
    lines = send(raw, b'l LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
    at = lines.index(b'* LIST () "." "foo.bar"')
    assert lines[at + 1] == b'* STATUS "foo.bar" (MESSAGES 3 UNSEEN 2)'
    level = lines.index(b'* LIST (\\NonExistent) "." "a"')
    assert not lines[level + 1].startswith(b"* STATUS")                 # a level has no status
    assert sum(line.startswith(b"* STATUS") for line in lines) == 8     # 5 special + a.b.c, foo, foo.bar
    lines = send(raw, b'l2 LIST (SUBSCRIBED) "" ("foo" "Sent") RETURN (CHILDREN STATUS (UIDNEXT MESSAGES))')
    assert lines == [b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "." "Sent"',
                     b'* STATUS "Sent" (UIDNEXT 1 MESSAGES 0)',
                     b'* LIST (\\Subscribed \\HasChildren) "." "foo"',
                     b'* STATUS "foo" (UIDNEXT 1 MESSAGES 0)']


def test_special_use_selection_and_return_option(raw):
    setup_folders(raw)
    assert send(raw, b'l LIST (SPECIAL-USE) "" "*"') == [
        b'* LIST (\\Drafts) "." "Drafts"', b'* LIST (\\Junk) "." "Junk"', b'* LIST (\\Sent) "." "Sent"',
        b'* LIST (\\Trash) "." "Trash"']
    assert b'* LIST (\\Sent) "." "Sent"' in send(raw, b'l2 LIST "" "%" RETURN (SPECIAL-USE)')


def test_literals_in_extended_list(raw):
    setup_folders(raw)
    answer = answer_to(raw, b"l LIST (SUBSCRIBED) {0}\r\n", b" ({3}\r\n", b"foo {1+}\r\n", b"*) RETURN (CHILDREN)\r\n")
    assert b'* LIST (\\Subscribed \\HasChildren) "." "foo"' in answer and b"l OK LIST" in answer
    assert answer.count(b"* LIST") == 7          # the five special folders, a.b.c and foo


def test_a_refused_list_never_runs_its_literal_plus_octets_as_commands(raw):
    answer = answer_to(raw, b'l LIST "unterminated {11+}\r\n', b"zz LOGOUT\r\n\r\n")
    assert answer.startswith(b"l BAD"), answer
    answer = answer_to(raw, b"l2 LIST (BOGUS) {3+}\r\n", b"zz2 *\r\n")
    assert answer.startswith(b"l2 BAD"), answer
    assert send(raw, b"n NOOP") == []                                 # not logged out: the octets were skipped


def test_a_list_literal_longer_than_any_name_is_refused_before_it_is_read(raw):
    answer = answer_to(raw, b'l LIST "" {5000}\r\n', b"never sent\r\n")
    assert answer.startswith(b"l BAD"), answer
    assert send(raw, b"n NOOP") == []
