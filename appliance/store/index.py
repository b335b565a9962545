"""Per-folder files beside the messages: the UID list (authoritative), the metadata index (a cache), the locks.

The UID list is what makes UIDs stable: `V<uidvalidity> N<uidnext>` on the first line, then
`<uid> <key>` per message, as Dovecot's dovecot-uidlist and Courier's courierimapuiddb do.
It is replaced atomically (write, fsync, rename), and `uidnext` only ever grows, so a UID is
never given to a second message. The index only saves re-reading messages; deleting it is safe.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from appliance.durable import replace_file
from appliance.store.base import Meta

UIDLIST = "mailappliance-uidlist"
INDEX = "mailappliance-index"
LOCK = "mailappliance-lock"

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@dataclass
class UidState:
    validity: int
    next: int = 1
    uids: dict[str, int] = field(default_factory=dict)     # message key -> uid

    def assign(self, key: str) -> int:
        uid = self.next
        self.uids[key] = uid
        self.next += 1
        return uid


def new_validity() -> int:
    """A fresh UIDVALIDITY: the clock, so a re-created list never repeats an old value."""
    return max(1, int(time.time()) & 0xFFFFFFFF)


def load_uids(path: str) -> UidState:
    """The UID list at `path`; a missing or unreadable list starts a new UIDVALIDITY."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        head = dict((word[0], int(word[1:])) for word in lines[0].split())
        state = UidState(head["V"], head["N"])
        for line in lines[1:]:
            uid, _, key = line.partition(" ")
            if key:
                state.uids[key] = int(uid)
        return state
    except (OSError, ValueError, KeyError, IndexError):
        return UidState(new_validity())


def save_uids(path: str, state: UidState) -> None:
    lines = [f"V{state.validity} N{state.next}"]
    lines += [f"{uid} {key}" for key, uid in sorted(state.uids.items(), key=lambda item: item[1])]
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` whole: readers see the old file or the new one, never half of either.

    The folder is not synced: an index or uid list lost to a power cut is rebuilt or re-read."""
    replace_file(path, data, sync_dir=False)


def thread_lock(path: str) -> threading.Lock:
    """The process-wide lock of one file path: the one table both folder and mbox locks use.

    File locks (flock, fcntl, dot-locks) keep other processes out; our own worker threads queue
    here first, so they never poll a file lock held by a sibling thread.
    """
    with _thread_locks_guard:
        return _thread_locks.setdefault(path, threading.Lock())


@contextlib.contextmanager
def locked(lock_path: str) -> Iterator[None]:
    """Exclusive access to one folder's files: a thread lock within the process, flock across processes."""
    with thread_lock(lock_path):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class MetaIndex:
    """An append-only journal of Meta records, one JSON array per line, keyed by message key.

    Appending costs one write per batch of new messages; the file is rewritten only when more
    than half of its lines describe messages that are gone.
    """

    def __init__(self, path: str):
        self.path = path
        self.entries: dict[str, Meta] = {}
        self._lines = 0
        self._loaded = False

    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            with open(self.path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return
        rows = [line for line in text.split("\n") if line.endswith("]")]
        try:
            records = json.loads("[" + ",".join(rows) + "]")
        except ValueError:
            records = []           # a damaged cache is rebuilt, never trusted
        for record in records:
            try:
                key, size, date, env, structure = record
                self.entries[key] = Meta(int(size), float(date), env.encode("latin-1"),
                                         None if structure is None else structure.encode("latin-1"))
            except (TypeError, ValueError, AttributeError, UnicodeEncodeError):
                continue
        self._lines = len(records)

    def add(self, new: dict[str, Meta]) -> None:
        if not new:
            return
        self.entries.update(new)
        lines = "".join(_record(key, meta) for key, meta in new.items())
        with open(self.path, "a", encoding="utf-8", opener=lambda p, flags: os.open(p, flags, 0o600)) as handle:
            handle.write(lines)
        self._lines += len(new)

    def prune(self, live: set[str]) -> None:
        """Forget vanished messages; rewrite the journal when it is mostly garbage."""
        for key in [key for key in self.entries if key not in live]:
            del self.entries[key]
        if self._lines > 64 and self._lines > 2 * len(self.entries):
            write_atomic(self.path, "".join(_record(k, m) for k, m in self.entries.items()).encode("utf-8"))
            self._lines = len(self.entries)


def _record(key: str, meta: Meta) -> str:
    """One journal line; BODYSTRUCTURE is null until asked for (a later line for the same key wins).

    An older reader finds null where it wants a string and skips the record: it rebuilds that
    message's entry rather than trusting it."""
    structure = None if meta.bodystructure is None else meta.bodystructure.decode("latin-1")
    return json.dumps([key, meta.size, meta.internaldate, meta.envelope.decode("latin-1"), structure]) + "\n"
