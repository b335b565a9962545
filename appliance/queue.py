"""The durable spool (group-committed, append-only segment files) and the runner that delivers from it.

Why this shape: "250 after DATA" is a promise that the message survives a crash, so `put` fires
only after an fdatasync. One fsync per message caps a spool at a few thousand files a second and
creating/unlinking a file per message is slow on our file system, so every message accepted in
one reactor turn is appended to the active segment with one write and one fdatasync (group
commit). The on-disk format and the durability argument are described in docs/queue.md.
"""
from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, gatherResults, succeed
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
from appliance.durable import fsync_dir, replace_file

log = Logger()

MAGIC = b"MAQ1"
# magic, queue-id length, envelope length, message length, CRC32 of id + envelope + message
HEADER = struct.Struct(">4sHIII")
SEGMENT_LIMIT = 64 * 1024 * 1024   # rotate the active segment past this size
BATCH_LIMIT = 1024 * 1024          # flush at once, without waiting for the turn to end, past this


class SpoolLocked(Exception):
    """Another process (the running daemon) holds the spool: only one process may write it."""


class Location(NamedTuple):
    """Where a queued message's body lies: segment number, byte offset and length."""

    segment: int
    offset: int
    length: int


# --- the on-disk format -------------------------------------------------------------------------

def encode_record(qid: str, envelope_json: bytes, message: bytes) -> bytes:
    """One segment record: header, queue id, envelope JSON, message bytes."""
    ident = qid.encode("ascii")
    crc = zlib.crc32(message, zlib.crc32(envelope_json, zlib.crc32(ident)))
    header = HEADER.pack(MAGIC, len(ident), len(envelope_json), len(message), crc)
    return b"".join((header, ident, envelope_json, message))


def scan_segment(path: str, segment: int) -> Iterator[tuple[str, bytes, Location]]:
    """Yield (queue id, envelope JSON, body location) of each intact record, in order.

    Scanning stops at the first short or corrupt record: only the tail of the file can be torn
    (a crash mid-write), and no put for that record ever fired, so no 250 was given for it.
    """
    with open(path, "rb") as f:
        offset = 0
        size = os.fstat(f.fileno()).st_size
        while True:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            magic, id_len, env_len, msg_len, crc = HEADER.unpack(header)
            if magic != MAGIC:
                return
            if offset + HEADER.size + id_len + env_len + msg_len > size:
                return      # a damaged length: never ask read() for gigabytes the file does not hold
            rest = f.read(id_len + env_len + msg_len)
            if len(rest) < id_len + env_len + msg_len or zlib.crc32(rest) != crc:
                return
            body_at = offset + HEADER.size + id_len + env_len
            try:
                qid = rest[:id_len].decode("ascii")
            except UnicodeDecodeError:
                return
            yield qid, rest[id_len:id_len + env_len], Location(segment, body_at, msg_len)
            offset = body_at + msg_len


def read_body(path: str, location: Location) -> bytes:
    """The message bytes of one record (run in the pool)."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), location.length, location.offset)
    if len(data) != location.length:
        raise OSError(f"{path}: short read at {location.offset}")
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
    records: list[bytes] = field(default_factory=list)
    states: dict[str, bytes] = field(default_factory=dict)
    done_marks: dict[int, list[str]] = field(default_factory=dict)
    forget_states: list[str] = field(default_factory=list)
    delete_segments: list[int] = field(default_factory=list)
    close: bool = False

    def empty(self) -> bool:
        return not (self.records or self.states or self.done_marks or self.forget_states
                    or self.delete_segments or self.close)


@dataclass
class _Outcome:
    records_error: BaseException | None = None
    states_error: BaseException | None = None
    cleanup_errors: list[str] = field(default_factory=list)


class _Writer:
    """The spool's disk side. Owned by the single in-flight job, so it needs no lock."""

    def __init__(self, root: str):
        self.segments = os.path.join(root, "segments")
        self.state = os.path.join(root, "state")
        self._fd: int | None = None
        self._segment: int | None = None

    def run(self, job: _Job) -> _Outcome:
        out = _Outcome()
        if job.records:
            try:
                self._append(job.segment, b"".join(job.records))
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

    def _append(self, segment: int, data: bytes) -> None:
        if self._segment != segment:
            self._close()
            self._fd = os.open(segment_path(self.segments, segment),
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._segment = segment
            fsync_dir(self.segments)
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
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
                with open(done_path(self.segments, segment), "ab") as f:
                    f.write("".join(q + "\n" for q in qids).encode("ascii"))
            except OSError as e:
                out.cleanup_errors.append(str(e))
        paths = [os.path.join(self.state, q + ".json") for q in job.forget_states]
        for segment in job.delete_segments:
            paths += [segment_path(self.segments, segment), done_path(self.segments, segment)]
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                out.cleanup_errors.append(str(e))

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._segment = None


def segment_path(segments_dir: str, segment: int) -> str:
    return os.path.join(segments_dir, f"{segment:012d}.log")


def done_path(segments_dir: str, segment: int) -> str:
    return os.path.join(segments_dir, f"{segment:012d}.done")


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

    def __init__(self, directory: str, reactor, pool):
        self._root = directory
        self._reactor = reactor
        self._pool = pool
        self._writer = _Writer(directory)
        self._where: dict[str, Location] = {}
        self._envelopes: dict[str, Envelope] = {}
        self._live: dict[int, set[str]] = {}
        self._with_state: set[str] = set()
        self._next_segment: int | None = None      # None until recover() has looked at the disk
        self._active: int | None = None
        self._active_size = 0
        self._closed = False
        self._busy = False
        self._scheduled = None
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
            for qid, envelope_json, location in scan_segment(segment_path(segments_dir, segment), segment):
                if qid in done:
                    continue
                envelope = states.get(qid) or self._parse(envelope_json, qid)
                if envelope is None or envelope.done():
                    continue
                self._register(envelope, location)
                pending.append((envelope, location))
            if not self._live[segment]:
                self._retire(segment)
        self._with_state = set(states) & set(self._where)
        self._job.forget_states += [q for q in states if q not in self._where]
        self._next_segment = (numbers[-1] + 1) if numbers else 1
        if self._job.forget_states or self._job.delete_segments:
            self._kick()
        return pending

    def put(self, envelope: Envelope, message: bytes) -> Deferred:
        """Deferred[None] firing once message and envelope are on disk (fdatasync'ed)."""
        if self._closed or self._next_segment is None:
            return fail(QueueWriteError("the spool is not open"))
        if not (envelope.id.isascii() and envelope.id.isalnum()):
            return fail(QueueWriteError(f"bad queue id {envelope.id!r}"))
        record = encode_record(envelope.id, envelope.to_json(), message)
        d: Deferred = Deferred()
        self._puts.append(_Put(envelope, len(record) - len(message), len(record), d))
        self._job.records.append(record)
        self._batch_bytes += len(record)
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
        self._kick()

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
            return Envelope.from_json(envelope_json)
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

    def _register(self, envelope: Envelope, location: Location) -> None:
        self._where[envelope.id] = location
        self._envelopes[envelope.id] = envelope
        self._live[location.segment].add(envelope.id)

    def _retire(self, segment: int) -> None:
        """Delete a segment none of whose records is pending any more."""
        self._live.pop(segment, None)
        self._job.done_marks.pop(segment, None)
        self._job.delete_segments.append(segment)

    # -- the writer loop

    def _kick(self, urgent: bool = False) -> None:
        if self._busy:
            return      # the running job's completion starts the next batch
        if urgent:
            if self._scheduled is not None:
                self._scheduled.cancel()
                self._scheduled = None
            self._flush()
        elif self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
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
        d = deferToThreadPool(self._reactor, self._pool, self._writer.run, job)
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
            locations.append(Location(self._active, offset + put.body_at, put.size - put.body_at))
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
        if not self._job.empty():
            self._flush()   # what arrived during the write goes now, as the next batch
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
                 hostname: str, is_local: Callable[[str], bool], concurrency: int = 20):
        self._spool = spool
        self._couriers = couriers
        self._settings = queue_section
        self._reactor = reactor
        self._hostname = hostname
        self._is_local = is_local
        self._deliveries = DeferredSemaphore(concurrency)   # courier calls at once, in total
        self._retries = DeferredSemaphore(concurrency)      # retry rounds with a body read back from disk
        self._waiting: dict[str, Envelope] = {}             # queued, not being delivered right now
        self._timer = None

    def startService(self) -> None:
        self._spool.lock()
        super().startService()
        for envelope, _location in self._spool.recover():
            self._waiting[envelope.id] = envelope
        self._run_due()

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

    def _known(self, qid: str) -> Envelope:
        envelope = self._spool.get(qid)
        if envelope is None:
            raise KeyError(qid)
        return envelope

    # -- the fast path

    def put(self, envelope: Envelope, message: bytes) -> Deferred:
        """Queue a message durably; once it is, start delivering it (the fast path)."""
        d = self._spool.put(envelope, message)
        # Start delivery on the next turn, so the client's 250 goes out first.
        d.addCallback(lambda _: self._reactor.callLater(0, self._accepted, None, envelope, message) and None)
        return d

    def _accepted(self, _: None, envelope: Envelope, message: bytes) -> None:
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
        courier = self._couriers.get("local" if rcpt.local else "remote")
        if courier is None:
            d = fail(TemporaryFailure("4.3.5", "no courier configured for this recipient"))
        else:
            d = self._deliveries.run(courier.deliver, envelope, rcpt, message)
        return d.addCallbacks(self._delivered, self._failed, (envelope, rcpt), None, (envelope, rcpt))

    def _unreadable(self, failure: Failure, envelope: Envelope, due: list[Recipient]) -> None:
        log.failure("cannot read queued message {id}", failure, id=envelope.id)
        for rcpt in due:
            self._temporary(envelope, rcpt, "4.3.0", "queued message unreadable")
        return None

    def _delivered(self, where: str, envelope: Envelope, rcpt: Recipient) -> None:
        rcpt.state = DELIVERED
        rcpt.last_error = ""
        maillog.delivered(envelope.id, rcpt.address, str(where), self._reactor.seconds() - envelope.received_at)

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
        maillog.deferred(envelope.id, rcpt.address, rcpt.last_error, delay)

    def _permanent(self, envelope: Envelope, rcpt: Recipient, status: str, text: str) -> None:
        """Bounce the recipient; `status` may be 4.x.y (4.4.7: retried until the queue lifetime ran out)."""
        rcpt.state = FAILED
        rcpt.status, rcpt.last_error = status, describe(status, text)
        maillog.bounced(envelope.id, rcpt.address, rcpt.last_error)

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number `attempts`: retry_initial doubling, capped at retry_max."""
        return float(min(self._settings.retry_initial * 2 ** min(attempts - 1, 32), self._settings.retry_max))

    def _settle(self, message: bytes | None, envelope: Envelope, due: list[Recipient]) -> Deferred:
        """Queue the DSNs first, then mark the message done or persist its state, so nothing is lost."""
        if self._spool.get(envelope.id) is None:
            return succeed(None)    # deleted by the operator during this round: nothing to report
        headers = bounce.headers_of(message) if message is not None else b""
        notices = []
        failed = [r for r in due if r.state == FAILED]
        if failed:
            notices.append(self._notify(envelope, failed, headers, delayed=False))
        if self._delay_notice_due(envelope):
            envelope.delay_notified = True      # recorded with the state below: sent once
            notices.append(self._notify(envelope, envelope.pending(), headers, delayed=True))
        queued = gatherResults(notices) if notices else succeed(None)
        return queued.addCallback(lambda _: self._record(envelope))

    def _delay_notice_due(self, envelope: Envelope) -> bool:
        """Still undelivered after delay_warning, and the sender not told yet."""
        age = self._reactor.seconds() - envelope.received_at
        return bool(envelope.pending()) and not envelope.delay_notified and age >= self._settings.delay_warning

    def _notify(self, envelope: Envelope, recipients: list[Recipient], headers: bytes, delayed: bool) -> Deferred:
        """Queue a DSN (failed or delayed) to the sender; never to the null sender."""
        if not envelope.sender:
            return succeed(None)
        dsn, data = bounce.make_dsn(envelope, recipients, self._hostname, headers, is_local=self._is_local,
                                    delayed=delayed, now=self._reactor.seconds())
        if delayed:
            maillog.emit("delay-notice", id=envelope.id, to=envelope.sender, dsn=dsn.id)
        queued = self.put(dsn, data)
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
