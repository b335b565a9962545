"""Maildir delivery: write in tmp/, fsync, rename into new/, so readers never see half a message."""
from __future__ import annotations

import itertools
import os
import socket
import time

from appliance.store import FileStore, make_dirs, unavailable

SUBDIRS = ("cur", "new", "tmp")

# next() on itertools.count is atomic under the GIL, so worker threads never share a number.
_counter = itertools.count()


def _hostname() -> str:
    """The host part of a Maildir name; `/` and `:` would break the name, so they are octal-escaped."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


_HOST = _hostname()


def unique_name(size: int) -> str:
    """`<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>`: unique per process and readable by Dovecot's S=."""
    secs, usecs = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{next(_counter)}.{_HOST},S={size}"


def _fsync_dir(path: str) -> None:
    """Make a rename durable: the directory entry lives in the directory, not in the file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "xb", opener=lambda p, flags: os.open(p, flags | os.O_CLOEXEC, 0o600)) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
    data = message.replace(b"\r\n", b"\n")
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
        _fsync_dir(os.path.join(path, "new"))
    except OSError as exc:
        # If only the directory fsync failed the message is visible but not durable: take it back,
        # since the caller will retry and a kept copy would become a duplicate.
        _remove(tmp)
        _remove(final)
        raise unavailable("maildir write failed", exc) from exc
    return final


class MaildirStore(FileStore):
    """IMailStore over one Maildir per user."""

    def write(self, path: str, message: bytes, sender: str) -> str:
        return write(path, message)
