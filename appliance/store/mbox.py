"""Everything mbox: the one splitter and quoting rule, locking, append, folders, flags side files, POP3 UIDLs.

Written as mboxrd: a From_ line, the message with every `>*From ` line quoted once more, and a
blank line. Read the same way everywhere (POP3 and IMAP, mboxrd, mboxo and mboxcl2 alike): a
From_ line starts a message only at the start of the file or after a blank line, so an unquoted
`From ` line written by another program inside a paragraph stays in its message; one `>` is
stripped from `>*From ` lines. The file is read and rewritten only under the delivery locks
(thread lock, dot-lock, fcntl), so no reader ever sees a half-appended message.

A message's IMAP key is sha1(stored body)[:20] plus its occurrence number among identical
bodies, so UIDs survive other programs rewriting the file around it; its POP3 UIDL is the MD5
of the whole entry (From_ line through the blank line) with `-2`, `-3` for exact duplicates.
INBOX's side folder `<mbox>.imap/` holds the UID list, the index and `flags` (JSON: key ->
Maildir letters, keywords as the letters a..z, the keywords' names in letter order under
"keywords", and the keys claimed as \\Recent); other folders are mbox files in `<mbox>.folders/`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator

from appliance import mime
from appliance.durable import replace_file
from appliance.errors import MailboxUnavailable
from appliance.lineends import to_lf
from appliance.store.base import FileStore, make_dirs, unavailable
from appliance.store.account import Account
from appliance.store.folder import Folder, racy, shared
from appliance.store.index import thread_lock, write_atomic
from appliance.store.keywords import KeywordMap, split as split_flags
from appliance.store.maildir import FLAGS as LETTER_FLAGS, LETTERS

LOCK_TIMEOUT = 10.0    # seconds a delivery waits for a busy mailbox before it is retried later
LOCK_POLL = 0.1        # seconds between two attempts at a busy lock
STALE_LOCK_AGE = 300.0  # a dot-lock older than this was left by a crashed writer: steal it
EMPTY_LOCK_AGE = 10.0   # a lock without a readable pid this old is stale too
MAX_LOCK_SIZE = 64      # a dot-lock holds a pid line or nothing; a bigger file there is data, never removed

# The names kept beside an mbox file `P`: the dot-lock `P.lock`, the file `P.lock.<pid>.<thread>`
# linked to it (_try_dot_lock), the side folder `P.imap/` and the folders' folder `P.folders/`.
# (The `.P.<pid>.<thread>.tmp` files of replace_file start with a dot, which no address part and
# no folder name may.) A mailbox or folder named like this would BE another one's side file, so
# store/base.py mailbox_path refuses such user names and Account refuses such folder names.
SIDE_FILE = re.compile(r"\.(lock|imap|folders)$|\.lock\.[0-9]+\.[0-9]+$", re.IGNORECASE)

# A `>*From ` line, found after its LF: a pattern that starts with a literal byte is scanned for
# at C speed, where `^...` with MULTILINE tries every position (ten times slower on a large body).
_FROM_AFTER_LF = re.compile(rb"\n(>*From )")
_FROM_FIRST = re.compile(rb">*From ")
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f]+")


def entry(message: bytes, sender: str, now: float | None = None) -> bytes:
    """One mboxrd entry: From_ line, LF body with `>*From ` lines quoted once more, a blank line after.

    mboxrd (not mboxo) quoting is reversible: readers strip exactly one `>`, so a body line that
    already read `>From ` comes back unchanged.
    """
    envelope_from = _BLANKS.sub("_", sender) or "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(time.time() if now is None else now))
    body = quote_from_lines(to_lf(message))
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return f"From {envelope_from} {stamp}\n".encode("utf-8", "replace") + body + b"\n"


def quote_from_lines(body: bytes) -> bytes:
    """mboxrd quoting: one more `>` before every line that reads `>*From ` (the first line too)."""
    body = _FROM_AFTER_LF.sub(b"\n>\\1", body)
    return b">" + body if _FROM_FIRST.match(body) else body


def _wait_for(attempt, what: str) -> None:
    """Call `attempt()` until it returns True; sleep between tries (worker thread), give up at LOCK_TIMEOUT."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while not attempt():
        if time.monotonic() >= deadline:
            raise MailboxUnavailable(f"mailbox locked ({what})")
        time.sleep(LOCK_POLL)


def _is_stale(lock: str) -> bool:
    """A dot-lock is stale when it is old, or when the process that wrote it is gone.

    The second case is the common one after a crash (kill -9, power loss): without it every
    delivery would wait STALE_LOCK_AGE after a restart. Our own threads never reach here while
    another of them holds the lock (see _local_lock), so our own pid in the file means a
    previous process with the same pid left it.
    """
    if time.time() - os.stat(lock).st_mtime > STALE_LOCK_AGE:
        return True
    try:
        with open(lock, "rb") as f:
            pid = int(f.read(32).split()[0])
    except (ValueError, IndexError, OSError):
        # No pid: another program's lock, or one killed while writing it. Give it a moment.
        return time.time() - os.stat(lock).st_mtime > EMPTY_LOCK_AGE
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _try_dot_lock(lock: str) -> bool:
    """Create `<mbox>.lock` exclusively; remove it first when a crashed writer left it stale.

    The lock is made by linking a finished file holding our pid to the lock name, so the lock
    never exists without its pid in it, even if we are killed half-way (the NFS-safe way too).
    """
    mine = f"{lock}.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    try:
        os.link(mine, lock)
        return True
    except FileExistsError:
        try:
            if os.stat(lock).st_size > MAX_LOCK_SIZE:
                # Not a lock: e.g. the mbox of a user `bob.lock` written before such names were
                # refused. Removing it as "stale" would delete mail; leave it to the operator.
                raise MailboxUnavailable("dot-lock path holds a file that is not a lock")
            if _is_stale(lock):
                os.unlink(lock)
        except FileNotFoundError:
            pass  # its owner released it meanwhile: just try again
        return False
    finally:
        os.unlink(mine)


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    """Serialise our own worker threads on one mbox without polling the dot-lock."""
    lock = thread_lock(path)
    if not lock.acquire(timeout=LOCK_TIMEOUT):
        raise MailboxUnavailable("mailbox locked (busy)")
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _dot_lock(path: str) -> Iterator[None]:
    """The lock mutt, procmail and Dovecot's default setup honour; it also serialises our own threads."""
    lock = path + ".lock"
    _wait_for(lambda: _try_dot_lock(lock), "dot-lock")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _try_fcntl_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def locked(path: str, flags: int = os.O_RDWR) -> Iterator[int]:
    """Hold our thread lock, the dot-lock and the fcntl lock on `path`; yield it open with `flags`.

    Blocking. Delivery appends under it; folders read and rewrite the file under it.
    """
    with _local_lock(path), _dot_lock(path):
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            _wait_for(lambda: _try_fcntl_lock(fd), "fcntl")
            yield fd
        finally:
            os.close(fd)  # closing releases the fcntl lock


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _append_locked(fd: int, data: bytes) -> None:
    """Append and fsync; on failure cut the file back so no reader ever sees a partial message."""
    size = os.fstat(fd).st_size
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise unavailable("mbox append failed", exc) from exc


def append(path: str, message: bytes, sender: str, now: float | None = None) -> str:
    """Append one wire-form message to the mbox at `path`; return `path`.

    Blocking. Raises MailboxUnavailable when the mailbox stays locked or cannot be written;
    the file is then exactly as it was.
    """
    data = entry(message, sender, now)
    try:
        make_dirs(os.path.dirname(path))
        with locked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as fd:
            _append_locked(fd, data)
    except OSError as exc:
        raise unavailable("mbox not usable", exc) from exc
    return path


# ---- THE reader --------------------------------------------------------------------------------------
_FROM_START = b"\n\nFrom "
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_QUOTED_COUNT = re.compile(rb"^>+From ", re.MULTILINE)


def split(data: bytes) -> list[tuple[int, int, int]]:
    """(From_ line start, message start, end) of each entry: THE mbox splitter.

    A From_ line starts an entry only at the start of the file or after a blank line. An entry
    ends where the next begins, so it keeps its trailing blank line (`body` removes it).
    bytes.find is used rather than a regular expression: far quicker on large files.
    """
    starts = [0] if data.startswith(b"From ") else []
    position = data.find(_FROM_START)
    while position >= 0:
        starts.append(position + 2)
        position = data.find(_FROM_START, position + 1)
    entries = []
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(data)
        line_end = data.find(b"\n", start, end)
        entries.append((start, end if line_end < 0 else line_end + 1, end))
    return entries


def body(stored: bytes) -> bytes:
    """The stored message without the blank line the writer puts after each entry."""
    return stored[:-1] if stored.endswith(b"\n\n") or stored == b"\n" else stored


def unquote(stored: bytes) -> bytes:
    """mboxrd: strip one `>` from each `>*From ` line (the regex is slow, so look before using it;
    and a message without any `>`, most of them, is told by memchr, ten times faster than the
    substring search, which was a third of the CPU of reading an mbox message for FETCH)."""
    return _QUOTED_FROM.sub(rb"\1", stored) if b">" in stored and b">From " in stored else stored


def message_of(stored: bytes) -> bytes:
    """What a reader gets from an entry's stored body: the separating blank line dropped, unquoted."""
    return unquote(body(stored))


def wire_size_of(stored: bytes) -> int:
    """len(crlf(message_of(stored))) without building it: unquoting drops one `>` per quoted line."""
    kept = body(stored)
    quoted = len(_QUOTED_COUNT.findall(kept)) if b">From " in kept else 0
    return mime.wire_size(kept) - quoted


REPARSE_FOR = 64          # a batch read this long parses a settled file again rather than digest each entry


def _key_digest(stored: bytes) -> str:
    return hashlib.sha1(stored).hexdigest()[:20]


def _numbered(digest: str, seen: dict[str, int]) -> int:
    seen[digest] = seen.get(digest, 0) + 1
    return seen[digest]


def _from_line_date(line: bytes) -> float:
    """The asctime date at the end of a From_ line (UTC, as delivery writes it); now when unreadable."""
    try:
        text = line.decode("ascii").split(None, 2)[2].strip()
        return float(time.mktime(time.strptime(text[-24:], "%a %b %d %H:%M:%S %Y")) - time.timezone)
    except (UnicodeDecodeError, IndexError, ValueError, OverflowError):
        return time.time()


def read_locked(path: str) -> bytes:
    """The whole mbox, read under the writer's locks (b"" when there is none): never half an append."""
    if not os.path.exists(path):
        return b""
    try:
        with locked(path) as fd:
            return _read_fd(fd)
    except FileNotFoundError:
        return b""


def _read_fd(fd: int) -> bytes:
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# ---- the folder ------------------------------------------------------------------------------------
FLAGS_FILE = "flags"
Located = tuple[bytes, int, int]      # (From_ line, body start, end); the date is parsed only when asked


def open_folder(path: str, meta_dir: str) -> "MboxFolder":
    """The process-wide MboxFolder of the mbox file at `path`."""
    return shared(os.path.realpath(path), lambda: MboxFolder(path, meta_dir))  # type: ignore[return-value]


class MboxFolder(Folder):
    """One mbox file; flags and \\Recent claims in the side folder's `flags` JSON."""

    def __init__(self, path: str, meta_dir: str):
        make_dirs(meta_dir)
        super().__init__(path, meta_dir)
        self._flags_path = os.path.join(meta_dir, FLAGS_FILE)
        self._entries: dict[str, Located] = {}
        # The entries and the _trusted_stamp of one parse, set together: a reader in another thread
        # never pairs one parse's offsets with another's stamp.
        self._parsed: tuple[dict[str, Located], tuple[int, int, int] | None] = ({}, None)
        self._order_of: dict[str, int] = {}
        self._pop3: dict[str, tuple[str, int]] | None = None    # key -> (UIDL, size), kept once POP3 asked
        self._stamp: tuple[int, int] | None = None
        self._seen_stamp: tuple[int, int] | None = None
        self._seen_flags: tuple[int, int] | None = None
        self._racy = True                # the last scan may have missed a change in its own clock tick
        self._sidecar: dict = {}
        self._sidecar_raw: bytes | None = None            # the side file's octets `_sidecar` was read from
        self._last_scan: tuple[dict, dict] | None = None    # (entries, found) of the last full scan

    def _file_stamp(self) -> tuple[int, int]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        return info.st_mtime_ns, info.st_size

    def _flags_stamp(self) -> tuple[int, int]:
        try:
            info = os.stat(self._flags_path)
        except FileNotFoundError:
            return (0, 0)
        return info.st_mtime_ns, info.st_ino

    def changed(self) -> bool:
        return self._racy or self._file_stamp() != self._seen_stamp or self._flags_stamp() != self._seen_flags

    def _load_sidecar(self) -> dict:
        try:
            with open(self._flags_path, "rb") as handle:
                raw = handle.read()
            data = json.loads(raw)
            if isinstance(data, dict):
                self._sidecar_raw = raw
                return data
        except (OSError, ValueError):
            pass
        self._sidecar_raw = None
        return {"flags": {}, "claimed": []}

    def _sidecar_unchanged(self) -> bool:
        """Whether the side file still holds the octets our last scan read (a young stamp proves nothing)."""
        if self._sidecar_raw is None:
            return False
        try:
            with open(self._flags_path, "rb") as handle:
                return handle.read(len(self._sidecar_raw) + 1) == self._sidecar_raw
        except OSError:
            return False

    def _save_sidecar(self) -> None:
        self._sidecar_raw = self._last_scan = None       # memory runs ahead of the file until it is read back
        write_atomic(self._flags_path, json.dumps(self._sidecar).encode("utf-8"))

    def _scan(self) -> dict[str, tuple[frozenset[str], bool]]:
        scanned = time.time_ns()
        self._seen_stamp = self._file_stamp()
        self._seen_flags = self._flags_stamp()
        self._racy = racy(max(self._seen_stamp[0], self._seen_flags[0]), scanned)
        if self._seen_stamp != self._stamp:
            self._parse()
        elif self._last_scan is not None and self._last_scan[0] is self._entries and self._sidecar_unchanged():
            return self._last_scan[1]          # the rescan a young stamp forces, after a change of ours: as found
        self._load_keywords()
        letters, claimed = self._sidecar.get("flags", {}), set(self._sidecar.get("claimed", []))
        sets: dict[str, frozenset[str]] = {}        # letters -> flags: 10,000 messages share a handful
        found = {}
        for key in self._entries:
            given = letters.get(key, "")
            given = given if isinstance(given, str) else ""      # a damaged side file: no flags, no crash
            flags = sets.get(given)
            if flags is None:
                flags = sets[given] = self._flags_of(given)
            found[key] = (flags, key not in claimed)
        self._last_scan = (self._entries, found)
        return found

    def _flags_of(self, letters: str) -> frozenset[str]:
        return frozenset(LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS) | self._keywords.names_of(letters)

    def _load_keywords(self) -> None:
        """The side file holds the keyword list too: re-reading it is re-reading the list."""
        self._sidecar = self._load_sidecar()
        names = self._sidecar.get("keywords", [])
        self._keywords = KeywordMap(name for name in names if isinstance(name, str)) if isinstance(names, list) \
            else KeywordMap()

    def _save_keywords(self) -> None:
        self._sidecar["keywords"] = list(self._keywords.names)
        self._save_sidecar()

    def _parse(self) -> None:
        """Split the file (under the locks) and key its entries; POP3's UIDLs too once a POP3 login asked."""
        stamp = self._file_stamp()          # before reading: a change meanwhile makes the next scan parse again
        trusted = self._trusted_stamp()
        data = read_locked(self.path)
        entries: dict[str, Located] = {}
        order: dict[str, int] = {}
        keys_seen: dict[str, int] = {}
        pop3: dict[str, tuple[str, int]] | None = {} if self._pop3 is not None else None
        uidls_seen: dict[str, int] = {}
        for index, (start, body_start, end) in enumerate(split(data)):
            stored = data[body_start:end]
            digest = _key_digest(stored)
            key = f"{digest}-{_numbered(digest, keys_seen)}"
            entries[key] = (data[start:body_start], body_start, end)
            order[key] = index
            if pop3 is not None:
                raw = hashlib.md5(data[start:end]).hexdigest()
                number = _numbered(raw, uidls_seen)
                pop3[key] = (raw if number == 1 else f"{raw}-{number}", wire_size_of(stored))
        self._entries, self._order_of, self._pop3, self._stamp = entries, order, pop3, stamp
        self._parsed = (entries, trusted)

    def _trusted_stamp(self) -> tuple[int, int, int] | None:
        """(inode, mtime, size) of the file before a parse reads it, when that mtime is old enough
        (not racy) that any later write must change it; None otherwise. While the file still shows
        this stamp, the parsed offsets hold and a read needs no digest check."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        if racy(info.st_mtime_ns, time.time_ns()):
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _order(self, key: str) -> object:
        return self._order_of.get(key, 1 << 62)

    def _read(self, key: str) -> bytes:
        """The message of `key`, checked against its digest: a file rewritten by another program is re-read."""
        for attempt in range(2):
            if key in self._entries:
                _, start, end = self._entries[key]
                with open(self.path, "rb") as handle:
                    handle.seek(start)
                    stored = handle.read(end - start)
                if _key_digest(stored) == key.rpartition("-")[0]:
                    return message_of(stored)
            if attempt == 0:
                self._parse()
        raise FileNotFoundError(key)

    def _read_many(self, keys: list[str | None], budget: int) -> list[bytes | None]:
        """The messages of `keys` through one descriptor, a pread() each (FETCH reads thousands).

        One fstat() of that descriptor after the batch shows whether the file is still the one
        parsed (`_trusted_stamp`; any write since, even one that ended before the fstat, moved
        its mtime): then every octet read is the entry's, and the SHA-1 check `_read` does (a
        fifth of the CPU of reading a message) is skipped; otherwise each entry is checked, and
        a mismatch goes the way of `_read` (parse again, read again)."""
        if self._parsed[1] is None and len(keys) >= REPARSE_FOR and self._trusted_stamp() is not None:
            # Parsed while the file was young (a delivery just before): once it has settled, one
            # parse (a read and a digest of every entry, what a few batches cost in checks)
            # makes every later read of this file state check-free.
            with contextlib.suppress(MailboxUnavailable):      # locked by a delivery: check each, as before
                self._parse()
        entries, trusted = self._parsed
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [None] * len(keys)
        read: list[tuple[str | None, bytes, bytes] | None] = []      # (key, all but the last octet, the last)
        total = 0
        try:
            for key in keys:
                located = entries.get(key) if key is not None else None
                if located is None:
                    read.append(None)
                    continue
                _, start, end = located
                if end - start < 2:
                    head, last = b"", os.pread(fd, end - start, start)
                else:      # the last octet apart: the writer's blank line is dropped without a copy
                    head, last = os.pread(fd, end - start - 1, start), os.pread(fd, 1, end - 1)
                read.append((key, head, last))
                total += end - start
                if total >= budget:
                    break
            info = os.fstat(fd)
        finally:
            os.close(fd)
        unchanged = (info.st_ino, info.st_mtime_ns, info.st_size) == trusted
        out: list[bytes | None] = []
        for n, item in enumerate(read):
            read[n] = None                     # each entry's octets dropped as its message is made
            if item is None:
                out.append(self._read_again(keys[n]))
                continue
            key, head, last = item
            if unchanged:
                out.append(unquote(head) if last == b"\n" and head.endswith(b"\n") else message_of(head + last))
            elif key is not None and _key_digest(head + last) == key.rpartition("-")[0]:
                out.append(message_of(head + last))
            else:
                out.append(self._read_again(key))
        return out

    def _read_again(self, key: str | None) -> bytes | None:
        """`_read` (which parses the file again when the entry moved), or None when the message is gone."""
        try:
            return None if key is None else self._read(key)
        except FileNotFoundError:
            return None

    def _mtime(self, key: str) -> float:
        return _from_line_date(self._entries[key][0])

    def _set_flags(self, changes: dict[str, frozenset[str]]) -> None:
        letters = self._sidecar.setdefault("flags", {})
        for key, flags in changes.items():
            system, keywords = split_flags(flags)
            letters[key] = "".join(sorted(LETTERS[f] for f in system if f in LETTERS)) + self._keywords.letters_of(keywords)
        self._save_sidecar()

    def _claim(self, keys: list[str]) -> list[str]:
        claimed = set(self._sidecar.get("claimed", []))
        new = [key for key in keys if key not in claimed]
        self._sidecar["claimed"] = sorted((claimed | set(new)) & set(self._entries))
        self._save_sidecar()
        return new

    def _remove(self, keys: list[str]) -> None:
        """Rewrite the file without `keys`, under the delivery locks, re-reading it there: mail
        appended meanwhile is kept, and so is anything before the first entry."""
        doomed = set(keys)
        with locked(self.path) as fd:
            data = _read_fd(fd)
            entries = split(data)
            seen: dict[str, int] = {}
            kept = []
            for _, body_start, end in entries:
                digest = _key_digest(data[body_start:end])
                kept.append(f"{digest}-{_numbered(digest, seen)}" not in doomed)
            if not all(kept):
                head = data[:entries[0][0]]
                rest = b"".join(data[start:end] for (start, _, end), keep in zip(entries, kept) if keep)
                replace_file(self.path, head + rest, os.fstat(fd).st_mode & 0o7777)
        self._stamp = None
        letters = self._sidecar.get("flags", {})
        for key in doomed:
            letters.pop(key, None)
        self._save_sidecar()

    def _add(self, message: bytes, flags: frozenset[str], date: float | None) -> str:
        append(self.path, message, "MAILER-DAEMON", now=date)
        self._scan()
        key = max(self._order_of, key=self._order_of.get)
        self._set_flags({key: flags})
        return key           # unclaimed: \\Recent for the first session to select the folder (RFC 3501 6.3.11)

    def _prepare_pop3(self) -> None:
        """From now on every parse of this folder also computes POP3 UIDLs and sizes (IMAP alone skips them)."""
        if self._pop3 is None:
            self._pop3 = {}
            self._stamp = None

    def _pop3_describe(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        pop3 = self._pop3 or {}
        return {key: pop3[key] for key in keys if key in pop3}


# ---- the account -----------------------------------------------------------------------------------
class MboxAccount(Account):
    """INBOX is the mbox file at `root`; folder `X` is the mbox file `<root>.folders/X`."""

    side_files = SIDE_FILE

    def _folders(self) -> str:
        return self.root + ".folders"

    def _disk_names(self) -> list[str]:
        try:
            entries = os.listdir(self._folders())
        except FileNotFoundError:
            return []
        # A delivery's dot-lock (`Junk.lock`, `Junk.lock.<pid>.<thread>`) is a file there for a
        # moment: a side file, never a folder.
        return [e for e in entries if not e.startswith(".") and not SIDE_FILE.search(e)
                and os.path.isfile(os.path.join(self._folders(), e))]

    def _path(self, disk: str) -> str:
        return os.path.join(self._folders(), disk)

    def _make(self, disk: str) -> None:
        make_dirs(self._folders())
        open(self._path(disk), "ab").close()

    def _remove(self, disk: str) -> None:
        os.unlink(self._path(disk))
        shutil.rmtree(self._path(disk) + ".imap", ignore_errors=True)

    def _move(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))
        if os.path.isdir(self._path(old) + ".imap"):
            os.rename(self._path(old) + ".imap", self._path(new) + ".imap")

    def _open(self, disk: str | None) -> Folder:
        if disk is None:
            make_dirs(os.path.dirname(self.root))
            return open_folder(self.root, self.root + ".imap")
        return open_folder(self._path(disk), self._path(disk) + ".imap")

    def _meta_dir(self) -> str:
        return self.root + ".imap"


class MboxStore(FileStore):
    """IMailStore over one mbox file per user."""

    account_class = MboxAccount
    side_files = SIDE_FILE

    def write(self, path: str, message: bytes, sender: str) -> str:
        return append(path, message, sender)
