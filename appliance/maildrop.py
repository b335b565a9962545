"""The POP3 read side of both storage formats: a snapshot of a maildrop, its messages in wire form, deletions.

A POP3 session sees its maildrop as it was at login (RFC 1939 numbers messages for the whole
session), so mail delivered meanwhile waits for the next session and never shifts the numbers.
The blocking parts (scanning, reading, deleting) are plain functions of the `MaildirFormat` and
`MboxFormat` classes and run in a worker thread; `Maildrop` is the reactor-side session object.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, threads
from zope.interface import Interface, implementer

from appliance.store import maildir as maildir_store, mbox as mbox_store
from appliance.durable import replace_file

# RFC 1939 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
_UID_OK = re.compile(r"[\x21-\x7e]{1,70}")
_QUOTED_FROM = re.compile(rb"^>+From ", re.MULTILINE)
_UNQUOTE_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_MAILDIR_ORDER = re.compile(r"^(\d+)(?:\.M(\d+))?")
SIZE_CACHE = "appliance-pop3.sizes"     # beside cur/ new/ tmp/: "<uid> <wire size>" per line


class MessageGone(Exception):
    """The message of the snapshot is no longer there (another program removed or rewrote it)."""


class NoSuchMessage(Exception):
    """A message number outside the snapshot, or one marked deleted (RFC 1939: -ERR no such message)."""


@dataclass(frozen=True)
class Entry:
    """One message of a snapshot. `where` is the format's own locator (a file name, a byte range)."""

    uid: str         # the UIDL: stable across sessions and restarts
    size: int        # octets of the CRLF form, the exact size RFC 1939 LIST and STAT report
    where: Any


def wire_size(data: bytes) -> int:
    """len(to_wire(data)) without building it: every bare LF becomes CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_wire(data: bytes) -> bytes:
    """CRLF line ends whatever the file holds (our stores write LF, other programs may write CRLF)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _uid(name: str) -> str:
    """A name used as is when RFC 1939 allows it, else its digest (still stable: the name is)."""
    if _UID_OK.fullmatch(name):
        return name
    return hashlib.md5(name.encode("utf-8", "surrogateescape")).hexdigest()


class Format(Protocol):
    """Blocking operations of one storage format; all run in a worker thread."""

    def scan(self, path: str) -> list[Entry]: ...

    def read(self, path: str, entry: Entry) -> bytes: ...

    def expunge(self, path: str, entries: list[Entry]) -> None: ...


class MaildirFormat:
    """Maildir: one file per message in new/ or cur/; deletion is unlink.

    The UIDL is the file's unique name up to the first `,` or `:` -- what stays the same when a
    reader moves the file from new/ to cur/ or another program adds flags (`:2,S`) or size hints
    (`,S=`, `,W=`). The CRLF sizes are cached in SIZE_CACHE, since computing one reads the file.
    """

    SUBDIRS = ("new", "cur")

    def scan(self, path: str) -> list[Entry]:
        files = self._files(path)
        cache = _read_size_cache(os.path.join(path, SIZE_CACHE))
        entries = []
        for name, sub in sorted(files.items(), key=_maildir_order):
            uid = self.uid_of(name)
            size = cache.get(uid)
            if size is None:
                try:
                    size = wire_size(_read_file(os.path.join(path, sub, name)))
                except FileNotFoundError:
                    continue      # deleted by another reader while we looked
            entries.append(Entry(uid, size, (sub, name)))
        sizes = {entry.uid: entry.size for entry in entries}
        if sizes != cache:
            _write_size_cache(os.path.join(path, SIZE_CACHE), sizes)
        return entries

    @staticmethod
    def uid_of(name: str) -> str:
        return _uid(re.split(r"[,:]", name, maxsplit=1)[0])

    def read(self, path: str, entry: Entry) -> bytes:
        sub, name = entry.where
        try:
            return to_wire(_read_file(os.path.join(path, sub, name)))
        except FileNotFoundError:
            moved = self._find(path, entry.uid)
            if moved is None:
                raise MessageGone(entry.uid) from None
            return to_wire(_read_file(moved))

    def expunge(self, path: str, entries: list[Entry]) -> None:
        for entry in entries:
            sub, name = entry.where
            try:
                os.unlink(os.path.join(path, sub, name))
            except FileNotFoundError:
                moved = self._find(path, entry.uid)
                if moved is not None:
                    _unlink_quietly(moved)

    def _files(self, path: str) -> dict[str, str]:
        """File name -> sub-folder, for every message file in new/ and cur/ (dot files are not mail)."""
        files: dict[str, str] = {}
        for sub in self.SUBDIRS:
            try:
                with os.scandir(os.path.join(path, sub)) as found:
                    for item in found:
                        if not item.name.startswith(".") and item.is_file(follow_symlinks=False):
                            files[item.name] = sub
            except FileNotFoundError:
                continue
        return files

    def _find(self, path: str, uid: str) -> str | None:
        """Where a message renamed since the snapshot lives now (a flag change by another reader)."""
        for name, sub in self._files(path).items():
            if self.uid_of(name) == uid:
                return os.path.join(path, sub, name)
        return None


def _maildir_order(item: tuple[str, str]) -> tuple[int, int, str]:
    """Delivery order: Maildir names start with the delivery time (`<secs>.M<usecs>`)."""
    match = _MAILDIR_ORDER.match(item[0])
    if match is None:
        return (1 << 62, 0, item[0])
    return (int(match.group(1)), int(match.group(2) or 0), item[0])


def _read_size_cache(cache: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    try:
        with open(cache, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                uid, _, size = line.rstrip("\n").rpartition(" ")
                if uid and size.isdigit():
                    sizes[uid] = int(size)
    except OSError:
        pass      # no cache yet, or unreadable: sizes are computed again
    return sizes


def _write_size_cache(cache: str, sizes: dict[str, int]) -> None:
    """Replace the cache whole (tmp + rename); failing to write it only costs time at the next login."""
    temporary = cache + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8", opener=lambda p, f: os.open(p, f | os.O_CLOEXEC, 0o600)) as out:
            out.writelines(f"{uid} {size}\n" for uid, size in sizes.items())
        os.replace(temporary, cache)
    except OSError:
        _unlink_quietly(temporary)


class MboxFormat:
    """mboxrd, as appliance.store.mbox writes it: From_ line, body with `>From ` quoting, blank line.

    The UIDL is the MD5 of the From_ line and the stored message (the From_ line carries the
    delivery time), with `-2`, `-3` ... for exact duplicates in file order. Deletion rewrites the
    file under the writer's own dot-lock and fcntl lock, re-reading it there so that mail appended
    during the session is kept.
    """

    def scan(self, path: str) -> list[Entry]:
        """Read under the writer's locks: a half-appended message must not enter the snapshot."""
        if not os.path.exists(path):
            return []
        with mbox_store.locked(path) as fd:
            return parse_mbox(_read_fd(fd))

    def read(self, path: str, entry: Entry) -> bytes:
        start, body_start, end, digest = entry.where
        with open(path, "rb") as handle:
            handle.seek(start)
            raw = handle.read(end - start)
        if hashlib.md5(raw).hexdigest() != digest:
            raise MessageGone(entry.uid)   # the file was rewritten by another program since login
        return to_wire(_unquote(_body(raw[body_start - start:])))

    def expunge(self, path: str, entries: list[Entry]) -> None:
        doomed = {entry.uid for entry in entries}
        with mbox_store.locked(path) as fd:
            data = _read_fd(fd)
            current = parse_mbox(data)
            kept = [entry for entry in current if entry.uid not in doomed]
            if len(kept) < len(current):
                before_first = data[:current[0].where[0]]      # anything not an entry is kept as is
                kept_bytes = b"".join(data[entry.where[0]:entry.where[2]] for entry in kept)
                replace_file(path, before_first + kept_bytes, os.fstat(fd).st_mode & 0o7777)


def parse_mbox(data: bytes) -> list[Entry]:
    """The messages of an mboxrd file; `where` = (entry start, body start, body end, digest)."""
    starts = _from_lines(data)
    entries = []
    seen: Counter[str] = Counter()
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(data)
        line_end = data.find(b"\n", start, end)
        body_start = end if line_end < 0 else line_end + 1
        raw = data[start:end]
        digest = hashlib.md5(raw).hexdigest()
        seen[digest] += 1
        uid = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
        body = _body(data[body_start:end])
        quoted = len(_QUOTED_FROM.findall(body)) if b">From " in body else 0
        size = wire_size(body) - quoted          # unquoting drops one `>` per quoted line
        entries.append(Entry(uid, size, (start, body_start, end, digest)))
    return entries


def _from_lines(data: bytes) -> list[int]:
    """Offsets of the lines starting with `From ` (bytes.find: far quicker than a MULTILINE regex)."""
    starts = [0] if data.startswith(b"From ") else []
    position = data.find(b"\nFrom ")
    while position >= 0:
        starts.append(position + 1)
        position = data.find(b"\nFrom ", position + 1)
    return starts


def _unquote(body: bytes) -> bytes:
    """mboxrd: strip one `>` from each `>*From ` line (the regex is slow, so look before using it)."""
    return _UNQUOTE_FROM.sub(rb"\1", body) if b">From " in body else body


def _body(stored: bytes) -> bytes:
    """The message without the blank line the writer puts after each entry."""
    return stored[:-1] if stored.endswith(b"\n\n") or stored == b"\n" else stored




def _read_fd(fd: int) -> bytes:
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class IMaildrop(Interface):
    """The avatar interface a POP3 login asks the portal for: a session's view of one maildrop."""


@implementer(IMaildrop)
class Maildrop:
    """One POP3 session's view of a maildrop: the snapshot taken at login and the deletion marks.

    Message numbers are 0-based here; the protocol adds one. Only `read` and `commit` touch the
    disk, in the pool; everything else answers from the snapshot.
    """

    def __init__(self, fmt: Format, path: str, entries: list[Entry], reactor: Any, pool: Any) -> None:
        self._format = fmt
        self._path = path
        self._entries = entries
        self._deleted: set[int] = set()
        self._reactor = reactor
        self._pool = pool

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

    def undelete_all(self) -> None:
        self._deleted.clear()

    def read(self, n: int) -> defer.Deferred:
        """Deferred[bytes]: message `n` in CRLF form, not yet byte-stuffed."""
        try:
            entry = self.entry(n)
        except NoSuchMessage:
            return defer.fail()
        return threads.deferToThreadPool(self._reactor, self._pool, self._format.read, self._path, entry)

    def commit(self) -> defer.Deferred:
        """Deferred[None]: remove the messages marked deleted (the UPDATE state of RFC 1939)."""
        doomed = [self._entries[n] for n in sorted(self._deleted)]
        if not doomed:
            return defer.succeed(None)
        return threads.deferToThreadPool(self._reactor, self._pool, self._format.expunge, self._path, doomed)


def open_maildrop(fmt: Format, path: str, reactor: Any, pool: Any) -> defer.Deferred:
    """Deferred[Maildrop]: scan the maildrop at `path` in the pool."""
    d = threads.deferToThreadPool(reactor, pool, fmt.scan, path)
    return d.addCallback(lambda entries: Maildrop(fmt, path, entries, reactor, pool))


def format_for(store: Any) -> Format:
    """The read side matching a write-side store (appliance.store.make_store)."""
    if isinstance(store, maildir_store.MaildirStore):
        return MaildirFormat()
    if isinstance(store, mbox_store.MboxStore):
        return MboxFormat()
    raise ValueError(f"no POP3 reader for {type(store).__name__}")


class MaildropLocks:
    """The in-process table of maildrops held by a POP3 session (RFC 1939 exclusive-access lock).

    One process serves every session, on both POP3 ports, so a set is the whole lock.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, path: str) -> bool:
        if path in self._held:
            return False
        self._held.add(path)
        return True

    def release(self, path: str) -> None:
        self._held.discard(path)
