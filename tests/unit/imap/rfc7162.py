"""Speaking RFC 7162 (CONDSTORE, QRESYNC) and RFC 5161 (ENABLE) with imaplib, which knows neither.

For the unit tests over live.LiveServer, the integration test against the daemon and bench/imap_qresync.
"""
from __future__ import annotations

import imaplib
import re


class Answer:
    """One command's answer: the tagged status and text, and the untagged responses by kind."""

    def __init__(self, status: str, text: bytes, untagged: dict[str, list]):
        self.status, self.text, self.untagged = status, text, untagged


def run(client: imaplib.IMAP4, name: str, args: str = "") -> Answer:
    """Send `name args` as is (imaplib knows nothing of RFC 7162 syntax) and collect the answer."""
    client.untagged_responses.clear()
    state = client.state
    if name == "ENABLE":
        client.state = "AUTH"           # imaplib allows ENABLE before SELECT only; RFC 5161 servers need not check
    tag = client._command(name, *([args] if args else []))
    client.state = state
    try:
        status, data = client._command_complete(name, tag)
    except client.error as exc:                     # BAD
        return Answer("BAD", str(exc).encode(), {})
    if name in ("SELECT", "EXAMINE") and status == "OK":
        client.state = "SELECTED"
    return Answer(status, data[-1] or b"", {key: list(value) for key, value in client.untagged_responses.items()})


_FETCH = re.compile(rb"^(\d+) \((.*)\)$", re.S)


def fetches(answer: Answer) -> dict[int, dict]:
    """uid -> {"seq", "flags", "modseq"} of the untagged FETCH responses; \\Recent is left out of the flags
    (which session claimed it depends on who selected first)."""
    out: dict[int, dict[str, object]] = {}
    for data in answer.untagged.get("FETCH", []):
        if isinstance(data, tuple):
            data = data[0]
        match = _FETCH.match(data)
        assert match, data
        body = match.group(2)
        uid = re.search(rb"UID (\d+)", body)
        modseq = re.search(rb"MODSEQ \((\d+)\)", body)
        flags = re.search(rb"FLAGS \(([^)]*)\)", body)
        assert uid, data
        out[int(uid.group(1))] = {"seq": int(match.group(1)),
                                  "modseq": int(modseq.group(1)) if modseq else None,
                                  "flags": set(flags.group(1).decode().split()) - {"\\Recent"} if flags else None}
    return out


def number(answer: Answer, code: str) -> int:
    """The number of a response code such as HIGHESTMODSEQ, UIDVALIDITY."""
    values = answer.untagged.get(code)
    assert values, (code, answer.untagged)
    return int(values[-1])


def uid_set(text: bytes) -> set[int]:
    out: set[int] = set()
    for item in text.split(b","):
        low, _, high = item.partition(b":")
        out.update(range(int(low), int(high or low) + 1))
    return out


def vanished(answer: Answer, earlier: bool) -> set[int]:
    """The UIDs of the VANISHED responses of one kind (with or without `(EARLIER)`)."""
    out: set[int] = set()
    for data in answer.untagged.get("VANISHED", []):
        if data.startswith(b"(EARLIER) ") == earlier:
            out |= uid_set(data.removeprefix(b"(EARLIER) "))
    return out
