"""`mailappliance backup DEST` and `restore SRC`: one tar file holding everything a new machine needs.

What is copied, and in which order (the order is the consistency argument, see docs/operations.md):

1. the pickup folder (sendmail's messages not yet queued);
2. the queue: retry state files, then done marks, then the segment files (append-only: each is
   copied up to its last complete record, so a write in progress is never half in the backup);
3. the mailboxes, one folder at a time under the same locks the daemon takes to change it (the
   folder's flock for UID list, flags and expunges; for mbox also the dot-lock and fcntl lock
   of delivery), so each folder's messages, UID list and flags belong together;
4. the rest of the state folder, the DKIM keys, and the files the configuration names (itself,
   the users file, the aliases file, the TLS certificate and key, password and CA files).

Why this order: the daemon moves a message pickup -> queue -> mailbox, and writes the next place
before it forgets the previous one. Copying the earlier place first means a message that moves
while we copy is in the backup at least once (in the queue and maybe also in the mailbox): a
message accepted before the backup started is never missing; one that moved during the backup
may be delivered a second time after a restore. No daemon cooperation is needed, so the same
code backs up a running and a stopped server.

The archive is a plain tar (easy to move, to inspect with `tar tvf`, to compress afterwards) with
MANIFEST.json as its last member: format version, date, host, where each part came from, and
every entry with its size, mode, owner and SHA-256. It is written under a temporary name and
renamed when complete, mode 0600 (it holds the TLS key and password hashes). `restore` checks
every checksum before it writes anything, and removes what it wrote if writing fails half-way.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import grp
import hashlib
import io
import json
import os
import pwd
import re
import socket
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from appliance import config, control, pickup
from appliance.errors import MailboxUnavailable
from appliance.queue import done_path, scan_segment
from appliance.store import mbox
from appliance.store.index import LOCK

FORMAT = "mailappliance-backup"
VERSION = 1
MANIFEST = "MANIFEST.json"
AREAS = ("state", "mail", "dkim", "files")      # top folders of the archive
FOLDER_LOCK_TIMEOUT = 30.0      # seconds to wait for a folder the daemon is busy with
FOLDER_LOCK_POLL = 0.05
MAX_MANIFEST = 64 * 1024 * 1024
CHUNK = 1 << 20

# Single files the configuration names: archive name -> how to find it in a loaded Config.
# Why each: the configuration and users are the server; aliases are its routing; the certificate
# and key let the new machine answer with the same identity at once; the password and CA files
# are needed for `check` (and the daemon) to accept the restored configuration.
ROLE_FILES: dict[str, Callable[[config.Config], str]] = {
    "config": lambda cfg: cfg.path,
    "users": lambda cfg: cfg.directory.users_file if cfg.directory.backend == "file" else "",
    "aliases": lambda cfg: cfg.aliases.file,
    "tls-certificate": lambda cfg: cfg.tls.certificate,
    "tls-key": lambda cfg: cfg.tls.key,
    "smarthost-password": lambda cfg: cfg.relay.smarthost_password_file,
    "smarthost-ca": lambda cfg: cfg.relay.smarthost_ca_file,
    "ldap-password": lambda cfg: cfg.ldap.bind_password_file if cfg.ldap else "",
    "ldap-ca": lambda cfg: cfg.ldap.ca_file if cfg.ldap else "",
}

# Names below state_dir that are not state: the daemon's sockets and locks, transfers in progress.
_TRANSIENT = {control.SOCKET_NAME, control.SOCKET_NAME + control.LOCK_SUFFIX,
              control.SOCKET_NAME + control.LEGACY_LOCK_SUFFIX, "smtp-data", "twistd.pid"}
_TEMPORARY = re.compile(r"^\..*\.[0-9]+\.[0-9]+\.tmp$")     # durable.replace_file's work files


class BackupError(Exception):
    """Why a backup or a restore cannot be done; one line for the operator."""


# ---------------------------------------------------------------- where things are

@dataclass(frozen=True)
class Layout:
    """The places of one configuration that a backup reads and a restore fills."""

    state: str                  # state_dir
    mail_root: str              # the storage template's fixed part, e.g. /var/lib/x/mail
    mail_shape: str             # the template below mail_root, e.g. {domain}/{local}
    storage: str                # maildir | mbox
    dkim: str                   # the DKIM keys folder
    files: dict[str, str]       # role -> path, for the roles this configuration sets

    @classmethod
    def of(cls, cfg: config.Config) -> "Layout":
        root, shape = split_template(cfg.storage.path)
        dkim = cfg.dkim.keys or os.path.join(cfg.appliance.state_dir, "dkim")
        files = {role: find(cfg) for role, find in ROLE_FILES.items()}
        return cls(cfg.appliance.state_dir, root, shape, cfg.storage.format, os.path.abspath(dkim),
                   {role: path for role, path in files.items() if path})


def split_template(template: str) -> tuple[str, str]:
    """("/var/mail", "{domain}/{local}") for "/var/mail/{domain}/{local}": the fixed folder and the rest."""
    parts = template.split("/")
    fixed = next(i for i, part in enumerate(parts) if "{" in part)
    return "/".join(parts[:fixed]) or "/", "/".join(parts[fixed:])


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# ---------------------------------------------------------------- writing the archive

@dataclass
class Entry:
    """One manifest line: an archive path and what its content must be."""

    path: str
    type: str                   # "file" or "dir"
    mode: int
    owner: str
    group: str
    size: int = 0
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v != "" or k in ("owner", "group")}


class _Hashing:
    """Hands tarfile at most `limit` bytes of `source` and hashes exactly what it hands over.

    The limit matters for queue segments: the daemon may be appending to one while we copy, and
    only the complete records before `limit` belong in the backup.
    """

    def __init__(self, source: IO[bytes], limit: int):
        self._source = source
        self._left = limit
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._source.read(size)
        self._left -= len(data)
        self.digest.update(data)
        return data


def _names(st: os.stat_result) -> tuple[str, str]:
    """Owner and group by name: numeric ids differ between machines, names usually do not."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return owner, group


@dataclass
class Writer:
    """Adds files and folders to the tar and keeps the manifest; every read is bounded by the file's size."""

    tar: tarfile.TarFile
    entries: list[Entry] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def folder(self, name: str, path: str) -> None:
        """A folder (kept even when empty: an IMAP folder with no mail is still a folder)."""
        if name in self.seen:
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return      # an IMAP folder deleted while we copy: it is simply not in the backup
        owner, group = _names(st)
        info = self._info(name, st, owner, group)
        info.type = tarfile.DIRTYPE
        self.tar.addfile(info)
        self._record(Entry(name, "dir", stat.S_IMODE(st.st_mode), owner, group))

    def file(self, name: str, path: str, length: int | None = None) -> bool:
        """Copy `path` (its first `length` bytes when given); False when it vanished meanwhile."""
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return False
        with handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                return False
            self.stream(name, handle, st, st.st_size if length is None else length)
        return True

    def stream(self, name: str, handle: IO[bytes], st: os.stat_result, size: int) -> None:
        owner, group = _names(st)
        info = self._info(name, st, owner, group)
        info.size = size
        reader = _Hashing(handle, size)
        self.tar.addfile(info, reader)
        self._record(Entry(name, "file", stat.S_IMODE(st.st_mode), owner, group, size, reader.digest.hexdigest()))

    def data(self, name: str, data: bytes, st: os.stat_result) -> None:
        """Bytes already read (under a lock), with the metadata of the file they came from."""
        self.stream(name, io.BytesIO(data), st, len(data))

    def parents(self, area: str, root: str, path: str) -> None:
        """Record the folders between the area's root and `path` (with their modes), top first."""
        parts = os.path.relpath(path, root).split("/")
        for depth in range(1, len(parts)):
            self.folder(f"{area}/{'/'.join(parts[:depth])}", os.path.join(root, *parts[:depth]))

    def _info(self, name: str, st: os.stat_result, owner: str, group: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, owner, group
        return info

    def _record(self, entry: Entry) -> None:
        self.seen.add(entry.path)
        self.entries.append(entry)


@contextlib.contextmanager
def folder_lock(meta_dir: str) -> Iterator[None]:
    """The flock the daemon takes on a folder's `mailappliance-lock` to change its UIDs, flags or messages.

    Opened read-only and never created: as root we must not leave a root-owned lock file the
    daemon's user cannot open. No lock file means no IMAP or POP3 session ever opened the folder.
    """
    try:
        fd = os.open(os.path.join(meta_dir, LOCK), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        deadline = time.monotonic() + FOLDER_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackupError(f"{meta_dir}: the folder stayed locked for {FOLDER_LOCK_TIMEOUT:.0f} s") from None
                time.sleep(FOLDER_LOCK_POLL)
        yield
    finally:
        os.close(fd)


def _listing(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as found:
            return sorted(found, key=lambda item: item.name)
    except FileNotFoundError:
        return []


def _plain_files(folder: str) -> list[str]:
    """Regular files of a folder, without dot files (work files in progress, never state)."""
    return [item.name for item in _listing(folder)
            if not item.name.startswith(".") and item.is_file(follow_symlinks=False)]


# -- the queue and the pickup folder

def copy_pickup(out: Writer, state: str) -> None:
    """sendmail's finished messages and those set aside in bad/; never the dot files being written."""
    top = os.path.join(state, pickup.FOLDER)
    for folder in (top, os.path.join(top, pickup.BAD)):
        if not os.path.isdir(folder):
            continue
        name = _archive_name("state", state, folder)
        out.folder(name, folder)
        for item in _plain_files(folder):
            out.file(f"{name}/{item}", os.path.join(folder, item))


def complete_length(path: str, segment: int) -> int:
    """How much of a segment to copy: up to its last complete record, leaving out a torn tail (the
    record the daemon is writing right now). Damaged stretches between records are copied as they
    are, so the restored server keeps them aside as this one would. Measured on what one scan saw:
    the file only grows, so those bytes no longer change."""
    damage: list = []
    end = 0
    for _, _, location in scan_segment(path, segment, damage):
        end = location.offset + location.length
    for item in damage:
        if item.kind != "torn":
            end = max(end, item.offset + item.length)
    return end


def copy_queue(out: Writer, state: str) -> int:
    """State files, then done marks, then segments (see the module docstring); returns the segments copied."""
    spool = os.path.join(state, "queue")
    if not os.path.isdir(spool):
        return 0
    out.folder("state/queue", spool)
    for sub in ("state", "corrupt"):
        folder = os.path.join(spool, sub)
        if os.path.isdir(folder):
            out.folder(f"state/queue/{sub}", folder)
            for name in _plain_files(folder):
                out.file(f"state/queue/{sub}/{name}", os.path.join(folder, name))
    segments = os.path.join(spool, "segments")
    if not os.path.isdir(segments):
        return 0
    out.folder("state/queue/segments", segments)
    for name in _plain_files(segments):
        if name.endswith(".done"):
            out.file(f"state/queue/segments/{name}", os.path.join(segments, name))
    copied = 0
    for name in _plain_files(segments):     # listed again: a segment begun meanwhile is included
        if not (name.endswith(".log") and name[:-4].isdigit()):
            continue
        path = os.path.join(segments, name)
        try:
            length = complete_length(path, int(name[:-4]))
        except FileNotFoundError:
            continue        # retired meanwhile: every record in it was finished
        if out.file(f"state/queue/segments/{name}", path, length):
            copied += 1
        done = done_path(segments, int(name[:-4]))
        if os.path.exists(done) and f"state/queue/segments/{os.path.basename(done)}" not in out.seen:
            out.file(f"state/queue/segments/{os.path.basename(done)}", done)
    return copied


# -- mailboxes

def mailbox_paths(layout: Layout) -> list[str]:
    """Every mailbox the storage template can name that exists now (a glob of the template)."""
    shape = re.sub(r"\{(domain|local)\}", "*", glob.escape(layout.mail_shape))   # glob.escape leaves {} alone
    pattern = os.path.join(glob.escape(layout.mail_root), shape)
    found = sorted(glob.glob(pattern))
    if layout.storage == "mbox":
        return [p for p in found if os.path.isfile(p) and not mbox.SIDE_FILE.search(os.path.basename(p))]
    return [p for p in found if os.path.isdir(os.path.join(p, "cur"))]


def _archive_name(area: str, root: str, path: str) -> str:
    return f"{area}/{os.path.relpath(path, root)}" if path != root else area


def copy_maildir_folder(out: Writer, root: str, folder: str) -> int:
    """One Maildir folder under its lock: side files (UID list, index), new/ and cur/; tmp/ empty."""
    name = _archive_name("mail", root, folder)
    out.parents("mail", root, folder)
    with folder_lock(folder):
        out.folder(name, folder)
        for item in _plain_files(folder):
            if item != LOCK:
                out.file(f"{name}/{item}", os.path.join(folder, item))
        messages = 0
        for sub in ("cur", "new", "tmp"):
            path = os.path.join(folder, sub)
            if not os.path.isdir(path):
                continue
            out.folder(f"{name}/{sub}", path)
            if sub != "tmp":        # tmp/ holds deliveries in progress, never delivered mail
                for item in _plain_files(path):
                    messages += out.file(f"{name}/{sub}/{item}", os.path.join(path, item))
    return messages


def copy_maildir(out: Writer, root: str, mailbox: str) -> int:
    folders = [mailbox] + [item.path for item in _listing(mailbox)
                           if item.name.startswith(".") and item.name not in (".", "..")
                           and os.path.isdir(os.path.join(item.path, "cur"))]
    return sum(copy_maildir_folder(out, root, folder) for folder in folders)


def copy_mbox_folder(out: Writer, root: str, path: str) -> None:
    """One mbox file and its side folder, under the folder's flock and delivery's dot-lock and fcntl lock."""
    meta = path + ".imap"
    name = _archive_name("mail", root, path)
    out.parents("mail", root, path)
    with folder_lock(meta):
        try:
            data = mbox.read_locked(path)
            st = os.stat(path)
        except FileNotFoundError:
            return
        except MailboxUnavailable as exc:
            raise BackupError(f"{path}: {exc}") from None
        out.data(name, data, st)
        if os.path.isdir(meta):
            out.folder(f"{name}.imap", meta)
            for item in _plain_files(meta):
                if item != LOCK:
                    out.file(f"{name}.imap/{item}", os.path.join(meta, item))


def copy_mbox(out: Writer, root: str, mailbox: str) -> int:
    copy_mbox_folder(out, root, mailbox)
    folders = mailbox + ".folders"
    if not os.path.isdir(folders):
        return 1
    out.folder(_archive_name("mail", root, folders), folders)
    names = [n for n in _plain_files(folders) if not mbox.SIDE_FILE.search(n)]
    for name in names:
        copy_mbox_folder(out, root, os.path.join(folders, name))
    return 1 + len(names)


# -- everything else

def copy_tree(out: Writer, area: str, root: str, skip: Callable[[str], bool]) -> int:
    """Every folder and regular file below `root` but what `skip` says; sockets and links are not state."""
    if not os.path.isdir(root):
        return 0
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not skip(os.path.join(folder, d))
                         and not os.path.islink(os.path.join(folder, d)))
        out.folder(_archive_name(area, root, folder), folder)
        for name in sorted(files):
            path = os.path.join(folder, name)
            if skip(path) or _TEMPORARY.match(name) or os.path.islink(path) or name.endswith(_SQLITE_SIDE):
                continue
            if name.endswith(".sqlite") and _copy_sqlite(out, _archive_name(area, root, path), path):
                count += 1
                continue
            count += out.file(_archive_name(area, root, path), path)
    return count


_SQLITE_SIDE = (".sqlite-wal", ".sqlite-shm", ".sqlite-journal")


def _copy_sqlite(out: Writer, name: str, path: str) -> bool:
    """A live SQLite database (the checks' state, filters/statestore.py) through SQLite's own backup
    API: copying the file while the daemon writes it (WAL mode) could catch a checkpoint half-way.
    Opened read-only, so running as root never leaves a root-owned side file the daemon cannot open.
    False when that fails; the caller then copies the file as it is (losing it costs only greylisting
    and rate memory)."""
    try:
        st = os.stat(path)
        with tempfile.TemporaryDirectory() as scratch:
            copy = os.path.join(scratch, "copy.sqlite")
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
            with open(copy, "rb") as handle:
                out.data(name, handle.read(), st)
        return True
    except (OSError, sqlite3.Error):
        return False


def _state_skip(layout: Layout) -> Callable[[str], bool]:
    """What the generic walk of state_dir leaves out: copied on their own, or not state at all."""
    own = {os.path.join(layout.state, name) for name in ("queue", pickup.FOLDER, *_TRANSIENT)}
    handled = [layout.mail_root, layout.dkim, *layout.files.values()]
    return lambda path: path in own or any(_inside(path, other) for other in handled)


# ---------------------------------------------------------------- backup

@dataclass
class Summary:
    """What a backup or restore did, for the lines the command prints."""

    lines: list[str] = field(default_factory=list)


def backup_path(dest: str, hostname: str, now: float) -> str:
    """DEST itself, or a dated file inside DEST when it is a folder (handy for cron)."""
    if os.path.isdir(dest):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        return os.path.join(dest, f"mailappliance-{hostname}-{stamp}.tar")
    return dest


def daemon_running(state: str) -> bool:
    """Whether a daemon holds this state folder (its control socket's flock): said in the manifest."""
    try:
        fd = os.open(control.socket_path(state) + control.LOCK_SUFFIX, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def backup(cfg: config.Config, dest: str, now: float | None = None) -> Summary:
    """Write the archive for `cfg` to `dest` (see the module docstring); the summary of what is in it."""
    now = time.time() if now is None else now
    layout = Layout.of(cfg)
    target = backup_path(dest, socket.gethostname(), now)
    if os.path.lexists(target):
        raise BackupError(f"{target} already exists; give a new file name or a folder")
    for folder in (layout.state, layout.mail_root):
        if _inside(os.path.abspath(target), folder):
            raise BackupError(f"{target} is inside {folder}; write the backup elsewhere (it would copy itself)")
    work = os.path.join(os.path.dirname(os.path.abspath(target)), f".{os.path.basename(target)}.{os.getpid()}.part")
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            out = Writer(tar)
            counts = _copy_everything(out, layout)
            manifest = _manifest(layout, out.entries, now, daemon_running(layout.state), cfg)
            data = json.dumps(manifest, indent=1).encode("utf-8")
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o600, int(now)
            tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(work, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(work)
        raise
    size = os.path.getsize(target)
    total = sum(e.size for e in out.entries)
    return Summary([f"wrote {target} ({size} bytes, mode 0600)",
                    f"queue       {counts['segments']} segment file(s)",
                    f"mailboxes   {counts['mailboxes']} ({layout.storage}), {counts['messages']} "
                    f"{'folder(s)' if layout.storage == 'mbox' else 'message(s)'}",
                    f"files       {', '.join(sorted(r for r in layout.files if os.path.isfile(layout.files[r])))}",
                    f"in all      {len(out.entries)} entries, {total} bytes; "
                    f"the daemon was {'running' if manifest['daemon_running'] else 'not running'}"])


def _copy_everything(out: Writer, layout: Layout) -> dict[str, int]:
    """The copy order of the module docstring: pickup, queue, mailboxes, then the rest."""
    if not os.path.isdir(layout.state):
        raise BackupError(f"{layout.state}: the state folder does not exist; nothing to back up")
    out.folder("state", layout.state)
    copy_pickup(out, layout.state)
    counts = {"segments": copy_queue(out, layout.state), "mailboxes": 0, "messages": 0}
    if os.path.isdir(layout.mail_root):
        out.folder("mail", layout.mail_root)
        copy = copy_mbox if layout.storage == "mbox" else copy_maildir
        for mailbox in mailbox_paths(layout):
            counts["messages"] += copy(out, layout.mail_root, mailbox)
            counts["mailboxes"] += 1
    copy_tree(out, "state", layout.state, _state_skip(layout))
    copy_tree(out, "dkim", layout.dkim, lambda path: False)
    out.folder("files", os.path.dirname(layout.files["config"]))
    for role, path in layout.files.items():
        out.file(f"files/{role}", path)
    return counts


def _manifest(layout: Layout, entries: list[Entry], now: float, running: bool, cfg: config.Config) -> dict:
    return {
        "format": FORMAT, "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "hostname": socket.gethostname(), "appliance_hostname": cfg.appliance.hostname,
        "daemon_running": running,
        "storage": {"format": layout.storage, "shape": layout.mail_shape},
        "origin": {"state": layout.state, "mail": layout.mail_root, "dkim": layout.dkim, "files": layout.files},
        "entries": [entry.to_json() for entry in entries],
    }


# ---------------------------------------------------------------- reading and checking an archive

_SAFE_PART = re.compile(r"^[^/\0]+$")


def parse_manifest(data: bytes) -> tuple[dict, dict[str, Entry]]:
    """The manifest and its entries by path; BackupError for anything but a well-formed manifest of ours.

    The archive comes from outside (another machine, a copy over the network): every field is
    checked, and every path must stay inside one of the archive's areas.
    """
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BackupError("the manifest is not readable JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("not a mailappliance backup (no manifest of ours)")
    if manifest.get("version") != VERSION:
        raise BackupError(f"backup format version {manifest.get('version')!r}; this mailappliance reads {VERSION}")
    storage = manifest.get("storage")
    if not (isinstance(storage, dict) and storage.get("format") in ("maildir", "mbox")
            and isinstance(storage.get("shape"), str)):
        raise BackupError("the manifest has no valid storage description")
    raw = manifest.get("entries")
    if not isinstance(raw, list):
        raise BackupError("the manifest lists no entries")
    entries: dict[str, Entry] = {}
    for item in raw:
        entry = _entry(item)
        if entry.path in entries:
            raise BackupError(f"the manifest lists {entry.path!r} twice")
        entries[entry.path] = entry
    return manifest, entries


def _entry(item: object) -> Entry:
    if not isinstance(item, dict):
        raise BackupError("a manifest entry is not an object")
    try:
        entry = Entry(item["path"], item["type"], item["mode"], item.get("owner", ""), item.get("group", ""),
                      item.get("size", 0), item.get("sha256", ""))
    except (KeyError, TypeError):
        raise BackupError("a manifest entry lacks its path, type or mode") from None
    checks = (isinstance(entry.path, str) and safe_name(entry.path), entry.type in ("file", "dir"),
              isinstance(entry.mode, int) and 0 <= entry.mode <= 0o7777,
              isinstance(entry.owner, str) and isinstance(entry.group, str),
              isinstance(entry.size, int) and entry.size >= 0,
              entry.type == "dir" or (isinstance(entry.sha256, str) and re.fullmatch("[0-9a-f]{64}", entry.sha256)))
    if not all(checks):
        raise BackupError(f"bad manifest entry {str(item.get('path'))[:80]!r}")
    return entry


def safe_name(name: str) -> bool:
    """An archive path we may write: inside one area, no `..`, no empty or absolute parts."""
    parts = name.split("/")
    if parts[0] not in AREAS or any(p in ("", ".", "..") or not _SAFE_PART.match(p) for p in parts):
        return False
    return parts[0] != "files" or (len(parts) == 1 or (len(parts) == 2 and parts[1] in ROLE_FILES))


def verify(src: str) -> tuple[dict, dict[str, Entry]]:
    """Open the archive and check every member against the manifest, before anything is written."""
    try:
        tar = tarfile.open(src, mode="r:")
    except FileNotFoundError:
        raise BackupError(f"{src}: no such file") from None
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"{src}: not a readable tar archive ({exc})") from None
    with tar:
        try:
            members = tar.getmembers()
            found = [m for m in members if m.name == MANIFEST]
            if len(found) != 1 or not found[0].isfile() or found[0].size > MAX_MANIFEST:
                raise BackupError(f"{src}: no manifest; not a mailappliance backup, or cut short")
            manifest, entries = parse_manifest(tar.extractfile(found[0]).read())
            _check_members(tar, [m for m in members if m is not found[0]], entries, src)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BackupError(f"{src}: the archive is damaged ({exc}); nothing was restored") from None
    return manifest, entries


def _check_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], entries: dict[str, Entry], src: str) -> None:
    seen = set()
    for member in members:
        entry = entries.get(member.name)
        if entry is None or member.name in seen:
            raise BackupError(f"{src}: {member.name[:80]!r} is not in the manifest; nothing was restored")
        seen.add(member.name)
        if entry.type == "dir":
            if not member.isdir():
                raise BackupError(f"{src}: {member.name} should be a folder; nothing was restored")
            continue
        if not member.isfile() or member.size != entry.size:
            raise BackupError(f"{src}: {member.name}: size differs from the manifest; nothing was restored")
        digest = hashlib.sha256()
        reader = tar.extractfile(member)
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise BackupError(f"{src}: {member.name}: checksum mismatch (the archive is damaged); "
                              "nothing was restored")
    missing = set(entries) - seen
    if missing:
        raise BackupError(f"{src}: {sorted(missing)[0]} is in the manifest but not in the archive; "
                          "nothing was restored")


# ---------------------------------------------------------------- restore

def _owner_ids(entry: Entry, default: tuple[int, int]) -> tuple[int, int]:
    """As root: the owner and group the archive names, when they exist here; else the state folder's."""
    try:
        uid = pwd.getpwnam(entry.owner).pw_uid
    except KeyError:
        uid = default[0]
    try:
        gid = grp.getgrnam(entry.group).gr_gid
    except KeyError:
        gid = default[1]
    return uid, gid


def _is_empty(folder: str) -> bool:
    try:
        return not os.listdir(folder)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


@dataclass
class Restorer:
    """Writes verified members to their places; remembers everything it made, to undo a failed restore."""

    tar: tarfile.TarFile
    entries: dict[str, Entry]
    owner: tuple[int, int] | None = None    # as root: the state folder's owner, the default owner
    made: list[tuple[str, Entry | None, int]] = field(default_factory=list)    # (path, entry, mode)

    def mkdirs(self, path: str, entry: Entry | None = None) -> None:
        """Create `path` and its missing parents: with the entry's mode, 0700 without one."""
        if os.path.isdir(path):
            return
        if os.path.lexists(path):
            raise NotADirectoryError(errno.ENOTDIR, "in the way: a file where a folder must go", path)
        self.mkdirs(os.path.dirname(path))
        os.mkdir(path, 0o700)
        self._made(path, entry, entry.mode if entry else 0o700)

    def put_file(self, member: tarfile.TarInfo, path: str) -> None:
        self.mkdirs(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        entry = self.entries[member.name]
        self._made(path, entry, entry.mode)
        with os.fdopen(fd, "wb") as out:
            reader = self.tar.extractfile(member)
            while chunk := reader.read(CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.utime(path, (member.mtime, member.mtime))

    def put_dir(self, member: tarfile.TarInfo, path: str) -> None:
        """A folder of the backup; one that exists already (an empty state folder) keeps its owner and mode."""
        self.mkdirs(path, self.entries[member.name])

    def _made(self, path: str, entry: Entry | None, mode: int) -> None:
        self.made.append((path, entry, mode))
        self._own(path, entry, mode)

    def _own(self, path: str, entry: Entry | None, mode: int) -> None:
        """Mode always; as root also the owner (chown first: it may clear set-id bits)."""
        if self.owner is not None:
            uid, gid = _owner_ids(entry, self.owner) if entry else self.owner
            os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, mode)

    def own_again(self) -> None:
        """Give what was made before the owner was known (the configuration and its folder) its owner."""
        for path, entry, mode in self.made:
            self._own(path, entry, mode)

    def undo(self) -> None:
        for path, _, _ in reversed(self.made):
            with contextlib.suppress(OSError):
                os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def _target_config(config_path: str, tar: tarfile.TarFile, entries: dict[str, Entry],
                   restorer: Restorer) -> tuple[config.Config, bool]:
    """The configuration to restore into: the one at --config, or the backup's written there.

    Its folder, when missing, gets the mode the configuration's folder had (the daemon's user
    must be able to read the file: /etc/mailappliance made 0700 by root would lock it out).
    """
    if os.path.exists(config_path):
        return config.load(config_path), False
    if "files/config" not in entries:
        raise BackupError(f"{config_path} does not exist and the backup holds no configuration")
    path = os.path.abspath(config_path)
    restorer.mkdirs(os.path.dirname(path), entries.get("files"))
    restorer.put_file(tar.getmember("files/config"), path)
    return config.load(path), True


def _destination(name: str, layout: Layout) -> str | None:
    """Where an archive path goes under the target configuration (None: a file this config does not use)."""
    area, _, rest = name.partition("/")
    if area == "files":
        return layout.files.get(rest) if rest else None
    root = {"state": layout.state, "mail": layout.mail_root, "dkim": layout.dkim}[area]
    return os.path.join(root, rest) if rest else root


# A different file already at a role's place: the users file is refused (two servers' users must not
# be mixed silently); for the others the machine's own file is kept and the backup's copy is put
# beside it as PATH.from-backup, for the operator to compare (a new certificate, the system's CA file).
REFUSED_IF_DIFFERENT = {"users"}
BESIDE = ".from-backup"


def _refusals(layout: Layout, manifest: dict, tar: tarfile.TarFile, entries: dict[str, Entry]) -> list[str]:
    """Why the target cannot take the backup: a non-empty state folder, a different storage, files in the way."""
    if not _is_empty(layout.state):
        return [f"{layout.state} is not empty; restore fills an empty state folder only "
                "(stop the daemon and give a new or empty state_dir)"]
    storage = manifest["storage"]
    if storage["format"] != layout.storage:
        return [f"the backup holds {storage['format']} mailboxes but [storage] format is {layout.storage}"]
    if storage["shape"] != layout.mail_shape:
        return [f"[storage] path ends in {layout.mail_shape}; the backup's mailboxes are laid out as "
                f"{storage['shape']}: use the same shape"]
    for name, entry in entries.items():
        target = _destination(name, layout)
        if entry.type != "file" or target is None or not os.path.lexists(target):
            continue
        role = name[len("files/"):] if name.startswith("files/") else ""
        if role and _same_content(target, tar, name):
            continue
        if role and role not in REFUSED_IF_DIFFERENT and not os.path.lexists(target + BESIDE):
            continue
        return [f"{target if not role or role in REFUSED_IF_DIFFERENT else target + BESIDE} already exists "
                "and differs from the backup; move it away first (restore never overwrites)"]
    return []


def _same_content(path: str, tar: tarfile.TarFile, name: str) -> bool:
    member = tar.getmember(name)
    try:
        with open(path, "rb") as handle:
            return handle.read(member.size + 1) == tar.extractfile(member).read()
    except OSError:
        return False


def restore(config_path: str, src: str) -> Summary:
    """Put the archive `src` back under the configuration at `config_path` (see the module docstring)."""
    manifest, entries = verify(src)
    with tarfile.open(src, mode="r:") as tar:
        return _restore_verified(config_path, src, tar, manifest, entries)


def _restore_verified(config_path: str, src: str, tar: tarfile.TarFile, manifest: dict,
                      entries: dict[str, Entry]) -> Summary:
    restorer = Restorer(tar, entries)
    try:
        cfg, written = _target_config(config_path, tar, entries, restorer)
        layout = Layout.of(cfg)
        problems = _refusals(layout, manifest, tar, entries)
        if problems:
            raise BackupError(problems[0])
        if os.geteuid() == 0:
            restorer.owner = _state_owner(layout.state)
            restorer.own_again()
        counts = _write_members(tar, entries, layout, restorer, written)
    except BaseException:
        restorer.undo()
        raise
    lines = [f"restored {src} (made {manifest.get('created')} on {manifest.get('hostname')})"]
    if written:
        lines.append(f"{'config':<16} {cfg.path} (from the backup)")
    lines += [f"{area:<16} {where}: {counts[area]} entries" for area, where in
              (("state", layout.state), ("mail", layout.mail_root), ("dkim", layout.dkim)) if counts[area]]
    lines += [f"{role:<16} {path}" for role, path in counts["files"]]
    lines += [f"{'skipped':<16} {name} (this configuration names no such file)" for name in counts["unused"]]
    if restorer.owner is not None:
        lines.append(f"{'owners':<16} as in the backup where those users exist here, else the state folder's owner")
    lines.append(f"{'next':<16} mailappliance --config {cfg.path} check, then start the daemon")
    return Summary(lines)


def _state_owner(state: str) -> tuple[int, int]:
    """Who should own restored files without a known owner: the state folder's owner (made by the packager)."""
    probe = state
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.stat(probe)
    return st.st_uid, st.st_gid


def _write_members(tar: tarfile.TarFile, entries: dict[str, Entry], layout: Layout, restorer: Restorer,
                   config_written: bool) -> dict:
    counts: dict[str, Any] = {"state": 0, "mail": 0, "dkim": 0, "files": [], "unused": []}
    for member in tar.getmembers():
        if member.name == MANIFEST or (member.name == "files/config" and config_written):
            continue        # the backup's config was written first (_target_config)
        target = _destination(member.name, layout)
        area = member.name.partition("/")[0]
        if target is None:
            if area == "files" and member.isfile():
                counts["unused"].append(member.name)
            continue
        if area == "files":
            counts["files"].append((member.name[len("files/"):], _put_role_file(restorer, tar, member, target)))
            continue
        if member.isdir():
            restorer.put_dir(member, target)
        else:
            restorer.put_file(member, target)
        counts[area] += 1
    return counts


def _put_role_file(restorer: Restorer, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> str:
    """Write one file the configuration names; what became of it, for the summary."""
    if not os.path.lexists(target):
        restorer.put_file(member, target)
        return target
    if _same_content(target, tar, member.name):
        return f"{target} (already there, identical)"
    restorer.put_file(member, target + BESIDE)      # _refusals made sure that is free
    return f"{target} kept (it differs from the backup's: that one is {target + BESIDE})"
