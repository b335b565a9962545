"""Properties of the spamd and clamd answer parsers, and of the exchange that gathers an answer.

Any bytes give an answer or the parser's own error (which the checks turn into scanner_failure),
never another exception; what reaches a header field or a reply line is printable and
single-line; well-formed answers read back exactly; an answer split anywhere reads the same.
"""
from __future__ import annotations

import re

from hypothesis import example, given, strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from appliance.filters import scanclient
from appliance.filters.clamd import ClamdAnswer, ClamdError, parse_answer as clamd_answer
from appliance.filters.spamd import SpamdAnswer, SpamdError, parse_answer as spamd_answer, status_fields
from tests.unit.properties.strategies import any_bytes

_SAFE_NAME = re.compile(r"[A-Za-z0-9._:/+?-]+")      # "?" stands for each byte that was not safe
_FIELD_VALUE = re.compile(r"[\x20-\x7e]+(\r\n\t[\x20-\x7e]+)*")

spamd_like = st.builds(
    lambda status, headers, body: status + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body,
    st.sampled_from([b"SPAMD/1.1 0 EX_OK\r\n", b"SPAMD/1.0 76 Bad header line: x\r\n", b"SPAMD/1.1 0\r\n", b""]),
    st.lists(st.one_of(any_bytes, st.sampled_from([b"Content-length: 5", b"Content-length: -1", b"Spam: True ; 1 / 5",
                                                   b"Spam: False ; nan / 5", b"Spam: Yes;1e400/5", b"Spam:"])),
             max_size=4),
    any_bytes)
rule_names = st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=30), max_size=30)
scores = st.decimals(min_value=-999, max_value=9999, places=1, allow_nan=False, allow_infinity=False)


@given(st.one_of(any_bytes, spamd_like))
@example(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 99999999999999999999999 / 5\r\n\r\n")
@example(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 7 / 5\r\nContent-length: 99\r\n\r\nA,B")
def test_spamd_parser_answers_or_says_why_for_any_bytes(data):
    try:
        answer = spamd_answer(data)
    except SpamdError:
        return
    assert isinstance(answer, SpamdAnswer)
    for name, value in status_fields(answer):
        assert _FIELD_VALUE.fullmatch(value), (name, value)


@given(st.booleans(), scores, scores, rule_names)
def test_spamd_parser_reads_back_a_well_formed_answer(spam, score, required, tests):
    body = ",".join(tests).encode()
    data = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %s / %s\r\n\r\n"
            % (len(body), b"True" if spam else b"False", str(score).encode(), str(required).encode()) + body)
    answer = spamd_answer(data)
    assert (answer.score, answer.required, answer.tests) == (float(score), float(required), tuple(tests))


@given(any_bytes)
@example(b"stream: \r\n FOUND\0")
@example(b"stream:  FOUND")
def test_clamd_parser_answers_or_says_why_for_any_bytes(data):
    for candidate in (data, b"stream: " + data + b" FOUND\0"):
        try:
            answer = clamd_answer(candidate)
        except ClamdError as problem:
            assert "\r" not in str(problem) and "\n" not in str(problem)
            continue
        assert isinstance(answer, ClamdAnswer)
        if answer.outcome == "virus":
            assert _SAFE_NAME.fullmatch(answer.name) and len(answer.name) <= 200


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_:/+", min_size=1,
               max_size=100).filter(lambda name: name.strip("?")))
def test_clamd_parser_reads_back_a_signature_name(name):
    answer = clamd_answer(b"stream: " + name.encode() + b" FOUND\0")
    assert (answer.outcome, answer.name) == ("virus", name)


@given(st.one_of(any_bytes, spamd_like), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_an_answer_split_anywhere_is_gathered_whole(data, cuts):
    """The exchange gives the answer exactly as sent, however TCP cuts it, up to its limit."""
    answer: defer.Deferred = defer.Deferred()
    exchange = scanclient._Exchange([b"request"], 1 << 20, answer)
    exchange.makeConnection(StringTransport())
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:]):
        exchange.dataReceived(data[start:end])
    exchange.connectionLost(Failure(ConnectionDone()))
    got: list = []
    answer.addBoth(got.append)
    assert got == [data]


@given(st.binary(min_size=1, max_size=50), st.integers(min_value=0, max_value=40))
def test_an_answer_over_the_limit_is_a_scanner_failure(data, limit):
    answer: defer.Deferred = defer.Deferred()
    exchange = scanclient._Exchange([b"request"], limit, answer)
    exchange.makeConnection(StringTransport())
    exchange.dataReceived(data)
    exchange.connectionLost(Failure(ConnectionDone()))
    got: list = []
    answer.addBoth(got.append)
    if len(data) <= limit:
        assert got == [data]
    else:
        assert isinstance(got[0], Failure) and got[0].check(scanclient.ScannerUnavailable)
