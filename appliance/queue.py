"""The durable spool (group-committed, append-only segment files) and the runner that delivers from it.

Why this shape: "250 after DATA" is a promise that the message survives a crash, so `put` fires
only after an fdatasync. One fsync per message caps a spool at a few thousand files a second and
creating/unlinking a file per message is slow on our file system, so every message accepted in
one reactor turn is appended to the active segment with one writev and one fdatasync (group
commit). The on-disk format and the durability argument are described in docs/queue.md.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import bounce, maillog
from appliance.config import QueueSection
from appliance.envelope import DELIVERED, FAILED, Envelope, Recipient
from appliance.errors import ApplianceError, QueueWriteError, TemporaryFailure
from appliance.interfaces import ICourier, IQueue
from appliance.inline import InlinePool, InlineReactor
from appliance.jobthreads import JobThreads
from appliance.durable import fsync_dir, replace_file

log = Logger()

MAGIC = b"MAQ1"
# magic, queue-id length, envelope length, message length, CRC32 of id + envelope + message
HEADER = struct.Struct(">4sHIII")
SEGMENT_LIMIT = 64 * 1024 * 1024   # rotate the active segment past this size
BATCH_LIMIT = 1024 * 1024          # flush at once, without waiting for the turn to end, past this
# Done marks wait this long for a put's job to ride with (seconds). Losing one in a crash only
# repeats a delivery, and a crash loses at most the marks of this last moment.
CLEANUP_DELAY = 0.02
MAX_ID = 64                        # queue ids are short (envelope.new_id; control.valid_id)
# An envelope is a JSON array (the compact record, Envelope.to_record) or, written by older
# versions, a JSON object: the scan's cheap check before a CRC.
_ENVELOPE_OPENERS = (ord("["), ord("{"))
_IOV_MAX = 512                     # pieces per writev (Linux allows 1024)


class SpoolLocked(Exception):
    """Another process (the running daemon) holds the spool: only one process may write it."""


class Location(NamedTuple):
    """Where a queued message's body lies: segment number, byte offset and length."""

    segment: int
    offset: int
    length: int
    record: int = -1      # where its record starts, so a read-back can check the CRC; -1: unknown


# --- the on-disk format -------------------------------------------------------------------------

def encode_record(qid: str, envelope_json: bytes, message: bytes) -> bytes:
    """One segment record: header, queue id, envelope (Envelope.to_record), message bytes."""
    return record_head(qid, envelope_json, message) + message


def record_head(qid: str, envelope_json: bytes, message: bytes) -> bytes:
    """A record without its message: header, queue id, envelope. The spool writes head and
    message side by side (writev), so a large message is never copied into a record.

    Made in the writer thread: zlib.crc32 lets go of the GIL over a large message, so the CRC
    of a 100 KiB body runs beside the reactor instead of in its turn."""
    ident = qid.encode("ascii")
    crc = zlib.crc32(message, zlib.crc32(envelope_json, zlib.crc32(ident)))
    return HEADER.pack(MAGIC, len(ident), len(envelope_json), len(message), crc) + ident + envelope_json


def record_head_size(qid: str, envelope_json: bytes) -> int:
    """len(record_head(...)), known without the CRC (the reactor places records before they are made)."""
    return HEADER.size + len(qid) + len(envelope_json)


def write_pieces(fd: int, pieces: list[bytes]) -> None:
    """Write `pieces` one after another with writev (no joined copy), resuming after a short write."""
    pending = [memoryview(piece) for piece in pieces if piece]
    at = 0
    while at < len(pending):
        written = os.writev(fd, pending[at:at + _IOV_MAX])
        while written:
            if written >= len(pending[at]):
                written -= len(pending[at])
                at += 1
            else:
                pending[at], written = pending[at][written:], 0


class Damage(NamedTuple):
    """A stretch of a segment that is not an intact record: kept aside in corrupt/, never skipped silently.

    `kind` is "torn" for an incomplete last record (a write cut short: no put for it ever fired)
    and "damaged" for anything else (bytes changed on disk, or a record we cannot read).
    """

    segment: int
    offset: int
    length: int
    kind: str
    queue_id: str = ""      # the id the damaged header names, when it still reads as one

    @property
    def name(self) -> str:
        """Its file name in corrupt/: stable, so a rescan after a restart finds the same name."""
        return f"{self.segment:012d}-{self.offset:012d}.{self.kind}"


def _record_at(data, at: int, size: int) -> tuple[str, bytes, int, int] | None:
    """(queue id, envelope JSON, body offset, end) of an intact record starting at `at`, else None."""
    if size - at < HEADER.size or data[at:at + 4] != MAGIC:
        return None
    _, id_len, env_len, msg_len, crc = HEADER.unpack(data[at:at + HEADER.size])
    body_at = at + HEADER.size + id_len + env_len
    end = body_at + msg_len
    if not 0 < id_len <= MAX_ID or env_len == 0 or end > size:
        return None
    ident = data[at + HEADER.size:at + HEADER.size + id_len]
    # cheap checks first: while resynchronising, most candidates fail here without a CRC over their length
    if not (ident.isascii() and ident.isalnum()) or data[at + HEADER.size + id_len] not in _ENVELOPE_OPENERS:
        return None
    if zlib.crc32(data[at + HEADER.size:end]) != crc:
        return None
    return ident.decode("ascii"), data[at + HEADER.size + id_len:body_at], body_at, end


def _declared_end(data, at: int, size: int) -> int | None:
    """Where the record at `at` says it ends, when its header at least has the magic."""
    if size - at < HEADER.size or data[at:at + 4] != MAGIC:
        return None
    _, id_len, env_len, msg_len, _ = HEADER.unpack(data[at:at + HEADER.size])
    return at + HEADER.size + id_len + env_len + msg_len


def _damage(data, segment: int, start: int, end: int, size: int) -> Damage:
    declared = _declared_end(data, start, size)
    torn = end == size and (size - start < HEADER.size or (declared is not None and declared > size)
                            or not data[start:size].strip(b"\0"))
    ident = b""
    if size - start >= HEADER.size and data[start:start + 4] == MAGIC:
        id_len = HEADER.unpack(data[start:start + HEADER.size])[1]
        ident = data[start + HEADER.size:min(start + HEADER.size + id_len, end)]
        if not (0 < len(ident) <= MAX_ID and ident.isascii() and ident.isalnum()):
            ident = b""
    return Damage(segment, start, end - start, "torn" if torn else "damaged", ident.decode("ascii"))


def scan_segment(path: str, segment: int, damage: list[Damage] | None = None
                 ) -> Iterator[tuple[str, bytes, Location]]:
    """Yield (queue id, envelope JSON, body location) of each intact record, in order.

    A record that is short, has no magic or fails its CRC does not end the scan: every stretch
    of bytes between intact records is appended to `damage` (when given) and the scan
    resynchronises on the next intact record. It first tries where the bad record's own header
    says it ends (a changed byte in a body leaves the lengths right, and the body is never
    searched for records), and otherwise looks for the next magic that starts a record whose
    CRC matches. A torn tail (a write cut short by a crash) is reported as a "torn" Damage: no
    put for it ever fired, so no 250 was given for it.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            size = min(size, len(data))
            at, bad = 0, None
            while at < size:
                record = _record_at(data, at, size)
                if record is None:
                    if bad is None:
                        bad = at
                    declared = _declared_end(data, at, size)
                    if declared is not None and at < declared < size and _record_at(data, declared, size):
                        at = declared
                        continue
                    at = data.find(MAGIC, at + 1)
                    if at < 0:
                        break
                    continue
                if bad is not None:
                    if damage is not None:
                        damage.append(_damage(data, segment, bad, at, size))
                    bad = None
                qid, envelope_json, body_at, end = record
                yield qid, envelope_json, Location(segment, body_at, end - body_at, at)
                at = end
            if bad is not None and damage is not None:
                damage.append(_damage(data, segment, bad, size, size))


def save_damage(segments_dir: str, corrupt_dir: str, damage: Damage) -> str:
    """Copy a damaged stretch of a segment into corrupt/ (tmp, fsync, rename); its path."""
    os.makedirs(corrupt_dir, mode=0o700, exist_ok=True)
    with open(segment_path(segments_dir, damage.segment), "rb") as f:
        data = os.pread(f.fileno(), damage.length, damage.offset)
    target = os.path.join(corrupt_dir, damage.name)
    replace_file(target, data)
    return target


def read_body(path: str, location: Location) -> bytes:
    """The message bytes of one record (run in the pool), after checking the record's CRC.

    Bytes damaged on disk after the start-up scan are never delivered: the read fails (the
    queue retries and logs it) instead.
    """
    start = location.record if location.record >= 0 else location.offset
    end = location.offset + location.length
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), end - start, start)
    if len(data) != end - start:
        raise OSError(f"{path}: short read at {start}")
    if location.record >= 0:
        magic, id_len, env_len, msg_len, crc = HEADER.unpack(data[:HEADER.size])
        if (magic != MAGIC or HEADER.size + id_len + env_len != location.offset - start
                or msg_len != location.length or zlib.crc32(memoryview(data)[HEADER.size:]) != crc):
            raise OSError(f"{path}: the record at byte {start} is damaged (CRC mismatch)")
        return data[location.offset - start:]
    return data


def _read_done(path: str) -> set[str]:
    try:
        with open(path, "rb") as f:
            return {line.decode("ascii", "replace") for line in f.read().split(b"\n") if line}
    except FileNotFoundError:
        return set()


# --- disk work, run in the pool one job at a time -----------------------------------------------

@dataclass
class _Job:
    """Everything one writer run does; plain data only, so the pool thread never sees reactor objects."""

    segment: int = 0
    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)   # (queue id, envelope, message)
    states: dict[str, bytes] = field(default_factory=dict)
    done_marks: dict[int, list[str]] = field(default_factory=dict)
    forget_states: list[str] = field(default_factory=list)
    delete_segments: list[int] = field(default_factory=list)
    keep_aside: list[Damage] = field(default_factory=list)
    close: bool = False

    def empty(self) -> bool:
        return not (self.records or self.states or self.done_marks or self.forget_states
                    or self.delete_segments or self.keep_aside or self.close)

    def urgent(self) -> bool:
        """Work somebody waits for (a 250, a state, the shutdown); the rest is cleanup that may wait."""
        return bool(self.records or self.states or self.keep_aside or self.close)


@dataclass
class _Outcome:
    records_error: BaseException | None = None
    states_error: BaseException | None = None
    cleanup_errors: list[str] = field(default_factory=list)
    kept_aside: list[tuple[Damage, str]] = field(default_factory=list)     # (damage, path in corrupt/)
    not_kept: list[tuple[Damage, str]] = field(default_factory=list)       # (damage, why the copy failed)


class _Writer:
    """The spool's disk side. Owned by the single in-flight job, so it needs no lock."""

    def __init__(self, root: str):
        self.segments = os.path.join(root, "segments")
        self.state = os.path.join(root, "state")
        self.corrupt = os.path.join(root, "corrupt")
        self._fd: int | None = None
        self._segment: int | None = None
        self._done_fd: int | None = None         # the done-log of segment _done_segment, kept open
        self._done_segment: int | None = None

    def run(self, job: _Job) -> _Outcome:
        out = _Outcome()
        for damage in job.keep_aside:
            try:
                out.kept_aside.append((damage, save_damage(self.segments, self.corrupt, damage)))
            except OSError as e:
                out.not_kept.append((damage, str(e)))
        if job.records:
            try:
                self._append(job.segment, [piece for qid, envelope_json, message in job.records
                                           for piece in (record_head(qid, envelope_json, message), message)])
            except OSError as e:
                out.records_error = e
        if job.states:
            try:
                self._write_states(job.states)
            except OSError as e:
                out.states_error = e
        self._cleanup(job, out)
        if job.close:
            self._close()
        return out

    def _append(self, segment: int, pieces: list[bytes]) -> None:
        if self._segment != segment:
            self._close()
            self._fd = os.open(segment_path(self.segments, segment),
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._segment = segment
            fsync_dir(self.segments)
        assert self._fd is not None
        try:
            write_pieces(self._fd, pieces)
            os.fdatasync(self._fd)
        except OSError:
            # After a failed write or fdatasync the file's contents are unknown: never append
            # to it again. The spool moves on to a fresh segment; the tail here is ignored on
            # recovery when torn, and if complete it only means a duplicate of an unanswered put.
            self._close()
            raise

    def _write_states(self, states: dict[str, bytes]) -> None:
        for qid, data in states.items():
            replace_file(os.path.join(self.state, qid + ".json"), data, sync_dir=False)
        fsync_dir(self.state)

    def _cleanup(self, job: _Job, out: _Outcome) -> None:
        """Done marks and deletions need no fsync: losing one only repeats a delivery."""
        for segment, qids in job.done_marks.items():
            try:
                self._mark_done(segment, "".join(q + "\n" for q in qids).encode("ascii"))
            except OSError as e:
                self._close_done()
                out.cleanup_errors.append(str(e))
        paths = [os.path.join(self.state, q + ".json") for q in job.forget_states]
        unsaved = {damage.segment for damage, _ in out.not_kept}
        for segment in job.delete_segments:
            if segment in unsaved:
                continue    # its damaged bytes are not safe elsewhere yet: the segment stays
            if segment == self._done_segment:
                self._close_done()
            paths += [segment_path(self.segments, segment), done_path(self.segments, segment)]
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                out.cleanup_errors.append(str(e))

    def _mark_done(self, segment: int, data: bytes) -> None:
        """Append to a segment's done-log through a descriptor kept open for the next marks.

        Opening and closing the file for every batch of marks cost five system calls per
        delivered message on the writer thread; a mark is one short O_APPEND write (no fsync:
        see _cleanup)."""
        if self._done_segment != segment:
            self._close_done()
            self._done_fd = os.open(done_path(self.segments, segment),
                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._done_segment = segment
        assert self._done_fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._done_fd, view):]

    def _close_done(self) -> None:
        if self._done_fd is not None:
            os.close(self._done_fd)
        self._done_fd = self._done_segment = None

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._segment = None
        self._close_done()


def segment_path(segments_dir: str, segment: int) -> str:
    return os.path.join(segments_dir, f"{segment:012d}.log")


def done_path(segments_dir: str, segment: int) -> str:
    return os.path.join(segments_dir, f"{segment:012d}.done")


def writer_thread() -> JobThreads:
    """The one thread that runs the spool's writer jobs (a pool stand-in: callInThreadWithCallback).

    The writer runs one job at a time anyway, so it needs no pool: a job goes to this thread
    through a SimpleQueue, which costs the reactor one C call, where Twisted's ThreadPool hands
    it through its coordinator (locks, a condition, a dozen Python calls): a tenth of the
    reactor thread in the ingest profile, since every batch of puts is one job.
    """
    return JobThreads("queue-writer", 1)


# --- the spool ----------------------------------------------------------------------------------

@dataclass
class _Put:
    envelope: Envelope
    body_at: int          # offset of the message within its record
    size: int             # record length
    deferred: Deferred


@implementer(IQueue)
class Spool:
    """The durable queue: group-committed puts, done marks, per-message retry state.

    All bookkeeping happens on the reactor thread; disk work runs in `pool`, one job at a time,
    so puts that arrive while a write is in flight form the next, larger batch.
    """

    def __init__(self, directory: str, reactor, pool, writer: JobThreads | None = None):
        self._root = directory
        self._reactor = reactor
        self._pool = pool                       # reads of queued bodies (retries)
        self._writer_thread = writer            # the writer's jobs; None: they go to `pool` too
        self._writer = _Writer(directory)
        self._where: dict[str, Location] = {}
        self._envelopes: dict[str, Envelope] = {}
        self._live: dict[int, set[str]] = {}
        self._unsaved: set[int] = set()     # segments whose damaged bytes are not yet copied to corrupt/
        self.damaged: list[Damage] = []     # what recover() found that is not an intact record
        self._with_state: set[str] = set()
        self._next_segment: int | None = None      # None until recover() has looked at the disk
        self._active: int | None = None
        self._active_size = 0
        self._closed = False
        self._busy = False
        self._scheduled = None
        self._lazy = False                      # _scheduled is the CLEANUP_DELAY flush, not the next turn's
        self._idle_waiters: list[Deferred] = []
        self._lock_fd: int | None = None
        self._new_job()

    def _new_job(self) -> None:
        self._job = _Job()
        self._puts: list[_Put] = []
        self._batch_bytes = 0
        self._state_waiters: list[Deferred] = []

    # -- public API

    def lock(self) -> None:
        """Take the spool for this process, or raise SpoolLocked.

        Only one process may write the spool: the daemon holds this lock while it runs, so the
        `queue` command edits the spool directly only when no daemon does. Readers (`queue
        list`) need no lock. The kernel drops the lock when the process dies.
        """
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self._root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolLocked(f"{self._root} is in use by another process") from None
        self._lock_fd = fd

    def recover(self) -> list[tuple[Envelope, Location]]:
        """Read the spool at start: every message still pending, with state files applied.

        Runs once, synchronously, before any service listens. Cleanup it finds necessary
        (finished segments, stale state files) is queued for the first writer job, so a
        read-only user (`queue list`) that never flushes changes nothing.
        """
        segments_dir = self._writer.segments
        os.makedirs(segments_dir, mode=0o700, exist_ok=True)
        os.makedirs(self._writer.state, mode=0o700, exist_ok=True)
        numbers = sorted(int(n[:-4]) for n in os.listdir(segments_dir) if n.endswith(".log") and n[:-4].isdigit())
        states = self._read_states()
        pending: list[tuple[Envelope, Location]] = []
        for segment in numbers:
            done = _read_done(done_path(segments_dir, segment))
            self._live[segment] = set()
            damage: list[Damage] = []
            for qid, envelope_json, location in scan_segment(segment_path(segments_dir, segment), segment, damage):
                if qid in done:
                    continue
                envelope = states.get(qid) or self._parse(envelope_json, qid)
                if envelope is None:
                    # An intact record whose envelope we cannot read: kept aside, never dropped.
                    start = location.offset - len(envelope_json) - len(qid) - HEADER.size
                    damage.append(Damage(segment, start, location.offset + location.length - start,
                                         "damaged", qid))
                    continue
                if envelope.done():
                    continue
                self._register(envelope, location)
                pending.append((envelope, location))
            self._found_damage(damage)
            if not self._live[segment]:
                self._retire(segment)
        self._with_state = set(states) & set(self._where)
        self._job.forget_states += [q for q in states if q not in self._where]
        self._next_segment = (numbers[-1] + 1) if numbers else 1
        if self._job.forget_states or self._job.delete_segments or self._job.keep_aside:
            self._kick()
        return pending

    def put(self, envelope: Envelope, message: bytes) -> Deferred:
        """Deferred[None] firing once message and envelope are on disk (fdatasync'ed)."""
        if self._closed or self._next_segment is None:
            return fail(QueueWriteError("the spool is not open"))
        if not (envelope.id.isascii() and envelope.id.isalnum() and len(envelope.id) <= MAX_ID):
            return fail(QueueWriteError(f"bad queue id {envelope.id!r}"))
        envelope_json = envelope.to_record()
        head_size = record_head_size(envelope.id, envelope_json)
        d: Deferred = Deferred()
        size = head_size + len(message)
        self._puts.append(_Put(envelope, head_size, size, d))
        self._job.records.append((envelope.id, envelope_json, message))
        self._batch_bytes += size
        self._kick(urgent=self._batch_bytes >= BATCH_LIMIT)
        return d

    def done(self, qid: str) -> None:
        """The message is finished (delivered or bounced): append its id to the done-log."""
        location = self._where.pop(qid, None)
        if location is None:
            return
        self._envelopes.pop(qid, None)
        self._job.states.pop(qid, None)
        if qid in self._with_state:
            self._with_state.discard(qid)
            self._job.forget_states.append(qid)
        live = self._live[location.segment]
        live.discard(qid)
        if not live and location.segment != self._active:
            self._retire(location.segment)
        else:
            self._job.done_marks.setdefault(location.segment, []).append(qid)
        self._kick(lazy=True)

    delete = done   # removing a message by hand is, for the spool, the same as finishing it

    def update(self, envelope: Envelope) -> Deferred:
        """Persist per-recipient state after a failed attempt (the rare path): fsync'ed state file."""
        if envelope.id not in self._where:
            return succeed(None)
        self._job.states[envelope.id] = envelope.to_json()
        self._with_state.add(envelope.id)
        d: Deferred = Deferred()
        self._state_waiters.append(d)
        self._kick()
        return d

    def load(self, qid: str) -> Deferred:
        """Deferred[bytes]: a queued message's body, read back from its segment in the pool."""
        location = self._where.get(qid)
        if location is None:
            return fail(KeyError(qid))
        path = segment_path(self._writer.segments, location.segment)
        return deferToThreadPool(self._reactor, self._pool, read_body, path, location)

    def list(self) -> list[Envelope]:
        """Every message still queued (for `queue list`)."""
        return list(self._envelopes.values())

    def get(self, qid: str) -> Envelope | None:
        """The envelope of a queued message, or None when it is not (or no longer) queued."""
        return self._envelopes.get(qid)

    def close(self) -> Deferred:
        """Refuse new puts, finish what is pending, close the segment file."""
        self._closed = True
        self._job.close = True
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        self._kick(urgent=True)
        return d

    # -- bookkeeping

    def _parse(self, envelope_json: bytes, qid: str) -> Envelope | None:
        try:
            return Envelope.decode(envelope_json)
        except (ValueError, TypeError, KeyError) as e:
            maillog.error("unreadable envelope in spool", id=qid, reason=str(e))
            return None

    def _read_states(self) -> dict[str, Envelope]:
        states = {}
        for name in os.listdir(self._writer.state):
            if not name.endswith(".json"):
                continue
            qid = name[:-5]
            try:
                with open(os.path.join(self._writer.state, name), "rb") as f:
                    envelope = self._parse(f.read(), qid)
            except OSError as e:
                maillog.error("unreadable state file", id=qid, reason=str(e))
                continue
            if envelope is not None:
                states[qid] = envelope
        return states

    def _found_damage(self, damage: list[Damage]) -> None:
        """Log each bad stretch of a segment and have the first writer job copy it to corrupt/.

        Until that copy is on disk the segment is not deleted, even when nothing in it is
        pending: a segment goes only when every byte of it is a finished record or kept aside.
        """
        for item in damage:
            self.damaged.append(item)
            self._unsaved.add(item.segment)
            self._job.keep_aside.append(item)
            fields = dict(segment=f"{item.segment:012d}", offset=item.offset, length=item.length,
                          id=item.queue_id, kept=os.path.join("corrupt", item.name))
            if item.kind == "torn":
                maillog.error("torn record at the end of a queue segment (a write cut short; never acknowledged)",
                              **fields)
            else:
                maillog.error("damaged queue record; the records after it are read on", **fields)

    def _register(self, envelope: Envelope, location: Location) -> None:
        self._where[envelope.id] = location
        self._envelopes[envelope.id] = envelope
        self._live[location.segment].add(envelope.id)

    def _retire(self, segment: int) -> None:
        """Delete a segment none of whose records is pending any more (once its damage is kept aside)."""
        self._live.pop(segment, None)
        self._job.done_marks.pop(segment, None)
        if segment in self._unsaved:    # an earlier copy failed: try again before deleting
            queued = {(d.segment, d.offset) for d in self._job.keep_aside}
            self._job.keep_aside += [d for d in self.damaged
                                     if d.segment == segment and (d.segment, d.offset) not in queued]
        self._job.delete_segments.append(segment)

    # -- the writer loop

    def _kick(self, urgent: bool = False, lazy: bool = False) -> None:
        """Start a writer job: now (urgent), next turn (so one turn's puts share an fdatasync), or
        within CLEANUP_DELAY (lazy: done marks, which then mostly ride along with the next put's
        job instead of costing a thread round trip of their own per delivered message)."""
        if self._busy:
            return      # the running job's completion starts the next batch
        if urgent:
            if self._scheduled is not None:
                self._scheduled.cancel()
                self._scheduled = None
            self._flush()
        elif self._scheduled is None:
            self._lazy = lazy
            self._scheduled = self._reactor.callLater(CLEANUP_DELAY if lazy else 0, self._flush)
        elif self._lazy and not lazy:
            self._scheduled.cancel()
            self._lazy = False
            self._scheduled = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        job, puts, waiters = self._job, self._puts, self._state_waiters
        if self._busy:
            return
        if job.empty():
            self._wake_idle()
            return
        self._new_job()
        locations = self._place(puts) if puts else []
        job.segment = self._active or 0
        self._busy = True
        d = deferToThreadPool(self._reactor, self._writer_thread or self._pool, self._writer.run, job)
        d.addErrback(lambda f: _Outcome(records_error=f.value, states_error=f.value,
                                        cleanup_errors=[f.getErrorMessage()]))
        d.addCallback(self._finished, job, puts, locations, waiters)
        d.addErrback(lambda f: log.failure("spool bookkeeping failed", f))

    def _place(self, puts: list[_Put]) -> list[Location]:
        """Choose the segment for a batch (rotating when full) and each body's location in it."""
        if self._active is None or self._active_size >= SEGMENT_LIMIT:
            previous, self._active = self._active, self._next_segment
            self._next_segment += 1
            self._live[self._active] = set()
            self._active_size = 0
            if previous is not None and not self._live.get(previous):
                self._retire(previous)
        locations = []
        offset = self._active_size
        for put in puts:
            locations.append(Location(self._active, offset + put.body_at, put.size - put.body_at, offset))
            offset += put.size
        self._active_size = offset
        return locations

    def _finished(self, outcome: _Outcome, job: _Job, puts: list[_Put], locations: list[Location],
                  waiters: list[Deferred]) -> None:
        self._busy = False
        if outcome.records_error is not None:
            self._abandon_active()
        else:
            for put, location in zip(puts, locations):
                self._register(put.envelope, location)
        for problem in outcome.cleanup_errors:
            maillog.error("spool cleanup failed", reason=problem)
        for damage, path in outcome.kept_aside:
            self._unsaved.discard(damage.segment)
            maillog.emit("kept-aside", segment=f"{damage.segment:012d}", offset=damage.offset,
                         length=damage.length, kind=damage.kind, path=path)
        for damage, reason in outcome.not_kept:
            self._unsaved.add(damage.segment)
            maillog.error("could not keep a damaged queue record aside; its segment is kept",
                          segment=f"{damage.segment:012d}", offset=damage.offset, reason=reason)
        if self._job.urgent():
            self._flush()   # what arrived during the write goes now, as the next batch
        elif not self._job.empty():
            self._kick(lazy=True)
        else:
            self._wake_idle()
        self._fire([p.deferred for p in puts], outcome.records_error)
        self._fire(waiters, outcome.states_error)

    def _abandon_active(self) -> None:
        """After a failed write the segment is never appended to again."""
        segment, self._active = self._active, None
        if segment is not None and not self._live.get(segment):
            self._retire(segment)

    def _wake_idle(self) -> None:
        if self._closed and self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            if self._writer_thread is not None:
                self._writer_thread.stop()
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    @staticmethod
    def _fire(deferreds: list[Deferred], error: BaseException | None) -> None:
        if error is not None and deferreds:
            maillog.error("spool write failed", reason=str(error))
        for d in deferreds:
            if error is None:
                d.callback(None)
            else:
                d.errback(QueueWriteError(str(error)))


def _limited(semaphore: DeferredSemaphore, f: Callable[..., object], *args: object) -> Deferred:
    """semaphore.run(f, *args), without its two extra Deferreds (acquire's and run's) when a
    token is free, the common case: every accepted message goes through here."""
    if semaphore.tokens <= 0:
        return semaphore.run(f, *args)
    semaphore.tokens -= 1            # what acquire() does with a free token

    def release(result: object) -> object:
        semaphore.release()
        return result
    return maybeDeferred(f, *args).addBoth(release)


# --- the `queue` command without a daemon -------------------------------------------------------

def read_queue(directory: str) -> list[Envelope]:
    """Every queued message, read from disk without changing anything (`queue list`).

    Safe while the daemon runs: records are only appended and state files are renamed into
    place, so a reader sees each message either before or after a change, never half of one.
    """
    if not os.path.isdir(os.path.join(directory, "segments")):
        return []
    spool = Spool(directory, InlineReactor(), InlinePool())
    return [envelope for envelope, _ in spool.recover()]


class DamagedRecord(NamedTuple):
    """One bad stretch of the spool, for `queue list` and `check`: where it is kept, and what it is."""

    path: str           # in corrupt/, or the segment that still holds it (not copied yet)
    length: int
    kind: str           # "damaged" or "torn"
    queue_id: str       # the id its header names, when readable; "" otherwise


def read_damage(directory: str, found: list[Damage] | None = None) -> list[DamagedRecord]:
    """Everything kept in corrupt/, plus what a scan `found` that is not copied there yet.

    Reads only: `queue list` and `check` use it with or without a running daemon.
    """
    corrupt_dir = os.path.join(directory, "corrupt")
    out: dict[str, DamagedRecord] = {}
    try:
        names = sorted(os.listdir(corrupt_dir))
    except FileNotFoundError:
        names = []
    for name in names:
        stem, _, kind = name.partition(".")
        if name.startswith(".") or kind not in ("damaged", "torn"):
            continue        # temporary files of a copy in progress
        path = os.path.join(corrupt_dir, name)
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER.size + 64)
                length = os.fstat(f.fileno()).st_size
        except OSError:
            continue
        ident = ""
        if len(head) >= HEADER.size and head[:4] == MAGIC:
            raw = head[HEADER.size:HEADER.size + HEADER.unpack(head[:HEADER.size])[1]]
            ident = raw.decode("ascii") if raw.isascii() and raw.isalnum() else ""
        out[name] = DamagedRecord(path, length, kind, ident)
    for item in found or ():
        if item.name not in out:
            out[item.name] = DamagedRecord(segment_path(os.path.join(directory, "segments"), item.segment)
                                           + f" at byte {item.offset}", item.length, item.kind, item.queue_id)
    return list(out.values())


def damage_lines(damaged: list[DamagedRecord] | tuple[DamagedRecord, ...]) -> list[str]:
    """One line per damaged or torn record kept aside, then a count (`queue list` and `check`)."""
    if not damaged:
        return []
    lines = []
    for item in damaged:
        what = "damaged record" if item.kind == "damaged" else "torn record (a write cut short, never acknowledged)"
        ident = f", queue id {item.queue_id}?" if item.queue_id else ""
        lines.append(f"{what}: {item.path} ({item.length} bytes{ident})")
    count = len(damaged)
    lines.append(f"{count} damaged record{'' if count == 1 else 's'} kept aside in the queue: the log says "
                 "where each was found; look at them, then delete them")
    return lines


def read_spool(directory: str) -> tuple[list[Envelope], list[DamagedRecord]]:
    """`queue list`'s view: every queued message, and every damaged record (read-only, like read_queue)."""
    if not os.path.isdir(os.path.join(directory, "segments")):
        return [], read_damage(directory)
    spool = Spool(directory, InlineReactor(), InlinePool())
    envelopes = [envelope for envelope, _ in spool.recover()]
    return envelopes, read_damage(directory, spool.damaged)


def edit_offline(directory: str, qid: str, action: str) -> None:
    """delete, hold or release one message while no daemon runs.

    Raises SpoolLocked when a daemon holds the spool, KeyError for an id not queued,
    QueueWriteError when the change could not be written.
    """
    if not os.path.isdir(os.path.join(directory, "segments")):
        raise KeyError(qid)     # nothing was ever queued here
    spool = Spool(directory, InlineReactor(), InlinePool())
    spool.lock()
    outcome: list[object] = []
    try:
        spool.recover()
        envelope = spool.get(qid)
        if envelope is None:
            raise KeyError(qid)
        if action == "delete":
            spool.delete(qid)
        else:
            envelope.held = action == "hold"
            if not envelope.held:
                _due_now(envelope, time.time())     # released: tried as soon as the daemon starts
            spool.update(envelope).addBoth(outcome.append)
    finally:
        spool.close()       # runs the pending job inline and releases the lock
    if outcome and isinstance(outcome[0], Failure):
        outcome[0].raiseException()


# --- the runner ---------------------------------------------------------------------------------

def describe(status: str, text: str) -> str:
    """A failure as stored in `last_error`, logged and listed: its status, then its text on one line."""
    text = " ".join(text.split())
    return f"{status} {text}" if text else status


@implementer(IQueue)
class QueueService(Service):
    """Delivers queued messages: at once after acceptance, then by backoff until delivered or bounced.

    Each pending recipient goes to `couriers["local"]` or `couriers["remote"]`. A temporary
    failure is retried (retry_initial doubling up to retry_max); a permanent one, or one past
    max_queue_lifetime, fails the recipient and sends the sender a DSN (never to <>). A message
    still undelivered after delay_warning gets the sender one "delayed" DSN. The operator's
    `queue` command acts through flush/delete/hold/release.
    """

    def __init__(self, spool: Spool, couriers: Mapping[str, ICourier], queue_section: QueueSection, reactor, *,
                 hostname: str, is_local: Callable[[str], bool], concurrency: int = 20,
                 remote_concurrency: int | None = None):
        self._spool = spool
        self._couriers = couriers
        self._settings = queue_section
        self._reactor = reactor
        self._hostname = hostname
        self._is_local = is_local
        # Courier calls at once, per courier: remote deliveries waiting for a busy destination
        # ([delivery] destination_concurrency) never hold local ones up.
        self._deliveries = {"local": DeferredSemaphore(concurrency),
                            "remote": DeferredSemaphore(remote_concurrency or concurrency)}
        self._retries = DeferredSemaphore(concurrency)      # retry rounds with a body read back from disk
        self._waiting: dict[str, Envelope] = {}             # queued, not being delivered right now
        self._timer = None
        self._to_start: list[tuple[Envelope, bytes]] = []   # just queued, delivery starts next turn

    def startService(self) -> None:
        self._spool.lock()
        super().startService()
        for envelope, _location in self._spool.recover():
            self._waiting[envelope.id] = envelope
            # After a crash these are redelivered (a delivery in flight may come twice): say which.
            maillog.emit("recovered", id=envelope.id, rcpts=",".join(r.address for r in envelope.pending()),
                         held="yes" if envelope.held else "")
        self._run_due()

    def reconfigure(self, queue_section: QueueSection, hostname: str) -> None:
        """A reload's [queue] timings and host name (for DSNs), used from the next decision on.

        The couriers mapping is the caller's: a reload replaces its entries (appliance.tap), so a
        delivery in flight finishes with the courier it started with.
        """
        self._settings = queue_section
        self._hostname = hostname

    def stopService(self) -> Deferred:
        """Stop retrying and close the spool; deliveries in flight are redone after a restart."""
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self._spool.close()

    # -- what the operator's `queue` command asks for (through appliance/control.py)

    def flush(self) -> int:
        """Try every deferred, unheld message now (`queue flush`); returns how many."""
        now = self._reactor.seconds()
        waiting = [e for e in self._waiting.values() if not e.held and e.pending()]
        for envelope in waiting:
            _due_now(envelope, now)
        self._run_now()
        return len(waiting)

    def delete(self, qid: str) -> None:
        """Drop a queued message without a DSN (`queue delete`); KeyError when it is not queued.

        A delivery already in flight finishes, but its outcome is no longer recorded.
        """
        self._known(qid)
        self._waiting.pop(qid, None)
        self._spool.delete(qid)
        maillog.removed(qid, "deleted by the operator")

    def hold(self, qid: str) -> Deferred:
        """Keep a message but stop trying it until released; fires once that is on disk."""
        envelope = self._known(qid)
        envelope.held = True
        maillog.emit("held", id=qid)
        return self._spool.update(envelope)

    def release(self, qid: str) -> Deferred:
        """Undo `hold`; the message is tried at once. Fires once that is on disk."""
        envelope = self._known(qid)
        envelope.held = False
        _due_now(envelope, self._reactor.seconds())
        maillog.emit("released", id=qid)
        d = self._spool.update(envelope)
        if qid in self._waiting:
            self._run_now()
        return d

    def envelopes(self) -> list[Envelope]:
        """Every message still queued, as the running queue sees it (for `status`)."""
        return self._spool.list()

    def _known(self, qid: str) -> Envelope:
        envelope = self._spool.get(qid)
        if envelope is None:
            raise KeyError(qid)
        return envelope

    # -- the fast path

    def put(self, envelope: Envelope, message: bytes) -> Deferred:
        """Queue a message durably; once it is, start delivering it (the fast path)."""
        d = self._spool.put(envelope, message)
        d.addCallback(self._start_next_turn, envelope, message)
        return d

    def _start_next_turn(self, _: None, envelope: Envelope, message: bytes) -> None:
        """Start delivery on the next turn, so the client's 250 goes out first; one timer for
        the whole group commit (its puts fire in one turn), not one per message."""
        if not self._to_start:
            self._reactor.callLater(0, self._start_queued)
        self._to_start.append((envelope, message))

    def _start_queued(self) -> None:
        started, self._to_start = self._to_start, []
        for envelope, message in started:
            self._accepted(envelope, message)

    def _accepted(self, envelope: Envelope, message: bytes) -> None:
        if not self.running:
            self._waiting[envelope.id] = envelope
            return
        try:
            self._round(envelope, message)
        except Exception:
            # The message is safe on disk; the SMTP client must still hear 250.
            log.failure("could not start delivery of {id}", id=envelope.id)
            self._wait(envelope)

    # -- one delivery round: every due recipient of one message, then persist the outcome

    def _round(self, envelope: Envelope, message: bytes | None) -> Deferred:
        now = self._reactor.seconds()
        due = [r for r in envelope.pending() if r.next_attempt <= now]
        self._waiting.pop(envelope.id, None)
        body = succeed(message) if message is not None else self._spool.load(envelope.id)
        body.addCallbacks(self._deliver_all, self._unreadable, (envelope, due), None, (envelope, due))
        body.addCallback(self._settle, envelope, due)
        body.addErrback(lambda f: log.failure("delivery round of {id} failed", f, id=envelope.id))
        body.addBoth(lambda _: self._wait(envelope) if envelope.pending() else None)
        return body

    def _deliver_all(self, message: bytes, envelope: Envelope, due: list[Recipient]) -> Deferred:
        attempts = [self._deliver_one(envelope, rcpt, message) for rcpt in due]
        both = attempts[0] if len(attempts) == 1 else gatherResults(attempts)
        return both.addCallback(lambda _: message)

    def _deliver_one(self, envelope: Envelope, rcpt: Recipient, message: bytes) -> Deferred:
        kind = "local" if rcpt.local else "remote"
        courier = self._couriers.get(kind)
        if courier is None:
            d = fail(TemporaryFailure("4.3.5", "no courier configured for this recipient"))
        else:
            d = _limited(self._deliveries[kind], courier.deliver, envelope, rcpt, message)
        return d.addCallbacks(self._delivered, self._failed, (envelope, rcpt), None, (envelope, rcpt))

    def _unreadable(self, failure: Failure, envelope: Envelope, due: list[Recipient]) -> None:
        log.failure("cannot read queued message {id}", failure, id=envelope.id)
        for rcpt in due:
            self._temporary(envelope, rcpt, "4.3.0", "queued message unreadable")
        return None

    def _delivered(self, where: str, envelope: Envelope, rcpt: Recipient) -> None:
        rcpt.state = DELIVERED
        rcpt.last_error = ""
        maillog.delivered(envelope.id, rcpt.address, str(where), self._reactor.seconds() - envelope.received_at,
                          original=rcpt.original, parent=envelope.parent,
                          via="local" if rcpt.local else "relay")

    def _failed(self, failure: Failure, envelope: Envelope, rcpt: Recipient) -> None:
        """A courier's failure: its status says retry (4.x.y) or bounce (5.x.y); anything else is our bug."""
        if failure.check(ApplianceError):
            error = failure.value
            record = self._temporary if error.temporary else self._permanent
            record(envelope, rcpt, error.status, error.text)
        else:
            log.failure("unexpected error delivering {id} to {rcpt}", failure, id=envelope.id, rcpt=rcpt.address)
            self._temporary(envelope, rcpt, "4.3.0", "internal error")

    def _temporary(self, envelope: Envelope, rcpt: Recipient, status: str, text: str) -> None:
        now = self._reactor.seconds()
        rcpt.attempts += 1
        if now - envelope.received_at >= self._settings.max_queue_lifetime:
            self._permanent(envelope, rcpt, "4.4.7", f"delivery time expired; last error: {describe(status, text)}")
            return
        delay = self.backoff(rcpt.attempts)
        rcpt.next_attempt = now + delay
        rcpt.status, rcpt.last_error = status, describe(status, text)
        maillog.deferred(envelope.id, rcpt.address, rcpt.last_error, delay, original=rcpt.original,
                         parent=envelope.parent)

    def _permanent(self, envelope: Envelope, rcpt: Recipient, status: str, text: str) -> None:
        """Bounce the recipient; `status` may be 4.x.y (4.4.7: retried until the queue lifetime ran out)."""
        rcpt.state = FAILED
        rcpt.status, rcpt.last_error = status, describe(status, text)
        maillog.bounced(envelope.id, rcpt.address, rcpt.last_error, original=rcpt.original, parent=envelope.parent)

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number `attempts`: retry_initial doubling, capped at retry_max."""
        return float(min(self._settings.retry_initial * 2 ** min(attempts - 1, 32), self._settings.retry_max))

    def _settle(self, message: bytes | None, envelope: Envelope, due: list[Recipient]) -> Deferred:
        """Queue the DSNs first, then mark the message done or persist its state, so nothing is lost."""
        if self._spool.get(envelope.id) is None:
            return succeed(None)    # deleted by the operator during this round: nothing to report
        notices = []
        failed = [r for r in due if r.state == FAILED]
        if failed:
            notices.append(self._notify(envelope, failed, message, delayed=False))
        if self._delay_notice_due(envelope):
            envelope.delay_notified = True      # recorded with the state below: sent once
            notices.append(self._notify(envelope, envelope.pending(), message, delayed=True))
        queued = gatherResults(notices) if notices else succeed(None)
        return queued.addCallback(lambda _: self._record(envelope))

    def _delay_notice_due(self, envelope: Envelope) -> bool:
        """Still undelivered after delay_warning, and the sender not told yet."""
        age = self._reactor.seconds() - envelope.received_at
        return bool(envelope.pending()) and not envelope.delay_notified and age >= self._settings.delay_warning

    def _notify(self, envelope: Envelope, recipients: list[Recipient], message: bytes | None,
                delayed: bool) -> Deferred:
        """Queue a DSN (failed or delayed) to the sender; never to the null sender.

        bounce.py decides how much of the message goes back (bounded: whole up to 50 KB, else headers).
        """
        if not envelope.sender:
            return succeed(None)
        message = message if message is not None else b""
        dsn, data = bounce.make_dsn(envelope, recipients, self._hostname, message, is_local=self._is_local,
                                    delayed=delayed, now=self._reactor.seconds(), original=message or None)
        if delayed:
            maillog.emit("delay-notice", id=envelope.id, to=envelope.sender, dsn=dsn.id)
        queued = self.put(dsn, data)
        queued.addCallback(lambda _: bounce.log_queued(dsn))
        queued.addErrback(lambda f: log.failure("could not queue the DSN for {id}", f, id=envelope.id))
        return queued

    def _record(self, envelope: Envelope) -> Deferred | None:
        if envelope.pending():
            d = self._spool.update(envelope)
            d.addErrback(lambda f: log.failure("could not save the state of {id}", f, id=envelope.id))
            return d
        self._spool.done(envelope.id)
        states = {r.state for r in envelope.recipients}
        maillog.removed(envelope.id, "delivered" if states == {DELIVERED} else
                        "bounced" if states == {FAILED} else "delivered and bounced")
        return None

    # -- retry timer

    def _wait(self, envelope: Envelope) -> None:
        """Park a message until its earliest pending recipient is due."""
        if self._spool.get(envelope.id) is None:
            return      # deleted by the operator while it was being delivered
        self._waiting[envelope.id] = envelope
        self._arm(min(r.next_attempt for r in envelope.pending()))

    def _arm(self, when: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self._reactor.callLater(max(0.0, when - self._reactor.seconds()), self._run_due)

    def _run_now(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.running:
            self._run_due()

    def _run_due(self) -> None:
        self._timer = None
        now = self._reactor.seconds()
        later = []
        for envelope in list(self._waiting.values()):
            pending = envelope.pending()
            if not pending:
                self._waiting.pop(envelope.id)
                continue
            if envelope.held:
                continue        # `queue hold`: kept, not tried, until released
            first = min(r.next_attempt for r in pending)
            if first <= now:
                self._waiting.pop(envelope.id)
                self._retries.run(self._round, envelope, None)
            else:
                later.append(first)
        if later:
            self._arm(min(later))


def _due_now(envelope: Envelope, now: float) -> None:
    """Make every pending recipient due at once (flush, release)."""
    for rcpt in envelope.pending():
        rcpt.next_attempt = min(rcpt.next_attempt, now)
