"""Everything Maildir: names, the arrival order, delivery (tmp/ -> new/), flag letters, folders, POP3 UIDLs.

Delivery writes in tmp/ (O_DSYNC: on disk when written) and renames into new/, so readers never see half a message.
A message's IMAP key is its file name up to `:` (what stays when flags change); its POP3 UIDL
is the name up to the first `,` or `:` (RFC 1939-valid, or its MD5). Folders are Maildir++
(`.Lists.Twisted/`); flags live in the `:2,` info of the names, \\Recent is "still in new/".
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import shutil
import socket
import time

from appliance import mime
from appliance.durable import fsync_dir
from appliance.errors import MailboxUnavailable
from appliance.lineends import to_lf
from appliance.store.base import FileStore, make_dirs, unavailable
from appliance.store.account import Account
from appliance.store.folder import Folder, racy, shared
from appliance.store.index import write_atomic
from appliance.store.keywords import FILE as KEYWORDS_FILE, KeywordMap, format_file, parse_file, split as split_flags

SUBDIRS = ("cur", "new", "tmp")

# next() on itertools.count is atomic under the GIL, so worker threads never share a number.
_counter = itertools.count()


def _hostname() -> str:
    """The host part of a Maildir name; `/` and `:` would break the name, so they are octal-escaped."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


_HOST = _hostname()
_PID = os.getpid()     # twistd forks before the reactor runs; os.register_at_fork keeps it right after


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)


def unique_name(size: int) -> str:
    """`<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>`: unique per process and readable by Dovecot's S=."""
    secs, usecs = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{secs}.M{usecs}P{_PID}Q{next(_counter)}.{_HOST},S={size}"


# O_DSYNC: each write returns once its data, and the size and blocks needed to read it back,
# are on disk (what fdatasync after the write gives; the name is made durable by the folder's
# fsync after the rename). One system call fewer per message than write + fsync, and each one a
# writer thread makes must take the GIL back from the reactor (issue 14: ingest at C=10 +7%).
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DSYNC


def _write_file(path: str, data: bytes) -> None:
    """Create `path` (never an existing file) and write `data` synchronously (O_DSYNC). Raw
    descriptors, not open(): a buffered file object costs an ioctl, an lseek and a fstat per
    message besides its objects."""
    fd = os.open(path, _CREATE, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _create(path: str) -> None:
    try:
        for sub in SUBDIRS:
            make_dirs(os.path.join(path, sub))
    except OSError as exc:
        raise unavailable("maildir not usable", exc) from exc


def write(path: str, message: bytes) -> str:
    """Store one wire-form message in the Maildir at `path`; return the file's final path.

    Blocking. Raises MailboxUnavailable (and leaves nothing behind) when any step fails.
    """
    final = _place(path, message)
    try:
        fsync_dir(os.path.join(path, "new"))
    except OSError as exc:
        _remove(final)
        raise unavailable("maildir write failed", exc) from exc
    return final


def write_many(items: list[tuple[str, bytes]]) -> list[object]:
    """Store several messages; each new/ folder is fsynced once for all its messages.

    Returns the final path, or the MailboxUnavailable, for each item. A message counts as
    delivered only once its folder's fsync succeeded; otherwise it is taken back.
    """
    outcomes: list[object] = []
    folders: dict[str, list[int]] = {}
    for i, (path, message) in enumerate(items):
        try:
            outcomes.append(_place(path, message))
            folders.setdefault(os.path.join(path, "new"), []).append(i)
        except MailboxUnavailable as exc:
            outcomes.append(exc)
    for folder, indexes in folders.items():
        try:
            fsync_dir(folder)
        except OSError as exc:
            for i in indexes:
                _remove(outcomes[i])
                outcomes[i] = unavailable("maildir write failed", exc)
    return outcomes


def _place(path: str, message: bytes) -> str:
    """Write in tmp/ (on disk when written) and rename into new/; the caller makes the rename durable."""
    data = to_lf(message)
    name = unique_name(len(data))
    tmp, final = os.path.join(path, "tmp", name), os.path.join(path, "new", name)
    try:
        try:
            _write_file(tmp, data)
        except FileNotFoundError:
            # First delivery to this mailbox: create it. Trying first saves three stats per message.
            _create(path)
            _write_file(tmp, data)
        os.rename(tmp, final)
    except OSError as exc:
        _remove(tmp)
        raise unavailable("maildir write failed", exc) from exc
    return final


# ---- names, order, flags ---------------------------------------------------------------------------
# Maildir info letters (https://cr.yp.to/proto/maildir.html), kept in ASCII order in names.
LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
FLAGS = {letter: flag for flag, letter in LETTERS.items()}
_ARRIVAL = re.compile(r"(\d+)(?:\.M(\d+))?")
_UIDL_OK = re.compile(r"[\x21-\x7e]{1,70}")          # RFC 1939 7: 1 to 70 printable characters
SIZE_CACHE = "appliance-pop3.sizes"                    # "<uidl> <wire size>" per line, beside cur/ new/ tmp/


def arrival_order(name: str) -> tuple[int, int, str]:
    """THE delivery order of Maildir names (`<secs>.M<usecs>...`); names of another shape go last."""
    match = _ARRIVAL.match(name)
    if match is None:
        return (1 << 62, 0, name)
    return (int(match.group(1)), int(match.group(2) or 0), name)


def _info(name: str) -> str:
    """The letters after `:2,` ("" when the name has no info part)."""
    _, _, info = name.partition(":")
    return info[2:] if info.startswith("2,") else ""


@functools.lru_cache(maxsize=1024)
def _flag_set(letters: str) -> frozenset[str]:
    """The system flags of some info letters; a folder's 10,000 names use a handful of letter strings."""
    return frozenset(FLAGS[c] for c in letters if c in FLAGS)


def split_name(name: str, keywords: KeywordMap | None = None) -> tuple[str, frozenset[str]]:
    """`base:2,FSa` -> (base, {\\Flagged, \\Seen, <keyword a>}); letters we do not map (P) stay on disk only."""
    letters = _info(name)
    flags = _flag_set(letters)
    if keywords is not None:
        flags |= keywords.names_of(letters)
    return name.partition(":")[0], flags


def info_letters(flags: frozenset[str], old_name: str = "", keywords: KeywordMap | None = None) -> str:
    """The `:2,` letters for `flags`, keeping letters we do not map (P, Passed; a keyword letter
    without a name in dovecot-keywords) from the old name."""
    keywords = keywords or KeywordMap()
    kept = {c for c in _info(old_name) if c not in FLAGS and not keywords.is_mapped(c)}
    system, names = split_flags(flags)
    return "".join(sorted(kept | {LETTERS[f] for f in system if f in LETTERS} | set(keywords.letters_of(names))))


def pop3_uidl(name: str) -> str:
    """The name up to the first `,` or `:` -- unchanged by moves to cur/, flags and size hints.

    Used as is when RFC 1939 allows it, else its MD5 (still stable: the name is).
    """
    base = name.partition(":")[0].partition(",")[0]
    if _UIDL_OK.fullmatch(base):
        return base
    return hashlib.md5(base.encode("utf-8", "surrogateescape")).hexdigest()


# ---- the POP3 size cache --------------------------------------------------------------------------
def read_size_cache(cache: str) -> dict[str, int]:
    """uidl -> CRLF size; computing a size reads the whole file, so POP3 logins keep them here."""
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


def write_size_cache(cache: str, sizes: dict[str, int]) -> None:
    """Replace the cache whole (tmp + rename); failing to write it only costs time at the next login."""
    temporary = cache + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8", opener=lambda p, f: os.open(p, f | os.O_CLOEXEC, 0o600)) as out:
            out.writelines(f"{uid} {size}\n" for uid, size in sizes.items())
        os.replace(temporary, cache)
    except OSError:
        _remove(temporary)


# ---- the folder ------------------------------------------------------------------------------------
def open_folder(path: str) -> "MaildirFolder":
    """The process-wide MaildirFolder of the Maildir at `path`."""
    return shared(os.path.realpath(path), lambda: MaildirFolder(path))  # type: ignore[return-value]


class MaildirFolder(Folder):
    """One Maildir (INBOX or a Maildir++ `.Folder`); message keys are the file names up to `:`."""

    def __init__(self, path: str):
        super().__init__(path, path)
        self._names: dict[str, tuple[str, str]] = {}      # key -> (subdir, file name)
        self._parsed: dict[str, tuple[str, frozenset[str]]] = {}    # file name -> (key, flags), last scan's
        self._parsed_for: tuple[str, ...] = ()             # the keyword names those flags were read with
        self._last_scan: tuple[dict[str, list[str]], dict[str, tuple[str, str]], dict] | None = None   # (listing, names, found)
        self._seen_stamp: tuple[int, ...] | None = None
        self._racy = True                # the last scan may have missed a change in its own clock tick
        self._keywords_file = os.path.join(path, KEYWORDS_FILE)
        self._keywords_stamp: tuple[int, int] | None = None

    def _dir_stamp(self) -> tuple[int, ...]:
        stamp = []
        for sub in ("new", "cur"):
            try:
                info = os.stat(os.path.join(self.path, sub))
                stamp += [info.st_mtime_ns, info.st_ino]
            except OSError:
                stamp += [0, 0]
        return tuple(stamp)

    def changed(self) -> bool:
        return self._racy or self._dir_stamp() != self._seen_stamp

    def _load_keywords(self) -> None:
        """dovecot-keywords, re-read when its stamp changed (Dovecot or mutt may add keywords too)."""
        try:
            info = os.stat(self._keywords_file)
        except FileNotFoundError:
            self._keywords, self._keywords_stamp = KeywordMap(), None
            return
        stamp = (info.st_mtime_ns, info.st_ino)
        if stamp != self._keywords_stamp:
            with open(self._keywords_file, encoding="ascii", errors="replace") as handle:
                self._keywords = parse_file(handle.read(65536))
            self._keywords_stamp = stamp

    def _save_keywords(self) -> None:
        write_atomic(self._keywords_file, format_file(self._keywords).encode("ascii"))
        self._keywords_stamp = None        # read back at the next load: the stamp of what we wrote

    def _scan(self) -> dict[str, tuple[frozenset[str], bool]]:
        scanned = time.time_ns()
        self._seen_stamp = self._dir_stamp()       # before listing: a change during the scan is seen next time
        self._racy = racy(max(self._seen_stamp[0], self._seen_stamp[2]), scanned)
        self._load_keywords()
        keywords = self._keywords
        # A name fixes its key and flags: a rescan re-reads only the names it has not met (new mail,
        # renamed by a flag change), the others are one dict lookup -- unless the keyword list changed.
        listed = {sub: _message_files(os.path.join(self.path, sub)) for sub in ("new", "cur")}
        if self._last_scan is not None and tuple(keywords.names) == self._parsed_for \
                and self._last_scan[0] == listed:
            # The rescan a young stamp forces usually lists what the last one listed: found is as it was.
            self._names = self._last_scan[1].copy()
            return self._last_scan[2]
        known = self._parsed if tuple(keywords.names) == self._parsed_for else {}
        parsed: dict[str, tuple[str, frozenset[str]]] = {}
        names: dict[str, tuple[str, str]] = {}
        found: dict[str, tuple[frozenset[str], bool]] = {}
        for sub in ("new", "cur"):
            for name in listed[sub]:
                key, flags = parsed[name] = known.get(name) or split_name(name, keywords)
                names[key] = (sub, name)
                found[key] = (flags, sub == "new")
        self._names, self._parsed, self._parsed_for = names, parsed, tuple(keywords.names)
        self._last_scan = (listed, names.copy(), found)
        return found

    def _relist(self) -> None:
        """List the folder again to find renamed files, outside a refresh: the published Snapshot
        is older than this listing's stamp now, so the next refresh must not trust the stamp."""
        self._scan()
        self._racy = True

    def _order(self, key: str) -> object:
        return arrival_order(key)

    def _file(self, key: str) -> str:
        sub, name = self._names[key]
        return os.path.join(self.path, sub, name)

    def _read(self, key: str) -> bytes:
        try:
            path = self._file(key)
        except KeyError:
            raise FileNotFoundError(key) from None
        try:
            return _read_file(path)
        except FileNotFoundError:
            # Renamed by a flag change in another process since our scan: look once more.
            self._relist()
            try:
                return _read_file(self._file(key))
            except KeyError:
                raise FileNotFoundError(key) from None

    def _read_or_none(self, key: str | None) -> bytes | None:
        """Open, read, close: the size for the read comes from the name's `,S=` (no fstat; a short
        read of a regular file is its end, a longer file is read on), and a file renamed meanwhile
        goes the way of `_read` (list again, look once more). Written for speed (FETCH 1:* reads
        10,000 files a second): no os.path.join, one dict look-up."""
        try:
            sub, name = self._names[key]          # type: ignore[index]
        except KeyError:
            return super()._read_or_none(key)
        at = name.find(",S=")
        size = _size_in_name(name, at) if at >= 0 else None
        path = f"{self.path}/{sub}/{name}"
        try:
            return _read_file(path) if size is None else _read_sized(path, size)
        except FileNotFoundError:
            return super()._read_or_none(key)

    def _mtime(self, key: str) -> float:
        return os.stat(self._file(key)).st_mtime

    def _read_dated(self, key: str) -> tuple[bytes, float]:
        """One open for both: the date from fstat of the file just read (no second path lookup)."""
        for attempt in range(2):
            try:
                data, info = _read_stat(self._file(key))
                return data, info.st_mtime
            except KeyError:
                raise FileNotFoundError(key) from None
            except FileNotFoundError:
                if attempt:
                    raise
                self._relist()            # renamed by a flag change in another process: look once more
        raise FileNotFoundError(key)

    def _move(self, key: str, flags: frozenset[str]) -> bool:
        """Rename a message to cur/ with `flags`; False when it has vanished."""
        for attempt in range(2):
            sub, name = self._names.get(key, ("", ""))
            if not name:
                return False
            target = f"{key}:2,{info_letters(flags, name, self._keywords)}"
            try:
                os.rename(os.path.join(self.path, sub, name), os.path.join(self.path, "cur", target))
                self._names[key] = ("cur", target)
                return True
            except FileNotFoundError:
                if attempt == 0:
                    self._relist()
        return False

    def _set_flags(self, changes: dict[str, frozenset[str]]) -> None:
        for key, flags in changes.items():
            self._move(key, flags)

    def _claim(self, keys: list[str]) -> list[str]:
        claimed = []
        for key in keys:
            sub, name = self._names.get(key, ("", ""))
            if sub == "new" and self._move(key, split_name(name, self._keywords)[1]):
                claimed.append(key)
        return claimed

    def _remove(self, keys: list[str]) -> None:
        """Unlink; a file renamed since the scan (another reader set a flag) is looked up once more."""
        for attempt in range(2):
            missed = []
            for key in keys:
                try:
                    os.unlink(self._file(key))
                except KeyError:
                    pass
                except FileNotFoundError:
                    missed.append(key)
            if not missed or attempt:
                return
            self._relist()
            keys = missed

    def _add(self, message: bytes, flags: frozenset[str], date: float | None) -> str:
        """Write into new/, so the message is \\Recent for the first session to select the folder
        (RFC 3501 6.3.11); its flags, if any, are already in the name, which that session keeps
        when it moves the file to cur/."""
        target = written = write(self.path, message)
        key, _ = split_name(os.path.basename(written))
        letters = info_letters(flags, keywords=self._keywords)
        if letters:
            target = os.path.join(self.path, "new", f"{key}:2,{letters}")
            os.rename(written, target)
            fsync_dir(os.path.join(self.path, "new"))
        if date is not None:
            os.utime(target, (date, date))
        self._scan()
        return key

    def _pop3_describe(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        """UIDL from the name; the CRLF size from the size cache, reading only files it lacks."""
        cache_path = os.path.join(self.path, SIZE_CACHE)
        cache = read_size_cache(cache_path)
        described: dict[str, tuple[str, int]] = {}
        names = self._names
        for key in keys:
            uidl = pop3_uidl(names[key][1])
            size = cache.get(uidl)
            if size is None:
                try:
                    size = mime.wire_size(_read_file(self._file(key)))
                except FileNotFoundError:
                    continue      # deleted by another reader while we looked
            described[key] = (uidl, size)
        sizes = dict(described.values())
        if sizes != cache:
            write_size_cache(cache_path, sizes)
        return described


def _message_files(folder: str) -> list[str]:
    """The message files of new/ or cur/: regular files only, dot files are not mail."""
    try:
        with os.scandir(folder) as found:
            return [item.name for item in found
                    if not item.name.startswith(".") and item.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _read_file(path: str) -> bytes:
    return _read_stat(path)[0]


def _size_in_name(name: str, at: int) -> int | None:
    """The `,S=<size>` at `at` in a Maildir file name (the octets stored), None when not a number."""
    digits = name[at + 3:].partition(",")[0].partition(":")[0]
    return int(digits) if digits.isdigit() and len(digits) < 12 else None


def _read_sized(path: str, size: int) -> bytes:
    """A message file whose size is known from its name: open, one read of size+1, close. The
    extra octet tells a file that grew (it is read to the end); fewer octets is the file's end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, size + 1)
        if len(data) > size:
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def _read_stat(path: str) -> tuple[bytes, os.stat_result]:
    """A message file's octets and its stat: open, fstat, one read, close (Python's buffered open()
    costs a third more per file, which shows when a first FETCH reads 10,000 of them)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        data = os.read(fd, info.st_size + 1)
        if len(data) != info.st_size:     # it grew or shrank since the fstat: read to the end
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data, info
    finally:
        os.close(fd)


# ---- the account -----------------------------------------------------------------------------------
class MaildirAccount(Account):
    """Maildir++: INBOX is the Maildir itself, folder `A.B` is the Maildir `<root>/.A.B/`.

    Side files and user names: every file of a Maildir (tmp/ new/ cur/, maildirfolder,
    mailappliance-*, subscriptions, appliance-pop3.sizes, the `.Folder/` Maildirs) lives INSIDE
    its own directory, and every mailbox path has the template's depth (no address part holds a
    "/"), so no user's path can reach another's files: no user name needs refusing. Inside a
    Maildir, folder `X` is `.X/`, and none of our own names starts with a dot except the
    `.<file>.<pid>.<thread>.tmp` files of replace_file: folder names of that form are refused.
    """

    side_files = re.compile(r"\.[0-9]+\.[0-9]+\.tmp$")

    def _disk_names(self) -> list[str]:
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return [entry[1:] for entry in entries
                if entry.startswith(".") and len(entry) > 1 and entry not in (".", "..")
                and os.path.isdir(os.path.join(self.root, entry, "cur"))]

    def _path(self, disk: str) -> str:
        return os.path.join(self.root, "." + disk)

    def _make(self, disk: str) -> None:
        for sub in SUBDIRS:
            make_dirs(os.path.join(self._path(disk), sub))
        open(os.path.join(self._path(disk), "maildirfolder"), "ab").close()

    def _remove(self, disk: str) -> None:
        shutil.rmtree(self._path(disk))

    def _move(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))

    def _open(self, disk: str | None) -> Folder:
        if disk is None:
            for sub in SUBDIRS:
                make_dirs(os.path.join(self.root, sub))
            return open_folder(self.root)
        return open_folder(self._path(disk))

    def _meta_dir(self) -> str:
        return self.root


class MaildirStore(FileStore):
    """IMailStore over one Maildir per user."""

    account_class = MaildirAccount
    serial_mailbox = False      # one file per message: a mailbox's deliveries may run in parallel

    def write(self, path: str, message: bytes, sender: str) -> str:
        return write(path, message)

    def write_batch(self, items: list[tuple[str, bytes, str]]) -> list[object]:
        return write_many([(path, message) for path, message, _ in items])
