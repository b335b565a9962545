"""SORT and UID SORT (RFC 5256 3), DISPLAYFROM/DISPLAYTO (RFC 5957), ESORT (RFC 5267), and base subjects (RFC 5256 2.1)."""
from __future__ import annotations

import calendar
import imaplib

import pytest

from appliance.imap.sort import base_subject, subject_key
from tests.unit.imap.live import FORMATS, LiveServer, command, selected_inbox


def _message(headers: str, body_size: int) -> bytes:
    return (headers.replace("\n", "\r\n") + "\r\n" + "x" * body_size + "\r\n").encode()


def _day(day: int) -> str:
    return imaplib.Time2Internaldate(calendar.timegm((2022, 1, day, 0, 0, 0)))


# Sequence numbers 1 to 5 (UIDs 2 to 6: UID 1 is expunged first), each with its INTERNALDATE day.
MESSAGES = [
    (_message("Date: Mon, 3 Jan 2022 10:00:00 +0000\nSubject: Re: Budget\nFrom: Zed <zed@example.test>\n"
              "To: amy@example.test\n", 300), 5),
    (_message("Date: Sun, 2 Jan 2022 10:00:00 +0000\nSubject: apples\nFrom: Bob <bob@example.test>\n"
              "To: yves@example.test\nCc: carl@example.test\n", 1000), 1),
    (_message("Subject: [list] Fwd: Cherries (fwd)\nFrom: alice@example.test\n"
              "To: =?UTF-8?Q?=C3=89mile?= <emile@example.test>\n", 50), 2),
    (_message("Date: Tue, 4 Jan 2022 09:00:00 +0100\nSubject: budget\nFrom: Mallory <mallory@example.test>\n"
              "To: amy@example.test\n", 500), 3),
    (_message("Date: Mon, 3 Jan 2022 11:00:00 +0100\nSubject: Apples\nFrom: Aaron <bob@example.test>\n", 100), 4),
]


@pytest.fixture(scope="module", params=sorted(FORMATS))
def client(request, tmp_path_factory):
    gone = ("(\\Deleted)", None, b"Subject: gone\r\n\r\ngone\r\n")
    yield from selected_inbox(tmp_path_factory.mktemp("sort"), request.param,
                              [gone] + [(None, _day(day), data) for data, day in MESSAGES])


@pytest.mark.parametrize("criteria, order", [
    (b"(DATE)", b"3 2 1 5 4"),               # 3 has no Date: its INTERNALDATE; 1 and 5 tie (same UTC time)
    (b"(REVERSE DATE)", b"4 1 5 2 3"),       # a tie stays in mailbox order under REVERSE
    (b"(ARRIVAL)", b"2 3 4 5 1"),
    (b"(SUBJECT)", b"2 5 1 4 3"),            # base subjects: apples, budget, cherries
    (b"(FROM)", b"3 2 5 4 1"),               # the local part: alice, bob, bob, mallory, zed
    (b"(TO)", b"5 1 4 3 2"),                 # no To sorts first
    (b"(CC)", b"1 3 4 5 2"),
    (b"(SIZE)", b"3 5 1 4 2"),
    (b"(REVERSE SIZE)", b"2 4 1 5 3"),
    (b"(DISPLAYFROM)", b"5 3 2 4 1"),        # Aaron, alice@example.test, Bob, Mallory, Zed
    (b"(DISPLAYTO)", b"5 1 4 3 2"),          # the decoded display name Émile
    (b"(SUBJECT REVERSE DATE)", b"5 2 4 1 3"),
])
def test_sort_criteria(client, criteria, order):
    assert command(client, b"a SORT " + criteria + b" UTF-8 ALL\r\n") == \
        [b"* SORT " + order + b"\r\n", b"a OK SORT completed\r\n"]


def test_uid_sort_answers_uids(client):
    assert command(client, b"a UID SORT (DATE) UTF-8 ALL\r\n") == [b"* SORT 4 3 2 6 5\r\n", b"a OK SORT completed\r\n"]


def test_sort_applies_the_search_keys(client):
    assert command(client, b"a SORT (REVERSE ARRIVAL) US-ASCII OR SUBJECT apples FROM zed\r\n") == \
        [b"* SORT 1 5 2\r\n", b"a OK SORT completed\r\n"]
    assert command(client, b"a SORT (DATE) UTF-8 SUBJECT nothing\r\n") == [b"* SORT\r\n", b"a OK SORT completed\r\n"]


def test_sort_through_imaplib(client):
    typ, data = client.sort("(SUBJECT)", "UTF-8", "ALL")
    assert (typ, data) == ("OK", [b"2 5 1 4 3"])


def test_esort_returns(client):
    assert command(client, b"a SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL\r\n") == \
        [b'* ESEARCH (TAG "a") MIN 3 MAX 4 COUNT 5 ALL 3,2,1,5,4\r\n', b"a OK SORT completed\r\n"]
    assert command(client, b"a UID SORT RETURN (COUNT) (DATE) UTF-8 ALL\r\n") == \
        [b'* ESEARCH (TAG "a") UID COUNT 5\r\n', b"a OK SORT completed\r\n"]


@pytest.mark.parametrize("line, status", [
    (b"a SORT (FROB) UTF-8 ALL", b"a BAD"),
    (b"a SORT DATE UTF-8 ALL", b"a BAD"),
    (b"a SORT (REVERSE) UTF-8 ALL", b"a BAD"),
    (b"a SORT () UTF-8 ALL", b"a BAD"),
    (b"a SORT (DATE) UTF-8", b"a BAD"),
    (b"a SORT (DATE) KOI8-R ALL", b"a NO [BADCHARSET (US-ASCII UTF-8)]"),
])
def test_sort_refusals(client, line, status):
    assert command(client, line + b"\r\n")[-1].startswith(status)
    assert command(client, b"b NOOP\r\n") == [b"b OK NOOP completed\r\n"]


def test_sort_needs_a_selected_mailbox(tmp_path):
    server = LiveServer(tmp_path)
    try:
        assert command(server.client(), b"a SORT (DATE) UTF-8 ALL\r\n")[-1].startswith(b"a BAD")
    finally:
        server.stop()


# ---- base subject extraction (RFC 5256 2.1), pure ----------------------------------------------------

@pytest.mark.parametrize("subject, base, refwd", [
    ("Hello", "Hello", False),
    ("Re: Hello", "Hello", True),
    ("RE: re: Re: Hello", "Hello", True),
    ("Re[2]: Hello", "Hello", True),                  # subj-refwd: "re" *WSP [subj-blob] ":"
    ("Re [2]: Hello", "Hello", True),
    ("Re 2: Hello", "Re 2: Hello", False),
    ("Fwd: Hello", "Hello", True),
    ("Fw: Hello", "Hello", True),
    ("Hello (fwd)", "Hello", True),
    ("Hello (FWD) (fwd)  ", "Hello", True),
    ("[fwd: Hello]", "Hello", True),
    ("[Fwd: Re: Hello (fwd)]", "Hello", True),
    ("[list] Hello", "Hello", False),
    ("[list] Re: Hello", "Hello", True),
    ("[list][other] Re: [x] Hello", "Hello", True),
    ("[only a blob]", "[only a blob]", False),        # removing it would leave nothing
    ("[a] [b]", "[b]", False),
    ("Hello\t  world", "Hello world", False),
    ("   ", "", False),
    ("Re:", "", True),
    ("", "", False),
])
def test_base_subject(subject, base, refwd):
    assert base_subject(subject) == (base, refwd)


def test_subjects_compare_as_i_ascii_casemap():
    """RFC 5256 3: i;ascii-casemap upper-cases, so `_` sorts after the letters, and case never counts."""
    assert subject_key(b"Re: _notes")[0] > subject_key(b"Zebra")[0]
    assert subject_key(b"apple")[0] == subject_key(b"Fwd: APPLE")[0]
    assert subject_key(b"=?UTF-8?Q?=C3=A9t=C3=A9?=")[0] == subject_key("ÉTÉ".encode())[0]
