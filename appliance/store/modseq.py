"""MODSEQ per message (RFC 7162 CONDSTORE/QRESYNC): a journal beside the UID list, one per folder.

What it records: HIGHESTMODSEQ, each present UID's mod-sequence and the flags it had then, and
the UIDs expunged at each mod-sequence (for `VANISHED (EARLIER)`). It learns every change in ONE
place, `observe`, which the folder calls whenever it publishes a new Snapshot (store/folder.py
`_publish`, with the folder locked): a UID it has not seen is new (APPEND, delivery, COPY), a UID
whose flags differ from the recorded ones was changed (STORE by any session, POP3, another program
renaming a Maildir file), a recorded UID that is gone was expunged. So no writer has to remember
to bump anything, and changes made while the server was down are found at the next rescan.

Why the values come from the clock: a new mod-sequence is max(HIGHESTMODSEQ + 1, microseconds
since the epoch). RFC 7162 3.1.2.1 lets a client trust that HIGHESTMODSEQ never goes back, or it
misses changes. A journal that is missing or damaged (deleted, half-written by a crash, rolled
back by a power cut: appends are not fsynced, like the index) therefore restarts ABOVE every value
handed out before, not at 1: every message gets the new value, so every client re-fetches all
flags once, and UIDs missing from the folder are recorded as expunged at that value, so
`VANISHED (EARLIER)` still names them. UIDVALIDITY is kept: the messages did not change, only
what we knew of their history. (The clock must not run backwards by more than the time since the
last change; values stay far below the 63-bit limit until the year 292,000.)

Why a journal: a STORE on one message appends one line instead of rewriting 10,000; the file is
rewritten (atomically) only when most of its lines are outdated. Format, one record per line:
    mailappliance-modseq 1 V<uidvalidity> H<highestmodseq>     first line, written by a rewrite
    <uid> <modseq> [<flag> ...]                                 the message's state at <modseq>
    X <modseq> <uid-ranges>                                     UIDs expunged at <modseq>
Later lines override earlier ones. A line cut short by a crash is ignored and the file rewritten.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence

from appliance.store.index import write_atomic

MODSEQ = "mailappliance-modseq"
MAGIC = "mailappliance-modseq 1"
MAX_EXPUNGE_EVENTS = 10_000      # kept expunge records; older ones are dropped (VANISHED then says more, never less)
REWRITE_SLACK = 1_000            # outdated lines tolerated before the journal is rewritten

Ranges = list[tuple[int, int]]


def clock_value() -> int:
    """Microseconds since the epoch: above any mod-sequence an earlier journal of this folder gave out."""
    return time.time_ns() // 1000


# ---- UID ranges --------------------------------------------------------------------------------------
def to_ranges(uids: Iterable[int]) -> Ranges:
    """Sorted, merged (low, high) ranges of some UIDs."""
    out: Ranges = []
    for uid in sorted(uids):
        if out and uid <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], uid))
        else:
            out.append((uid, uid))
    return out


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """Both merged; the UIDs in both."""
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if low <= high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Ranges, b: Ranges) -> Ranges:
    """Both merged; the UIDs of `a` not in `b`."""
    out: Ranges = []
    j = 0
    for low, high in a:
        while j < len(b) and b[j][1] < low:
            j += 1
        k = j
        while k < len(b) and b[k][0] <= high:
            if b[k][0] > low:
                out.append((low, b[k][0] - 1))
            low = max(low, b[k][1] + 1)
            k += 1
        if low <= high:
            out.append((low, high))
    return out


def gaps(present: Sequence[int], uidnext: int) -> Ranges:
    """The UIDs below `uidnext` that are not in the sorted `present`: given out once, gone now."""
    out: Ranges = []
    expected = 1
    for uid in present:
        if uid > expected:
            out.append((expected, uid - 1))
        expected = uid + 1
    if expected < uidnext:
        out.append((expected, uidnext - 1))
    return out


def format_ranges(ranges: Ranges) -> str:
    """RFC 3501 sequence-set form, `1:3,7`, used in the journal and in VANISHED responses."""
    return ",".join(str(low) if low == high else f"{low}:{high}" for low, high in ranges)


def parse_ranges(text: str) -> Ranges:
    """The journal's `1:3,7`; ValueError when it is not that."""
    out: Ranges = []
    for item in text.split(","):
        low, _, high = item.partition(":")
        a, b = int(low), int(high or low)
        if a < 1 or b < a:
            raise ValueError(item)
        out.append((a, b))
    return merge(out)


# ---- the journal -------------------------------------------------------------------------------------
class ModseqLog:
    """One folder's mod-sequences; every method blocks (worker threads), `observe` with the folder locked."""

    def __init__(self, path: str):
        self.path = path
        self.validity = 0
        self.highest = 0
        self.modseq: dict[int, int] = {}                  # uid -> mod-sequence of its last change
        self._flags: dict[int, frozenset[str]] = {}       # uid -> flags at that change
        self._expunged: list[tuple[int, Ranges]] = []     # (mod-sequence, UIDs expunged then), ascending
        self._stamp: tuple[int, int, int] | None = None  # (inode, size, mtime) of what we have read
        self._lines = 0
        self._rewrite = True                              # no file yet, or one we must not append to
        self._interned: dict[str, frozenset[str]] = {}
        self._guard = threading.Lock()                    # observe (writer) against vanished (readers)

    # ---- learning of changes ---------------------------------------------------------------------------
    def observe(self, validity: int, uidnext: int, messages: list[tuple[int, frozenset[str]]]) -> None:
        """The folder now holds `messages` (uid, flags): give every change since the last call a new mod-sequence."""
        with self._guard:
            self._load()
            fresh = validity != self.validity
            if fresh:
                self._restart(validity)
            recorded = self._flags
            if not fresh and dict(messages) == recorded:     # the common case, compared in C
                return
            changed = [(uid, flags) for uid, flags in messages if recorded.get(uid) != flags]
            new = sum(1 for uid, _ in changed if uid not in recorded)
            gone: Ranges = []
            if fresh:
                gone = gaps(sorted(uid for uid, _ in messages), uidnext)
            elif len(recorded) != len(messages) - new:
                present = {uid for uid, _ in messages}
                gone = to_ranges(uid for uid in recorded if uid not in present)
            if changed or gone or fresh:
                self._commit(changed, gone)          # (fresh: a HIGHESTMODSEQ above 0 even for an empty folder)

    def _restart(self, validity: int) -> None:
        """Forget everything but HIGHESTMODSEQ: a new UIDVALIDITY, or no usable journal."""
        self.validity = validity
        self.modseq, self._flags, self._expunged = {}, {}, []
        self._rewrite = True

    def _commit(self, changed: list[tuple[int, frozenset[str]]], gone: Ranges) -> None:
        value = max(self.highest + 1, clock_value())
        lines = []
        for uid, flags in changed:
            self.modseq[uid], self._flags[uid] = value, flags
            lines.append(_record(uid, value, flags))
        for low, high in gone:
            for uid in ([u for u in self.modseq if low <= u <= high] if high - low > len(self.modseq)
                        else range(low, high + 1)):
                self.modseq.pop(uid, None)
                self._flags.pop(uid, None)
        if gone:
            self._expunged.append((value, gone))
            lines.append(f"X {value} {format_ranges(gone)}\n")
        self.highest = value
        self._lines += len(lines)
        if self._rewrite or self._lines > 2 * (len(self.modseq) + len(self._expunged)) + REWRITE_SLACK:
            self._save_all()
        else:
            self._append("".join(lines))

    # ---- answering QRESYNC -----------------------------------------------------------------------------
    def vanished(self, since: int, present: Sequence[int], uidnext: int, within: Ranges | None = None,
                 floor: int = 0) -> Ranges:
        """UIDs a client that knew the folder at mod-sequence `since` must hear are gone (RFC 7162 3.2.5.1, 3.2.6).

        Every UID below `uidnext` that is not `present` (sorted), inside `within` (known-uids; all
        when None) and above `floor` (what seq-match-data proved the client knows) -- except those
        recorded as expunged at or before `since`, which the client was told about already. A UID
        gone without a record (dropped as too old, or lost with a damaged journal) is reported:
        RFC 7162 allows naming UIDs the client has no longer; leaving one out would be a bug.
        """
        with self._guard:
            missing = gaps(present, uidnext)
            if within is not None:
                missing = intersect(missing, merge(within))
            if floor:
                missing = subtract(missing, [(1, floor)])
            seen = merge(r for value, ranges in self._expunged if value <= since for r in ranges)
            return subtract(missing, seen)

    # ---- the file ----------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Catch up with the file: read only what another process appended, or all of it when replaced."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:        # deleted under us: start over, above what we gave out
                self._stamp = None
                self._restart(0)
            return
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if stamp == self._stamp:
            return
        grown = self._stamp is not None and self._stamp[0] == stamp[0] and stamp[1] > self._stamp[1]
        offset = self._stamp[1] if grown and self._stamp else 0
        try:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return
        if not grown:
            self._restart(0)
        complete = data.rfind(b"\n") + 1
        self._parse(data[:complete].decode("utf-8", "replace").split("\n")[:-1], header=not grown)
        self._rewrite = self._rewrite or complete != len(data) or self.validity == 0
        self._stamp = (stamp[0], offset + len(data), stamp[2])

    def _parse(self, lines: list[str], header: bool) -> None:
        if header:
            words = lines[0].split(" ") if lines else []
            if " ".join(words[:2]) != MAGIC or len(words) != 4:
                return                                       # not ours or damaged: validity 0, all restarts
            try:
                self.validity, self.highest = int(words[2][1:]), max(self.highest, int(words[3][1:]))
            except ValueError:
                return
            lines = lines[1:]
        for line in lines:
            try:
                self._apply(line)
            except (ValueError, IndexError):
                continue                                     # one bad record costs one re-fetch, nothing more
            self._lines += 1

    def _apply(self, line: str) -> None:
        words = line.split(" ")
        if words[0] == "X":
            value, ranges = int(words[1]), parse_ranges(words[2])
            for low, high in ranges:
                for uid in [u for u in self.modseq if low <= u <= high]:
                    del self.modseq[uid], self._flags[uid]
            self._expunged.append((value, ranges))
        else:
            uid, value = int(words[0]), int(words[1])
            text = line[len(words[0]) + len(words[1]) + 2:]
            flags = self._interned.get(text)            # a few distinct flag sets among 10,000 lines
            if flags is None:
                flags = self._interned[text] = frozenset(words[2:])
            self.modseq[uid], self._flags[uid] = value, flags
        self.highest = max(self.highest, value)

    def _append(self, text: str) -> None:
        """Add records at the end: one small write per change instead of a rewrite."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            info = os.fstat(fd)
        finally:
            os.close(fd)
        self._stamp = (info.st_ino, info.st_size, info.st_mtime_ns)

    def _save_all(self) -> None:
        """Rewrite the journal whole: current state only, the oldest expunge records dropped past the limit."""
        self._expunged.sort(key=lambda event: event[0])
        del self._expunged[:-MAX_EXPUNGE_EVENTS]
        lines = [f"{MAGIC} V{self.validity} H{self.highest}\n"]
        lines += [_record(uid, self.modseq[uid], self._flags[uid]) for uid in sorted(self.modseq)]
        lines += [f"X {value} {format_ranges(ranges)}\n" for value, ranges in self._expunged]
        write_atomic(self.path, "".join(lines).encode("utf-8"))
        info = os.stat(self.path)
        self._stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        self._lines = len(lines) - 1
        self._rewrite = False


def _record(uid: int, value: int, flags: frozenset[str]) -> str:
    """One message's line; flags are IMAP atoms (no spaces), anything else is dropped from the record."""
    words = [flag for flag in sorted(flags) if flag and flag.isprintable() and " " not in flag]
    return f"{uid} {value}{' ' if words else ''}{' '.join(words)}\n"


def first_known(present: Sequence[int], sequences: list[int], uids: list[int]) -> int:
    """RFC 7162 3.2.5.2 seq-match-data: the highest UID up to which the client's numbering is proven right.

    Pairs (message number, UID) are checked in ascending order; each pair that still holds means
    the client knows of every expunge up to that UID. The first pair that fails ends the proof.
    """
    floor = 0
    for number, uid in zip(sequences, uids):
        if not 1 <= number <= len(present) or present[number - 1] != uid:
            break
        floor = uid
    return floor
