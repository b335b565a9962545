"""Properties of the SMTP server's parsers: command lines, paths and parameters, DATA unstuffing,
and the whole protocol fed random bytes in random chunks.

Only the reply table may come out: every output line is a reply line, and no command ends in
the "local error" that means an exception was caught.
"""
from __future__ import annotations

import re

from hypothesis import given, example, strategies as st

from appliance import address
from appliance.smtp.server import MAX_LINE, _mailbox, _parse_path, _SASLExchange, unstuff
from tests.unit.properties.strategies import address_like, addresses, any_bytes, examples, no_logged_failures
from tests.unit.test_smtp_server import Rig

_REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9][ -][\x20-\x7e]*$")


@given(any_bytes, st.sampled_from([b"FROM:", b"TO:"]))
def test_parse_path_answers_none_or_a_path_with_upper_case_parameters(rest, keyword):
    parsed = _parse_path(rest, keyword)
    if parsed is not None:
        path, params = parsed
        assert isinstance(path, str) and path and not any(c.isspace() for c in path if c in " \t\r\n")
        assert all(key == key.upper() for key in params)


@given(addresses, st.dictionaries(st.sampled_from(["SIZE", "BODY", "AUTH", "X-ONE"]),
                                  st.text(alphabet="ABCxyz0123456789<>@.", max_size=8), max_size=3),
       st.sampled_from([b"FROM:", b"from:", b"To:"]))
def test_parse_path_reads_back_what_a_client_wrote(mailbox, params, keyword):
    line = keyword + f"<{mailbox}>".encode() + b"".join(f" {k}={v}".encode() for k, v in params.items())
    assert _parse_path(line, keyword.upper()) == (f"<{mailbox}>", params)


@given(st.one_of(st.text(max_size=80), address_like, addresses.map(lambda a: f"<{a}>")), st.booleans())
@example("<a@.>", False)                    # was "a@": an address without a domain
@example("<" + "İ" * 64 + "@x.test>", True)  # was a 128-character local part that is_valid refuses
@example("0@\u00b4", False)                  # was "0@xn-- -xbb", a domain with a blank in it
def test_mailbox_is_none_or_a_valid_normalised_address(path, null_ok):
    mailbox = _mailbox(path, null_ok=null_ok, default_domain="example.test")
    if mailbox is None:
        return
    if mailbox == "":
        assert null_ok
        return
    assert address.is_valid(mailbox), mailbox
    assert address.normalise(mailbox) == mailbox


def _stuff(body: bytes) -> bytes:
    """What a client sends: each line that starts with a dot gets another one (RFC 5321 4.5.2)."""
    return b"".join(b"." + line if line.startswith(b".") else line for line in body.splitlines(keepends=True))


_lines = st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=10)


@given(_lines)
def test_unstuff_undoes_dot_stuffing(lines):
    body = b"".join(line + b"\r\n" for line in lines)
    assert unstuff(_stuff(body)) == body


@given(any_bytes)
def test_unstuff_leaves_no_bare_cr_or_lf(data):
    body = unstuff(data + b"\r\n")
    assert body.count(b"\r") == body.count(b"\r\n") == body.count(b"\n")


# ---------------------------------------------------------------- the protocol, byte by byte

_commands = st.sampled_from([
    b"EHLO client.test", b"HELO client.test", b"MAIL FROM:<x@remote.test>", b"MAIL FROM:<>",
    b"MAIL FROM:<x@remote.test> SIZE=100 BODY=8BITMIME", b"RCPT TO:<alice@example.test>",
    b"RCPT TO:<nobody@example.test>", b"RCPT TO:<Postmaster>", b"RCPT TO:<x@elsewhere.test>", b"DATA",
    b"RSET", b"NOOP", b"VRFY alice", b"EXPN staff", b"HELP", b"AUTH PLAIN", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    b"AUTH LOGIN", b"AUTH LOGIN YWxpY2VAZXhhbXBsZS50ZXN0", b"c2VjcmV0", b"AUTH CRAM-MD5", b"AUTH PLAIN =",
    b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=", b"AUTH PLAIN AAAA", b"AUTH PLAIN \xff", b"=", b"AAA=",
    b"STARTTLS", b"BDAT 10 LAST", b"MAIL FROM:<a@.>", b"RCPT TO:<a@.>", b"RCPT TO:<alice@example.test.>", b".", b"..", b"Subject: x", b"", b"*", b"QUIT",
])
_lines_of_input = st.lists(st.one_of(_commands, any_bytes, st.binary(min_size=MAX_LINE - 4, max_size=MAX_LINE + 4)),
                           max_size=12)


def _session_input(lines: list[bytes], ends: list[bytes]) -> bytes:
    return b"".join(line + ends[n % len(ends)] for n, line in enumerate(lines))


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def _replies(chunks: list[bytes], kind: str = "mx") -> list[bytes]:
    rig = Rig(kind, plaintext_ok="192.0.2.0/24")       # AUTH offered in the clear on submission
    with no_logged_failures() as failures:
        out: list[bytes] = []
        for chunk in chunks:
            out += rig.send(chunk)
        rig.close()
    assert not failures, failures[0][1].getTraceback()
    return out


@examples(0.5)
@given(st.sampled_from(["mx", "submission"]), _lines_of_input, st.lists(st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r"]), min_size=1, max_size=3),
       st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=6))
def test_the_session_answers_only_reply_lines_whatever_the_chunks(kind, lines, ends, cuts):
    data = _session_input(lines, ends)
    out = _replies(_chunks(data, cuts), kind)
    for line in out:
        assert _REPLY_LINE.match(line), line
        assert not line.startswith(b"451 4.3.0"), line           # the local error: an exception was caught
    # However the bytes were cut into chunks, the answers are the same (queue ids aside).
    whole = _replies([data], kind)
    mask = re.compile(rb"queued as \S+")
    assert [mask.sub(b"queued", line) for line in out] == [mask.sub(b"queued", line) for line in whole]


@given(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]), st.lists(any_bytes, min_size=1, max_size=3))
@example("LOGIN", [b"", b""])     # an empty user name went on to a password check; PLAIN refuses it
def test_a_sasl_exchange_answers_credentials_another_challenge_or_value_error(mechanism, responses):
    exchange = _SASLExchange(mechanism, "mail.example.test")
    for response in responses:
        try:
            credentials = exchange.respond(response)
        except ValueError:
            return
        if credentials is not None:
            assert credentials.username
            return
        assert exchange.challenge()
