"""ClamAV through clamd: a native INSTREAM client and the `clamd` check at end of DATA.

The protocol (clamd(8), "INSTREAM"): the client sends `zINSTREAM\\0`, then the data as chunks,
each a 4-byte big-endian length and that many bytes, and a zero-length chunk to end it. clamd
answers one NUL-terminated line and closes:

    stream: OK
    stream: Eicar-Test-Signature FOUND
    INSTREAM size limit exceeded. ERROR

clamd drops the connection once more than its StreamMaxLength arrived, and nothing in the
protocol tells a client that limit, so `[checks] clamd_max_size` says it (default 25 MB, the
StreamMaxLength of Debian's clamd.conf): a bigger message is not sent at all and is delivered
unscanned with a log line, as clamav-milter does with its MaxFileSize. A clamd configured lower
answers "size limit exceeded", which is treated the same way (and the log line says to lower
the key), not as a scanner failure: retrying would meet the same limit for five days.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from appliance import replies
from appliance.config import ChecksSection
from appliance.filters import scanclient
from appliance.filters.base import Check, Facts, Verdict

CHUNK = 65536               # bytes per INSTREAM chunk (clamdscan sends about this much at a time)
MAX_ANSWER = 4096           # one line naming a signature; a longer answer is not clamd's
MAX_NAME = 200
CLEAN, VIRUS, TOO_BIG = "clean", "virus", "too-big"

_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:/+-]")


class ClamdError(ValueError):
    """clamd answered with an error, or with bytes that are not its protocol."""


@dataclass(frozen=True)
class ClamdAnswer:
    outcome: str            # clean | virus | too-big
    name: str = ""          # the signature, for a virus


def request(message: bytes, chunk: int = CHUNK) -> list[bytes]:
    """`zINSTREAM\\0`, the message in length-prefixed chunks, and the zero-length chunk that ends it."""
    parts = [b"zINSTREAM\0"]
    for start in range(0, len(message), chunk):
        piece = message[start:start + chunk]
        parts += [struct.pack(">I", len(piece)), piece]
    parts.append(struct.pack(">I", 0))
    return parts


def signature_name(raw: bytes) -> str:
    """A signature name safe for a reply line and the log: printable, no spaces, bounded."""
    name = _NAME_CHARS.sub("?", raw.decode("ascii", "replace"))[:MAX_NAME].strip("?")
    return name or "unnamed"


def parse_answer(data: bytes) -> ClamdAnswer:
    """clamd's answer to INSTREAM; ClamdError for an error or anything that is not an answer."""
    line = data.split(b"\0", 1)[0].strip()
    if line == b"stream: OK":
        return ClamdAnswer(CLEAN)
    if line.startswith(b"stream: ") and line.endswith(b" FOUND"):
        return ClamdAnswer(VIRUS, signature_name(line[len(b"stream: "):-len(b" FOUND")].strip()))
    if line.endswith(b"ERROR") and b"size limit exceeded" in line:
        return ClamdAnswer(TOO_BIG)
    text = re.sub(rb"[^\x20-\x7e]", b"?", line[:100]).decode("ascii")
    if line.endswith(b"ERROR"):
        raise ClamdError(f"clamd error: {text}")
    raise ClamdError(f"not a clamd answer: {text!r}")


class ClamdCheck(Check):
    """`[checks] clamd = host:port | /path/to/clamd.ctl`: refuse viruses at end of DATA, 554 5.7.1."""

    name = "clamd"

    def __init__(self, reactor: Any, settings: ChecksSection) -> None:
        self.reactor = reactor
        self.where = settings.clamd
        self.failure = settings.scanner_failure
        self.timeout = settings.scanner_timeout
        self.max_size = settings.clamd_max_size

    def data(self, facts: Facts) -> defer.Deferred:
        return defer.ensureDeferred(self._scan(facts.txn.message))

    async def _scan(self, message: bytes) -> Verdict | None:
        if len(message) > self.max_size:
            return scanclient.too_big(self.name, len(message), self.max_size, "clamd_max_size")
        try:
            data = await scanclient.ask(self.reactor, self.where, request(message), self.timeout, MAX_ANSWER)
            answer = parse_answer(data)
        except (scanclient.ScannerUnavailable, ClamdError) as problem:
            return scanclient.unavailable(self.name, self.failure, str(problem))
        if answer.outcome == VIRUS:
            return Verdict.reject(replies.VIRUS_FOUND.with_text(f"Virus found: {answer.name}"),
                                  f"virus {answer.name}")
        if answer.outcome == TOO_BIG:
            return Verdict.accept(f"not scanned: clamd refused {len(message)} bytes as over its StreamMaxLength; "
                                  "set clamd_max_size to it")
        return None
