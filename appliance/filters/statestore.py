"""The checks' memory that must outlive the process: greylisting triplets, known recipients.

Why sqlite3 in WAL mode: every change is a small upsert, and sqlite's journal makes each commit
all-or-nothing, so a kill -9 or a power cut mid-write leaves the last committed state (at most
the few changes still queued are lost: one more greylisting delay, never a corrupt file).
An append-only journal of our own would need the same torn-tail handling and compaction that
sqlite already does.

Why write-behind: the checks decide from memory (the rows are loaded once at start, before the
reactor runs), and only the changes go to disk, on one writer thread of our own (sqlite's
connection belongs to one thread). The reactor never waits for the disk; the writer batches
what has queued up into one transaction and one fsync (synchronous=FULL). The queue is bounded:
when the disk stalls for long, further changes are dropped and logged, not piled up in memory.
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import threads

from appliance import maillog

FILENAME = "checks.sqlite"
MAX_PENDING = 20000        # changes waiting for the writer before new ones are dropped
BATCH = 500                # changes per transaction at most

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS greylist (key TEXT PRIMARY KEY, first REAL NOT NULL, last REAL NOT NULL,"
    " passed INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS greylist_clients (net TEXT PRIMARY KEY, count INTEGER NOT NULL, last REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS known_recipients (key BLOB PRIMARY KEY, last REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS user_events (user BLOB NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS user_events_at ON user_events (at)",
)

Change = tuple[str, Sequence[Any]]
_STOP = ("", ())


class StateStore(service.Service):
    """One sqlite file in state_dir, read whole at start, written behind by one thread."""

    name = "check-state"

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = _connect(path)
        self._pending: queue.Queue[Change] = queue.Queue(MAX_PENDING)
        self._dropped = 0
        self._writer: threading.Thread | None = None

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Read at start only (blocking: before the reactor runs): the rows a check loads into memory.

        Its own connection, so a writer already running for another check is not disturbed."""
        reader = sqlite3.connect(self.path)
        try:
            return reader.execute(sql).fetchall()
        finally:
            reader.close()

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one change; returns at once (the writer commits it soon)."""
        self.start()
        try:
            self._pending.put_nowait((sql, tuple(params)))
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 100, 10000) or self._dropped % 100000 == 0:
                maillog.error("check-state-full", path=self.path, dropped=str(self._dropped))

    def start(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="check-state", daemon=True)
            self._writer.start()

    def flush(self) -> None:
        """Wait until every queued change is committed (blocks: tests and tools only)."""
        self.start()
        self._pending.join()

    def close(self) -> None:
        """Commit what is queued and stop the writer (blocks: tests, or in a thread at stop)."""
        if self._writer is not None:
            self._pending.put(_STOP)
            self._writer.join()
            self._writer = None
        self._db.close()

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Any:
        super().stopService()
        return threads.deferToThread(self.close)

    def _write_loop(self) -> None:
        while True:
            batch = [self._pending.get()]
            while len(batch) < BATCH and batch[-1] is not _STOP:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            changes = [change for change in batch if change is not _STOP]
            if changes:
                self._commit(changes)
            for _ in batch:
                self._pending.task_done()
            if batch[-1] is _STOP:
                return

    def _commit(self, changes: Iterable[Change]) -> None:
        try:
            with self._db:
                for sql, params in changes:
                    self._db.execute(sql, params)
        except sqlite3.Error as exc:
            maillog.error("check-state-write", path=self.path, reason=str(exc))


def _connect(path: str) -> sqlite3.Connection:
    """Open (or create, 0600, and its folder 0700) the file, in WAL mode, with the tables."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for statement in SCHEMA:
        db.execute(statement)
    db.commit()
    return db
