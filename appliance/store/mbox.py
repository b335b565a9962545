"""mbox delivery (mboxrd): append under fcntl and dot-lock, truncating back if the append fails."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator

from appliance.errors import MailboxUnavailable
from appliance.store import FileStore, make_dirs, unavailable

LOCK_TIMEOUT = 10.0    # seconds a delivery waits for a busy mailbox before it is retried later
LOCK_POLL = 0.1        # seconds between two attempts at a busy lock
STALE_LOCK_AGE = 300.0  # a dot-lock older than this was left by a crashed writer: steal it
EMPTY_LOCK_AGE = 10.0   # a lock without a readable pid this old is stale too

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f]+")


def entry(message: bytes, sender: str, now: float | None = None) -> bytes:
    """One mboxrd entry: From_ line, LF body with `>*From ` lines quoted once more, a blank line after.

    mboxrd (not mboxo) quoting is reversible: readers strip exactly one `>`, so a body line that
    already read `>From ` comes back unchanged.
    """
    envelope_from = _BLANKS.sub("_", sender) or "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(time.time() if now is None else now))
    body = _FROM_LINE.sub(rb">\1", message.replace(b"\r\n", b"\n"))
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return f"From {envelope_from} {stamp}\n".encode("utf-8", "replace") + body + b"\n"


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
            if _is_stale(lock):
                os.unlink(lock)
        except FileNotFoundError:
            pass  # its owner released it meanwhile: just try again
        return False
    finally:
        os.unlink(mine)


_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    """Serialise our own worker threads on one mbox without polling the dot-lock."""
    with _local_locks_guard:
        lock = _local_locks.setdefault(path, threading.Lock())
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

    Blocking. Delivery appends under it, and POP3/IMAP rewrite the file under it.
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


class MboxStore(FileStore):
    """IMailStore over one mbox file per user."""

    def write(self, path: str, message: bytes, sender: str) -> str:
        return append(path, message, sender)
