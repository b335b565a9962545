"""THREAD and UID THREAD (RFC 5256): ORDEREDSUBJECT and REFERENCES, the algorithms alone and over a socket."""
from __future__ import annotations

import pytest

from appliance.imap.thread import Node, Post, ordered_subject, references, render
from tests.unit.imap.live import FORMATS, command, selected_inbox


def post(number: int, date: float, subject: bytes, message_id: bytes | None = None, refs: bytes | None = None,
         in_reply_to: bytes | None = None) -> Post:
    return Post(number, number, date, subject, message_id, refs, in_reply_to)


# ---- the algorithms, pure -----------------------------------------------------------------------------

def test_render_follows_the_rfc_example():
    """RFC 5256 4: `(3 6 (4 23)(44 7 96))`, a lone child continuing its parent's list."""
    def node(n, *children):
        made = Node(Post(n, n, 0.0, None))
        for child in children:
            child.parent = made
            made.children.append(child)
        return made
    tree = node(3, node(6, node(4, node(23)), node(44, node(7, node(96)))))
    assert render([node(2), tree]) == b"(2)(3 6 (4 23)(44 7 96))"
    dummy = Node(None, children=[node(3), node(5)])
    assert render([dummy]) == b"((3)(5))"


def test_references_builds_the_reply_tree():
    posts = [post(1, 1, b"plan", b"<1@x>"),
             post(2, 2, b"Re: plan", b"<2@x>", b"<1@x>"),
             post(3, 3, b"other", b"<3@x>"),
             post(4, 4, b"Re: plan", b"<4@x>", b"<1@x> <2@x>"),
             post(5, 5, b"Re: plan", b"<5@x>", None, b"<1@x>")]          # In-Reply-To when no References
    assert render(references(posts)) == b"(1 (2 4)(5))(3)"


def test_a_missing_parent_becomes_a_dummy_and_siblings_stay_together():
    posts = [post(1, 1, b"Re: lost", b"<1@x>", b"<gone@x>"), post(2, 2, b"Re: lost", b"<2@x>", b"<gone@x>")]
    assert render(references(posts)) == b"((1)(2))"


def test_a_dummy_with_one_child_is_promoted():
    assert render(references([post(1, 1, b"x", b"<1@x>", b"<gone@x>")])) == b"(1)"


def test_threads_with_the_same_base_subject_are_merged():
    """Step 6: a reply that lost its References joins the thread of its subject."""
    posts = [post(1, 1, b"lunch", b"<1@x>"), post(2, 2, b"Re: lunch", b"<2@x>"), post(3, 3, b"other", b"<3@x>")]
    assert render(references(posts)) == b"(1 2)(3)"


def test_two_originals_with_one_subject_share_a_dummy():
    posts = [post(1, 1, b"lunch", b"<1@x>"), post(2, 2, b"lunch", b"<2@x>")]
    assert render(references(posts)) == b"((1)(2))"


def test_threads_and_siblings_are_ordered_by_sent_date_then_mailbox_order():
    posts = [post(1, 50, b"a", b"<1@x>"), post(2, 10, b"b", b"<2@x>"),
             post(3, 30, b"Re: a", b"<3@x>", b"<1@x>"), post(4, 20, b"Re: a", b"<4@x>", b"<1@x>"),
             post(5, 10, b"c", b"<5@x>")]
    assert render(references(posts)) == b"(2)(5)(1 (4)(3))"


def test_duplicate_message_ids_and_loops_do_not_break_the_tree():
    posts = [post(1, 1, b"a", b"<1@x>", b"<2@x>"), post(2, 2, b"b", b"<2@x>", b"<1@x>"),
             post(3, 3, b"c", b"<1@x>"), post(4, 4, b"d", b"<4@x>", b"<4@x>")]
    text = render(references(posts))
    numbers = sorted(int(n) for n in text.replace(b"(", b" ").replace(b")", b" ").split())
    assert numbers == [1, 2, 3, 4]                     # every message exactly once


def test_a_very_long_reply_chain_needs_no_recursion():
    posts = [post(1, 0, b"start", b"<0@x>")]
    for n in range(1, 5000):
        posts.append(post(n + 1, n, b"Re: start", b"<%d@x>" % n, b"<%d@x>" % (n - 1)))
    text = render(references(posts))
    assert text.startswith(b"(1 2 3 ") and text.endswith(b" 4999 5000)")


def test_ordered_subject_groups_by_base_subject():
    posts = [post(1, 3, b"Re: lunch"), post(2, 1, b"dinner"), post(3, 2, b"lunch"), post(4, 4, b"Fwd: lunch"),
             post(5, 5, b"Re: dinner")]
    assert render(ordered_subject(posts)) == b"(2 5)(3 (1)(4))"


# ---- THREAD over a real socket, Maildir and mbox -------------------------------------------------------

THREAD_MAIL = [
    b"Message-ID: <a@x>\r\nDate: Mon, 3 Jan 2022 10:00:00 +0000\r\nSubject: plan\r\n\r\nx\r\n",
    b"Message-ID: <b@x>\r\nDate: Mon, 3 Jan 2022 11:00:00 +0000\r\nSubject: Re: plan\r\nReferences: <a@x>\r\n\r\nx\r\n",
    b"Message-ID: <c@x>\r\nDate: Sun, 2 Jan 2022 10:00:00 +0000\r\nSubject: other\r\n\r\nx\r\n",
    b"Message-ID: <d@x>\r\nDate: Tue, 4 Jan 2022 10:00:00 +0000\r\nSubject: Re: plan\r\nIn-Reply-To: <b@x>\r\n"
    b"References: <a@x>\r\n <b@x>\r\n\r\nx\r\n",
    b"Message-ID: <e@x>\r\nDate: Tue, 4 Jan 2022 12:00:00 +0000\r\nSubject: Re: other\r\n\r\nx\r\n",
]


@pytest.fixture(scope="module", params=sorted(FORMATS))
def client(request, tmp_path_factory):
    gone = ("(\\Deleted)", None, b"Subject: gone\r\n\r\ngone\r\n")
    yield from selected_inbox(tmp_path_factory.mktemp("thread"), request.param,
                              [gone] + [(None, None, data) for data in THREAD_MAIL])


@pytest.mark.parametrize("line, answer", [
    (b"a THREAD REFERENCES UTF-8 ALL", b"* THREAD (3 5)(1 2 4)"),
    (b"a UID THREAD REFERENCES UTF-8 ALL", b"* THREAD (4 6)(2 3 5)"),
    (b"a THREAD ORDEREDSUBJECT UTF-8 ALL", b"* THREAD (3 5)(1 (2)(4))"),
    (b"a THREAD REFERENCES US-ASCII SUBJECT plan", b"* THREAD (1 2 4)"),
    (b"a THREAD REFERENCES UTF-8 SUBJECT nothing", b"* THREAD"),
])
def test_thread(client, line, answer):
    assert command(client, line + b"\r\n") == [answer + b"\r\n", b"a OK THREAD completed\r\n"]


def test_thread_through_imaplib(client):
    assert client.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3 5)(1 2 4)"])


@pytest.mark.parametrize("line, status", [
    (b"a THREAD FROBS UTF-8 ALL", b"a BAD"),
    (b"a THREAD REFERENCES KOI8-R ALL", b"a NO [BADCHARSET"),
    (b"a THREAD", b"a BAD"),
])
def test_thread_refusals(client, line, status):
    assert command(client, line + b"\r\n")[-1].startswith(status)
    assert command(client, b"b NOOP\r\n") == [b"b OK NOOP completed\r\n"]
