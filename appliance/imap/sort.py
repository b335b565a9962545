"""SORT (RFC 5256 3, RFC 5957 DISPLAYFROM/DISPLAYTO): base subjects and sort keys, pure functions.

Every key comes from the store's cached metadata (size, INTERNALDATE, the ENVELOPE), never from the
message files, so sorting 10,000 messages costs a walk over the index; the parsed envelope and
the derived keys are memoised by the envelope's octets (appliance.imap.envelope).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import appliance.imap.envelope as envelope
from appliance.imap.backend import Meta

CRITERIA = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")

# RFC 5256 2.1's grammar (subj-blob, subj-refwd, subj-leader, subj-trailer), case-insensitive.
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(r"(?:(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:|[ \t]+)", re.I)
_BLOB_PREFIX = re.compile(_BLOB)
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_MAX_ROUNDS = 10000          # step 6 rounds: each removes "[fwd:" and "]", so a subject line cannot need more


class SortError(ValueError):
    """Sort criteria that are not RFC 5256's: BAD."""


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 2.1 steps 2-6 on a decoded subject: (base subject, whether it was a reply or forward).

    Step 1 (decoding encoded words, blanks) is `subject_key`'s; the result keeps its case.
    """
    text, refwd = envelope.blanks(subject), False
    for _ in range(_MAX_ROUNDS):
        text, trailer = _strip_trailers(text)
        refwd = refwd or trailer
        text, leader = _strip_leaders(text)
        refwd = refwd or leader
        if text[:5].lower() == "[fwd:" and text.endswith("]"):      # step 6, then again from step 2
            text, refwd = text[5:-1], True
            continue
        break
    return text, refwd


def _strip_trailers(text: str) -> tuple[str, bool]:
    """Step 2: drop trailing blanks and "(fwd)" until none is left."""
    forwarded = False
    while True:
        match = _TRAILER.search(text)
        if not match:
            return text, forwarded
        forwarded = forwarded or match.group(0) not in (" ", "\t")
        text = text[:match.start()]


def _strip_leaders(text: str) -> tuple[str, bool]:
    """Steps 3 to 5: subj-leaders, and subj-blobs when something is left after them."""
    replied = False
    while True:
        match = _LEADER.match(text)
        if match and match.end():
            replied = replied or match.group(0).strip() != ""
            text = text[match.end():]
            continue
        match = _BLOB_PREFIX.match(text)
        if match and text[match.end():].strip():
            text = text[match.end():]
            continue
        return text, replied


@functools.lru_cache(maxsize=65536)
def subject_key(raw: bytes | None) -> tuple[str, bool]:
    """The folded base subject of a raw Subject value, and whether it is a reply or forward."""
    base, refwd = base_subject(envelope.decode_header(raw))
    return envelope.fold(base), refwd


@functools.lru_cache(maxsize=65536)
def date_key(raw: bytes | None) -> float | None:
    return envelope.sent_date(raw)


def sent_date(meta: Meta | None) -> float:
    """RFC 5256 2.2: the Date header in UTC, or INTERNALDATE when it is missing or unparsable."""
    if meta is None:
        return 0.0
    date = date_key(envelope.safe(meta.envelope).date)
    return meta.internaldate if date is None else date


def _key_function(criterion: str) -> Callable[[Meta | None], object]:
    def env(meta: Meta | None) -> envelope.Envelope:
        return envelope.safe(meta.envelope) if meta is not None else envelope.EMPTY

    keys: dict[str, Callable[[Meta | None], object]] = {
        "ARRIVAL": lambda m: m.internaldate if m else 0.0,
        "DATE": sent_date,
        "SIZE": lambda m: m.size if m else 0,
        "SUBJECT": lambda m: subject_key(env(m).subject)[0],
        "FROM": lambda m: envelope.first_mailbox(env(m).sender).upper(),     # i;ascii-casemap
        "TO": lambda m: envelope.first_mailbox(env(m).to).upper(),
        "CC": lambda m: envelope.first_mailbox(env(m).cc).upper(),
        "DISPLAYFROM": lambda m: envelope.fold(envelope.display(env(m).sender)),
        "DISPLAYTO": lambda m: envelope.fold(envelope.display(env(m).to)),
    }
    return keys[criterion]


def parse_criteria(words: Sequence[object]) -> list[tuple[str, bool]]:
    """`(REVERSE DATE SUBJECT)` as [("DATE", True), ("SUBJECT", False)] (RFC 5256 4: sort-criteria)."""
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for word in words:
        name = word.decode("ascii", "replace").upper() if isinstance(word, bytes) else ""
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in CRITERIA:
            raise SortError("Unknown sort criterion")
        criteria.append((name, reverse))
        reverse = False
    if reverse or not criteria:
        raise SortError("Missing sort criterion")
    return criteria


def key_function(criterion: str) -> Callable[[Meta | None], object]:
    """The sort key of one criterion, computed from a message's Meta (None: the message is gone)."""
    return _key_function(criterion)


def order(uids: list[int], criteria: list[tuple[str, bool]], keys: Callable[[str], dict[int, object]]) -> list[int]:
    """`uids` (in mailbox order) sorted by the criteria; ties stay in mailbox order (RFC 5256 3).

    `keys(criterion)` gives every uid's key for that criterion. One stable sort per criterion,
    the last first: REVERSE flips one criterion and never the sequence-number tie break.
    """
    result = list(uids)
    for criterion, reverse in reversed(criteria):
        result.sort(key=keys(criterion).__getitem__, reverse=reverse)
    return result
