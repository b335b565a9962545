"""One IMAP session's view of a folder: sequence numbers, \\Recent, and the updates the client is owed.

The folder's Snapshot changes whenever anybody (another session, delivery, this session) changes
the folder; the view keeps the snapshot the client was last told about and turns the
difference into EXPUNGE / EXISTS / FETCH FLAGS responses (RFC 3501 7.4.1, 7.3.1, 7.4.2).
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Collection

from appliance.imap.backend import SYSTEM_FLAGS, Snapshot

MAX_NUMBER = 0xFFFFFFFF
_SET = re.compile(rb"^(?:(?:\d+|\*)(?::(?:\d+|\*))?)(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*$")

Range = tuple[int | None, int | None]      # None is "*"


class SequenceError(ValueError):
    """A sequence set that is malformed or names message numbers that do not exist."""


def parse_set(text: bytes) -> list[Range]:
    """`1:3,7,9:*` -> [(1, 3), (7, 7), (9, None)], without expanding anything (1:4294967295 is cheap)."""
    if not _SET.match(text) or len(text) > 65536:
        raise SequenceError("Invalid sequence set")
    ranges: list[Range] = []
    for item in text.split(b","):
        low, _, high = item.partition(b":")
        bounds = [None if v == b"*" else int(v) for v in (low, high or low)]
        for value in bounds:
            if value is not None and not 1 <= value <= MAX_NUMBER:
                raise SequenceError("Invalid sequence number")
        ranges.append((bounds[0], bounds[1]))
    return ranges


def _bounds(item: Range, star: int) -> tuple[int, int]:
    low, high = (star if v is None else v for v in item)
    return (low, high) if low <= high else (high, low)


def format_flags(flags: frozenset[str], recent: bool) -> bytes:
    names = sorted(flags) + (["\\Recent"] if recent else [])
    return b"(" + " ".join(names).encode("ascii", "replace") + b")"


def flag_list(snapshot: Snapshot) -> bytes:
    """The FLAGS response's list: the system flags and the folder's keywords (RFC 3501 7.2.6)."""
    return b"(" + " ".join(SYSTEM_FLAGS + snapshot.keywords).encode("ascii", "replace") + b")"


def permanent_flags(snapshot: Snapshot, readonly: bool) -> bytes:
    """PERMANENTFLAGS: what STORE can change; `\\*` while the folder can take new keywords (RFC 3501 7.1)."""
    if readonly:
        return b"()"
    return flag_list(snapshot)[:-1] + (b")" if snapshot.keywords_full else b" \\*)")


class View:
    """What one selected session knows of its folder."""

    def __init__(self, snapshot: Snapshot, claimed: frozenset[int], readonly: bool):
        self.known = snapshot
        self.recent: set[int] = set(claimed)
        self.readonly = readonly

    @property
    def exists(self) -> int:
        return len(self.known.uids)

    def first_unseen(self) -> int | None:
        for index, flags in enumerate(self.known.flags):
            if "\\Seen" not in flags:
                return index + 1
        return None

    def resolve(self, ranges: list[Range], by_uid: bool) -> list[tuple[int, int]]:
        """(sequence number, uid) of the messages a set names, in order, each once.

        A sequence number beyond the mailbox is an error (RFC 3501 9, seq-number); UIDs that do
        not exist are simply not there (RFC 3501 6.4.8).
        """
        uids = self.known.uids
        picked: set[int] = set()
        if by_uid:
            star = uids[-1] if uids else 0
            for item in ranges:
                low, high = _bounds(item, star)
                if item == (None, None) or (item[0] is None or item[1] is None) and not uids:
                    low, high = (star, star) if uids else (1, 0)
                start, end = bisect.bisect_left(uids, low), bisect.bisect_right(uids, high)
                picked.update(range(start, end))
        else:
            count = len(uids)
            for item in ranges:
                low, high = _bounds(item, count)
                if high > count or low < 1:
                    raise SequenceError("Invalid message sequence number")
                picked.update(range(low - 1, high))
        return [(index + 1, uids[index]) for index in sorted(picked)]

    def updates(self, current: Snapshot, claimed: frozenset[int] = frozenset(),
                allow_expunge: bool = True, quiet: Collection[int] = ()) -> list[bytes]:
        """Untagged responses taking the client from `known` to `current`, which becomes `known`.

        With allow_expunge False (during FETCH, STORE, SEARCH) messages that have gone stay in
        the view, with their last flags, until a command that may report EXPUNGE: the client must
        not see numbers shift then (RFC 3501 7.4.1), but still hears of new mail and flags. Flag
        changes of the UIDs in `quiet` are left out: the command has shown them already.
        A change in the folder's keywords comes first, as FLAGS and PERMANENTFLAGS (RFC 3501 7.2.6).
        """
        self.recent |= claimed
        old = self.known
        if current is old and not claimed:
            return []
        gone = [index for index, uid in enumerate(old.uids) if uid not in current.position]
        if gone and not allow_expunge:
            current, gone = _keeping(old, current), []
        lines = [b"* %d EXPUNGE" % (index + 1) for index in reversed(gone)]
        if current.keywords != old.keywords or current.keywords_full != old.keywords_full:
            lines[:0] = [b"* FLAGS " + flag_list(current),
                         b"* OK [PERMANENTFLAGS " + permanent_flags(current, self.readonly) + b"] Flags permitted"]
        for uid in [old.uids[index] for index in gone]:
            self.recent.discard(uid)
        old_count = len(old.uids) - len(gone)
        if len(current.uids) != old_count:
            lines.append(b"* %d EXISTS" % len(current.uids))
            lines.append(b"* %d RECENT" % sum(1 for uid in current.uids if uid in self.recent))
        for index, uid in enumerate(current.uids):
            before = old.position.get(uid)
            if before is None or uid in quiet:
                continue
            if old.flags[before] != current.flags[index] or uid in claimed:
                lines.append(b"* %d FETCH (FLAGS %b)" % (index + 1, format_flags(current.flags[index], uid in self.recent)))
        self.known = current
        return lines


def _keeping(old: Snapshot, current: Snapshot) -> Snapshot:
    """`current` plus the messages of `old` it lacks (expunged, not yet reported), with their last flags.

    New messages always have higher UIDs than the old ones, so they keep coming after them.
    """
    messages = [(uid, current.flags_of(uid) if uid in current.position else old.flags[index])
                for index, uid in enumerate(old.uids)]
    messages += [(uid, current.flags[index]) for index, uid in enumerate(current.uids) if uid not in old.position]
    return Snapshot.build(current.uidvalidity, current.uidnext, messages, current.fresh, current.keywords,
                          current.keywords_full)
