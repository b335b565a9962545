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

# RFC 5256 2.1's grammar: subj-blob, subj-refwd (after a run of blobs), blanks; case-insensitive.
_BLOB = re.compile(r"\[[^\[\]]*\][ \t]*")
_BLOBS = re.compile(r"(?:\[[^\[\]]*\][ \t]*)*")
_REFWD = re.compile(r"(?:re|fwd?)[ \t]*(?:\[[^\[\]]*\][ \t]*)?:", re.I)
_BLANKS = re.compile(r"[ \t]+")


class SortError(ValueError):
    """Sort criteria that are not RFC 5256's: BAD."""


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 2.1 steps 2-6 on a decoded subject: (base subject, whether it was a reply or forward).

    Step 1 (decoding encoded words, blanks) is `subject_key`'s; the result keeps its case. The
    subject is never sliced while it is worked on, only the bounds move: a Subject made of
    thousands of `[x]` or `[fwd:` costs linear time, not quadratic.
    """
    text = envelope.blanks(subject)
    start, end, refwd = 0, len(text), False
    for _ in range(len(text) + 1):                 # each round removes "[fwd:" and "]", or stops
        end, forwarded = _strip_trailers(text, start, end)
        start, replied = _strip_leaders(text, start, end)
        refwd = refwd or forwarded or replied
        if end - start >= 6 and text[start:start + 5].lower() == "[fwd:" and text[end - 1] == "]":
            start, end, refwd = start + 5, end - 1, True            # step 6, then again from step 2
            continue
        break
    return text[start:end], refwd


def _strip_trailers(text: str, start: int, end: int) -> tuple[int, bool]:
    """Step 2: the new end once trailing blanks and "(fwd)"s are gone; whether there was a "(fwd)"."""
    forwarded = False
    while end > start:
        if text[end - 1] in " \t":
            end -= 1
        elif end - start >= 5 and text[end - 5:end].lower() == "(fwd)":
            end, forwarded = end - 5, True
        else:
            break
    return end, forwarded


def _strip_leaders(text: str, start: int, end: int) -> tuple[int, bool]:
    """Steps 3 to 5: the new start once subj-leaders are gone, and subj-blobs that leave a subject."""
    replied = False
    while start < end:
        blanks = _BLANKS.match(text, start, end)
        if blanks:
            start = blanks.end()
            continue
        run = _BLOBS.match(text, start, end)
        refwd = _REFWD.match(text, run.end(), end)
        if refwd:                                      # *subj-blob subj-refwd
            start, replied = refwd.end(), True
            continue
        if run.end() == start:
            break
        if run.end() < end:                            # step 4, blob after blob: text follows them all
            start = run.end()
            continue
        last = start                                   # the run ends the subject: its last blob stays
        while (blob := _BLOB.match(text, last, end)) and blob.end() < end:
            last = blob.end()
        return last, replied
    return start, replied


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
