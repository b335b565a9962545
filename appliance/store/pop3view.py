"""The POP3 view of a mailbox: a session's snapshot of the INBOX folder, its messages in wire form, deletions.

A POP3 session sees its maildrop as it was at login (RFC 1939 numbers messages for the whole
session), so mail delivered meanwhile waits for the next session and never shifts the numbers.
The snapshot is taken from the same Folder object IMAP uses (store/folder.py), so POP3 and IMAP
list the same messages, in UID order; this module knows no storage format. `Maildrop` is the
reactor-side session object; the blocking parts run in the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.interfaces import IMaildrop
from appliance.mime import crlf as to_wire, wire_size

AHEAD_MESSAGES = 32         # messages one pool trip reads for RETR/TOP
AHEAD_BYTES = 1 << 20       # ... and at most this many octets (one bigger message is read alone)

if TYPE_CHECKING:
    from appliance.store.account import Account
    from appliance.store.folder import Folder

__all__ = ["Entry", "FolderSource", "Maildrop", "MessageGone", "NoSuchMessage", "Wire", "dot_stuff", "open_maildrop",
           "to_wire", "wire_size"]


class MessageGone(Exception):
    """The message of the snapshot is no longer there (another session or program removed it)."""


class NoSuchMessage(Exception):
    """A message number outside the snapshot, or one marked deleted (RFC 1939: -ERR no such message)."""


@dataclass(frozen=True)
class Entry:
    """One message of a snapshot. `where` is the source's own locator (for a folder: the IMAP UID)."""

    uid: str         # the UIDL: stable across sessions and restarts
    size: int        # octets of the CRLF form, the exact size RFC 1939 LIST and STAT report
    where: Any


DOTS_LOOKED_AT = 8           # dots checked one by one before searching the whole body for CRLF "."


def dot_stuff(body: bytes) -> bytes:
    """`body` (CRLF) with a dot added before every line that begins with one (RFC 1939 3).

    The octets of a message itself, without the terminating line; `body` is returned as it
    is (no copy) when no line begins with a dot, as in most mail."""
    if not _has_dot_line(body):
        return body
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..")


def _has_dot_line(body: bytes) -> bool:
    """Whether a line of `body` (CRLF) begins with a dot.

    Searching for CRLF "." costs time per CR and LF in the body, so short lines (tables, logs)
    make it slow: 13 us for 13 KiB of bench/pop3_retr's messages. Looking at the few dots of
    a dot-poor body (base64, most headers and plain text) costs well under a microsecond; a
    body with many dots is searched after the first DOTS_LOOKED_AT of them.
    """
    if body.startswith(b"."):
        return True
    at = body.find(b".")
    for _ in range(DOTS_LOOKED_AT):
        if at < 0:
            return False
        if body[at - 1] == 0x0A:           # at > 0 here; a LF in the CRLF form ends a line
            return True
        at = body.find(b".", at + 1)
    return body.find(b"\r\n.", at - 2) >= 0


@dataclass(frozen=True, slots=True)
class Wire:
    """One message as POP3 sends it, made in the pool: the reactor only writes it.

    Scanning a message for lines to stuff costs about as much as the LF to CRLF conversion
    (microseconds per 10 KiB); done here, beside that conversion, it stays off the reactor.
    """

    raw: bytes        # CRLF form: what LIST counts and TOP cuts
    stuffed: bytes    # raw byte-stuffed for RETR (the same object when nothing needed stuffing)

    @classmethod
    def of(cls, raw: bytes) -> "Wire":
        return cls(raw, dot_stuff(raw))

    @property
    def octets(self) -> int:
        """Memory held: both forms when stuffing made a copy (what the read-ahead's budget counts)."""
        return len(self.raw) + (len(self.stuffed) if self.stuffed is not self.raw else 0)


class Source(Protocol):
    """Blocking operations behind a Maildrop; all run in a worker thread."""

    def scan(self, path: str) -> list[Entry]: ...

    def read(self, path: str, entry: Entry) -> bytes: ...

    def read_many(self, path: str, entries: list[Entry]) -> list[bytes | None]: ...

    def expunge(self, path: str, entries: list[Entry]) -> None: ...


class FolderSource:
    """A Maildrop's source over one Folder: listing, reading and removing by UID."""

    def __init__(self, folder: "Folder") -> None:
        self.folder = folder

    def scan(self, path: str = "") -> list[Entry]:
        return [Entry(uidl, size, uid) for uid, uidl, size in self.folder.pop3_listing()]

    def read(self, path: str, entry: Entry) -> bytes:
        try:
            return self.folder.read(entry.where)
        except (KeyError, FileNotFoundError):
            raise MessageGone(entry.uid) from None

    def read_many(self, path: str, entries: list[Entry]) -> list[bytes | None]:
        """A batch in CRLF form (None: gone), through Folder.read_many: an mbox is opened once for
        the batch, not once per message, as FETCH reads it."""
        return self.folder.read_many([entry.where for entry in entries])

    def expunge(self, path: str, entries: list[Entry]) -> None:
        """Remove by UID: a message flagged or moved to cur/ by another reader is still the one removed."""
        self.folder.expunge([entry.where for entry in entries])


@implementer(IMaildrop)
class Maildrop:
    """One POP3 session's view of a maildrop: the snapshot taken at login and the deletion marks.

    Message numbers are 0-based here; the protocol adds one. Only `read` and `commit` touch the
    disk, in the pool; everything else answers from the snapshot.
    """

    def __init__(self, source: Source, path: str, entries: list[Entry], reactor: Any, pool: Any) -> None:
        self._source = source
        self._path = path
        self._entries = entries
        self._deleted: set[int] = set()
        self._reactor = reactor
        self._pool = pool
        self._ahead = ReadAhead(self)

    def count(self) -> int:
        """Messages not marked deleted, as STAT reports them."""
        return len(self._entries) - len(self._deleted)

    def octets(self) -> int:
        return sum(entry.size for n, entry in enumerate(self._entries) if n not in self._deleted)

    def live(self) -> list[tuple[int, Entry]]:
        """(number, entry) of every message not marked deleted, for LIST and UIDL without argument."""
        return [(n, entry) for n, entry in enumerate(self._entries) if n not in self._deleted]

    def entry(self, n: int) -> Entry:
        """The message `n`; NoSuchMessage when out of range or marked deleted."""
        if not 0 <= n < len(self._entries) or n in self._deleted:
            raise NoSuchMessage(n)
        return self._entries[n]

    def delete(self, n: int) -> None:
        self.entry(n)
        self._deleted.add(n)
        self._ahead.forget(n)

    def undelete_all(self) -> None:
        self._deleted.clear()

    def read(self, n: int) -> defer.Deferred:
        """Deferred[bytes]: message `n` in CRLF form, not byte-stuffed."""
        return self.read_wire(n).addCallback(lambda wire: wire.raw)

    def read_wire(self, n: int) -> defer.Deferred:
        """Deferred[Wire]: message `n` in CRLF form, and byte-stuffed.

        Served from the read-ahead when a pool trip already fetched it; otherwise one trip reads
        it together with the next few messages (see ReadAhead).
        """
        try:
            self.entry(n)
        except NoSuchMessage:
            return defer.fail()
        return self._ahead.get(n)

    def ready(self, n: int) -> Wire | None:
        """Message `n` when the read-ahead already holds it (taken out of it), else None.

        Lets RETR answer within the reactor turn that read the command, without a Deferred: the
        usual case once the read-ahead runs ahead of the client. None means "ask read()", which
        also reports a message that is gone or a failed read.
        """
        if not 0 <= n < len(self._entries) or n in self._deleted:
            return None
        return self._ahead.take(n)

    def _read_batch(self, batch: list[tuple[int, Entry]]) -> list[tuple[int, Wire | Exception]]:
        """Blocking: read a batch in one go; one that is gone fails alone (MessageGone). Should the
        batch read itself fail, each message is read alone, so the error goes to the one it concerns."""
        try:
            found = self._source.read_many(self._path, [entry for _, entry in batch])
        except Exception:
            found = []
        out: list[tuple[int, Wire | Exception]] = []
        for (n, entry), data in zip(batch, found):
            out.append((n, MessageGone(entry.uid) if data is None else Wire.of(data)))
        for n, entry in batch[len(out):]:
            try:
                out.append((n, self._read_one(entry)))
            except Exception as exc:       # handed back to that message's reader, never raised here
                out.append((n, exc))
        return out

    def _read_one(self, entry: Entry) -> Wire:
        """Blocking: one message, ready to send."""
        return Wire.of(self._source.read(self._path, entry))

    def commit(self) -> defer.Deferred:
        """Deferred[None]: remove the messages marked deleted (the UPDATE state of RFC 1939)."""
        doomed = [self._entries[n] for n in sorted(self._deleted)]
        if not doomed:
            return defer.succeed(None)
        return threads.deferToThreadPool(self._reactor, self._pool, self._source.expunge, self._path, doomed)


class ReadAhead:
    """Messages read before the client asks for them: one pool hand-off per batch, not per RETR.

    A client fetching a whole maildrop sends RETR 1, RETR 2, ... one after the other; handing
    each read to the pool and back costs about as much as the read itself. So the trip that
    reads message n also reads the next ones (up to AHEAD_MESSAGES and AHEAD_BYTES, by the sizes
    the listing already knows), and as soon as less than a whole batch is left ahead of the
    client the next batch is read while it is still busy with the rest. (Starting it only
    once half a batch was used let about one RETR in 140 wait for its batch in
    bench/pop3_retr, a whole pool trip each time.) Memory per session stays under about
    2 x AHEAD_BYTES (plus one message bigger than that, read alone): a trip starts only
    while less than AHEAD_BYTES is held, and reads at most that much. A message read ahead and
    removed by another session before its RETR is sent as it was when read: the same answer
    it would have got a moment earlier.
    """

    def __init__(self, drop: Maildrop) -> None:
        self._drop = drop
        self._ready: dict[int, Wire | Exception] = {}
        self._waiting: dict[int, defer.Deferred] = {}      # n -> the batch trip that reads it
        self._ready_bytes = 0
        self._next = 0                                      # the first number no batch has covered

    def get(self, n: int) -> defer.Deferred:
        """Deferred[bytes] of message `n` (which exists and is not marked deleted)."""
        for old in [k for k in self._ready if k < n]:     # the client skipped them: let them go
            self.forget(old)
        if n in self._ready:
            d = self._hand_out(n)
        else:
            d = defer.Deferred()
            trip = self._waiting.get(n)
            if trip is None:
                self._next = n
                trip = self._start()
            trip.addBoth(self._pass_on, n, d)
        self._maybe_prefetch(n)
        return d

    def take(self, n: int) -> Wire | None:
        """Message `n` if it is here (handed out, so forgotten), else None."""
        data = self._ready.get(n)
        if not isinstance(data, Wire):
            return None
        for old in [k for k in self._ready if k < n]:     # the client skipped them: let them go
            self.forget(old)
        self.forget(n)
        self._maybe_prefetch(n)
        return data

    def _pass_on(self, result: object, n: int, d: defer.Deferred) -> object:
        """Once the trip that read `n` is back: hand its outcome to the reader waiting for it."""
        self._hand_out(n).chainDeferred(d)
        return result

    def forget(self, n: int) -> None:
        data = self._ready.pop(n, None)
        if isinstance(data, Wire):
            self._ready_bytes -= data.octets

    def _hand_out(self, n: int) -> defer.Deferred:
        data = self._ready.get(n)
        self.forget(n)
        if isinstance(data, Wire):
            return defer.succeed(data)
        if data is None:                     # forgotten meanwhile (DELE): read it alone
            return self._single(n)
        return defer.fail(data)

    def _single(self, n: int) -> defer.Deferred:
        entry = self._drop.entry(n)
        return threads.deferToThreadPool(self._drop._reactor, self._drop._pool, self._drop._read_one, entry)

    def _maybe_prefetch(self, n: int) -> None:
        """Start the next batch once less than a batch is read ahead of `n` and no trip is out."""
        if self._waiting or self._next >= len(self._drop._entries):
            return
        ahead = len(self._ready)           # the caller let go of every number up to n
        if ahead < AHEAD_MESSAGES and self._ready_bytes < AHEAD_BYTES:
            self._next = max(self._next, n + 1)
            self._start()

    def _start(self) -> defer.Deferred:
        """One pool trip for the messages from self._next on: at least one, then as many as fit."""
        drop, batch, size = self._drop, [], 0
        n = self._next
        while n < len(drop._entries) and len(batch) < AHEAD_MESSAGES:
            if n not in drop._deleted and n not in self._ready:
                entry = drop._entries[n]
                if batch and size + entry.size > AHEAD_BYTES:
                    break
                batch.append((n, entry))
                size += entry.size
            n += 1
        self._next = n
        d = threads.deferToThreadPool(drop._reactor, drop._pool, drop._read_batch, batch)
        for number, _ in batch:
            self._waiting[number] = d
        d.addCallback(self._arrived)
        d.addErrback(self._trip_failed, batch)
        return d

    def _arrived(self, results: list[tuple[int, Wire | Exception]]) -> None:
        for n, data in results:
            self._waiting.pop(n, None)
            self._ready[n] = data
            if isinstance(data, Wire):
                self._ready_bytes += data.octets

    def _trip_failed(self, failure: Failure, batch: list[tuple[int, Entry]]) -> None:
        """The pool itself failed (not one message): each waiting reader gets the error."""
        for n, _ in batch:
            self._waiting.pop(n, None)
            self._ready[n] = failure.value if isinstance(failure.value, Exception) else RuntimeError("read failed")


def _scan_inbox(account: "Account") -> tuple[FolderSource, list[Entry]]:
    source = FolderSource(account.folder("INBOX"))
    return source, source.scan()


def open_maildrop(account: "Account", reactor: Any, pool: Any) -> defer.Deferred:
    """Deferred[Maildrop]: the snapshot of the account's INBOX, scanned in the pool."""
    d = threads.deferToThreadPool(reactor, pool, _scan_inbox, account)
    return d.addCallback(lambda found: Maildrop(found[0], account.root, found[1], reactor, pool))
