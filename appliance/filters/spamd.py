"""SpamAssassin through spamd: a native SPAMC/1.5 client (no spamc process) and the `spamd` check at end of DATA.

The protocol, as Debian's spamd (/usr/sbin/spamd, sub check) speaks it: the client sends
`SYMBOLS SPAMC/1.5`, a `Content-length:` header, an empty line and the message; spamd answers

    SPAMD/1.1 0 EX_OK
    Content-length: 42
    Spam: True ; 7.2 / 5.0

    GTUBE,MISSING_DATE,...

and closes. SYMBOLS is the smallest answer that carries everything we use (the score, the
required score and the names of the rules that hit); PROCESS would send the whole message back.
A refusal is a status line with another code (`SPAMD/1.0 76 Bad header line: ...`).

The verdict: score >= spam_reject_score refuses the message (550 5.7.1, the client's problem,
never a bounce); score >= spamd's required score sends it to the recipients' Junk folder;
anything else is delivered. Every scanned message gets X-Spam-Status and X-Spam-Score, and spam
X-Spam-Flag: YES, which is what POP3 users and mail clients filter on.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from appliance import replies
from appliance.config import ChecksSection
from appliance.filters import scanclient
from appliance.filters.base import Check, Facts, Verdict
from appliance.message import remove

MAX_ANSWER = 65536          # a SYMBOLS answer is a few hundred bytes; a longer one is not spamd's
MAX_TESTS = 100             # rule names kept for X-Spam-Status (a real answer has a dozen or so)
OUR_FIELDS = ("X-Spam-Flag", "X-Spam-Status", "X-Spam-Score")   # a sender's own copies are removed

_STATUS = re.compile(rb"SPAMD/(\d{1,3}\.\d{1,3}) +(\d{1,5}) *(.*)")
_NUMBER = rb"(-?\d{1,9}(?:\.\d{1,9})?)"
_SPAM = re.compile(rb"(True|False|Yes|No) *; *" + _NUMBER + rb" */ *" + _NUMBER)
_TEST = re.compile(rb"[A-Za-z0-9_]{1,64}")
_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


class SpamdError(ValueError):
    """spamd answered, but not with a score: a refusal or bytes that are not its protocol."""


@dataclass(frozen=True)
class SpamdAnswer:
    score: float
    required: float
    tests: tuple[str, ...] = ()

    @property
    def spam(self) -> bool:
        return self.score >= self.required


def request(message: bytes) -> list[bytes]:
    """A SYMBOLS request for `message` (wire form; spamd reads exactly Content-length bytes)."""
    return [b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message), message]


def _printable(text: bytes, limit: int = 100) -> str:
    return _PRINTABLE.sub(b"?", text[:limit]).decode("ascii")


def parse_answer(data: bytes) -> SpamdAnswer:
    """spamd's answer to SYMBOLS; SpamdError for a refusal or anything else that is not a score.

    Outside bytes: every field is matched against a strict pattern, rule names that are not
    plain identifiers are dropped (they go into a header field), numbers must be finite.
    """
    head, blank, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise SpamdError(f"not a spamd answer: {_printable(lines[0])!r}")
    if status.group(2) != b"0":
        raise SpamdError(f"spamd refused: {status.group(2).decode()} {_printable(status.group(3))}")
    if not blank:
        raise SpamdError("spamd's answer ended before its headers did")
    fields = dict(_header(line) for line in lines[1:])
    spam = _SPAM.fullmatch(fields.get(b"spam", b""))
    if spam is None:
        raise SpamdError("spamd's answer has no valid Spam: header")
    length = fields.get(b"content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise SpamdError("spamd's answer is shorter than its Content-length")
        body = body[:int(length)]
    score, required = float(spam.group(2)), float(spam.group(3))
    if not (math.isfinite(score) and math.isfinite(required)):
        raise SpamdError("spamd's score is not a number")
    tests = [name.decode("ascii") for name in body.strip().split(b",") if _TEST.fullmatch(name.strip())]
    return SpamdAnswer(score, required, tuple(tests[:MAX_TESTS]))


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, colon, value = line.partition(b":")
    if not colon:
        raise SpamdError(f"not a header line in spamd's answer: {_printable(line)!r}")
    return name.strip().lower(), value.strip()


def status_fields(answer: SpamdAnswer) -> tuple[tuple[str, str], ...]:
    """X-Spam-Status (folded like SpamAssassin's own), X-Spam-Score, and X-Spam-Flag: YES for spam."""
    words = [f"{'Yes' if answer.spam else 'No'},", f"score={answer.score:.1f}", f"required={answer.required:.1f}",
             "tests=" + (",".join(answer.tests) or "none")]
    fields = [("X-Spam-Status", _fold(" ".join(words))), ("X-Spam-Score", f"{answer.score:.1f}")]
    if answer.spam:
        fields.insert(0, ("X-Spam-Flag", "YES"))
    return tuple(fields)


def _fold(value: str, width: int = 70) -> str:
    """Fold a long X-Spam-Status after commas of the tests list (RFC 5322 2.2.3: lines under 78)."""
    lines, line = [], ""
    for piece in re.findall(r"[^,]+,?", value):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\r\n\t".join(lines)


class SpamdCheck(Check):
    """`[checks] spamd = host:port`: score each inbound message at end of DATA."""

    name = "spamd"

    def __init__(self, reactor: Any, settings: ChecksSection) -> None:
        self.reactor = reactor
        self.where = settings.spamd
        self.reject_score = settings.spam_reject_score
        self.failure = settings.scanner_failure
        self.timeout = settings.scanner_timeout
        self.max_size = settings.spamd_max_size

    def data(self, facts: Facts) -> defer.Deferred:
        return defer.ensureDeferred(self._score(facts))

    async def _score(self, facts: Facts) -> Verdict:
        txn = facts.txn
        message = txn.message
        # Whatever the outcome, a sender's own X-Spam-* fields must not pass for ours.
        txn.message = remove(message, *OUR_FIELDS)
        if len(message) > self.max_size:
            return scanclient.too_big(self.name, len(message), self.max_size, "spamd_max_size")
        try:
            data = await scanclient.ask(self.reactor, self.where, request(message), self.timeout, MAX_ANSWER)
            answer = parse_answer(data)
        except (scanclient.ScannerUnavailable, SpamdError) as problem:
            return scanclient.unavailable(self.name, self.failure, str(problem))
        return self.judge(answer)

    def judge(self, answer: SpamdAnswer) -> Verdict:
        reason = f"score={answer.score:.1f} required={answer.required:.1f} tests={','.join(answer.tests) or 'none'}"
        if answer.score >= self.reject_score:
            return Verdict.reject(replies.SPAM_REJECTED, f"{reason} reject_score={self.reject_score:g}")
        if answer.spam:
            return Verdict.junk(reason, *status_fields(answer))
        return Verdict.tag(reason, *status_fields(answer))
