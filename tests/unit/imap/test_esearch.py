"""ESEARCH (RFC 4731): SEARCH RETURN (MIN MAX COUNT ALL), the ALL set compressed, UID SEARCH as UIDs."""
from __future__ import annotations

import pytest

from appliance.imap.search import esearch, sequence_set
from tests.unit.imap.live import FORMATS, command, selected_inbox


@pytest.fixture(scope="module", params=sorted(FORMATS))
def client(request, tmp_path_factory):
    """UIDs 1, 3, 4, 5, 6, 7 (2 expunged) at sequence numbers 1 to 6; \\Seen on UIDs 1, 4 and 7 (numbers 1, 3, 6)."""
    flags = {0: "(\\Seen)", 1: "(\\Deleted)", 3: "(\\Seen)", 6: "(\\Seen)"}
    mail = [(flags.get(n), None, b"Subject: s%d\r\nFrom: bob@example.test\r\n\r\nbody %d\r\n" % (n, n))
            for n in range(7)]
    yield from selected_inbox(tmp_path_factory.mktemp("esearch"), request.param, mail)


@pytest.mark.parametrize("request_line, answer", [
    (b"a SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN", b'* ESEARCH (TAG "a") MIN 2 MAX 5 COUNT 3 ALL 2,4:5'),
    (b"a UID SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN", b'* ESEARCH (TAG "a") UID MIN 3 MAX 6 COUNT 3 ALL 3,5:6'),
    (b"a UID SEARCH RETURN () ALL", b'* ESEARCH (TAG "a") UID ALL 1,3:7'),
    (b"a SEARCH RETURN () ALL", b'* ESEARCH (TAG "a") ALL 1:6'),
    (b"a SEARCH RETURN (COUNT) SEEN", b'* ESEARCH (TAG "a") COUNT 3'),
    (b"a SEARCH RETURN (MAX) SEEN", b'* ESEARCH (TAG "a") MAX 6'),
    (b"a SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT nothing", b'* ESEARCH (TAG "a") COUNT 0'),
    (b"a SEARCH RETURN (ALL) SUBJECT nothing", b'* ESEARCH (TAG "a")'),
    (b"a SEARCH RETURN (COUNT) CHARSET UTF-8 SUBJECT s3", b'* ESEARCH (TAG "a") COUNT 1'),
])
def test_esearch_answers(client, request_line, answer):
    assert command(client, request_line + b"\r\n") == [answer + b"\r\n", b"a OK SEARCH completed\r\n"]


def test_a_plain_search_still_answers_search(client):
    assert command(client, b"a SEARCH UNSEEN\r\n") == [b"* SEARCH 2 4 5\r\n", b"a OK SEARCH completed\r\n"]


@pytest.mark.parametrize("request_line", [b"a SEARCH RETURN (FROB) ALL", b"a SEARCH RETURN ALL",
                                          b"a SEARCH RETURN (SAVE) ALL"])
def test_unknown_return_options_are_bad(client, request_line):
    assert command(client, request_line + b"\r\n")[-1].startswith(b"a BAD")
    assert command(client, b"b NOOP\r\n") == [b"b OK NOOP completed\r\n"]


def test_the_tag_is_quoted_as_a_string(client):
    assert command(client, b'x"1 SEARCH RETURN (COUNT) ALL\r\n')[0] == b'* ESEARCH (TAG "x\\"1") COUNT 6\r\n'


def test_sequence_sets_compress_runs():
    assert sequence_set([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8"
    assert sequence_set([]) == b""
    assert sequence_set([9, 3, 4, 1]) == b"9,3:4,1"          # ESORT keeps the order given
    assert esearch(b"t", [4, 2, 9], ["MIN", "MAX"], False) == b'ESEARCH (TAG "t") MIN 2 MAX 9'
    assert esearch(b"t", [4, 2, 9], ["MIN", "MAX", "ALL"], True, sorted_order=True) == \
        b'ESEARCH (TAG "t") UID MIN 4 MAX 9 ALL 4,2,9'
