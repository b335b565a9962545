"""Maildir delivery: write in tmp/, fsync, rename into new/, so readers never see half a message."""
from __future__ import annotations

import itertools
import os
import socket
import time

from appliance.durable import fsync_dir
from appliance.errors import MailboxUnavailable
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
    """Write in tmp/ (fsynced) and rename into new/; the caller makes the rename durable."""
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
    except OSError as exc:
        _remove(tmp)
        raise unavailable("maildir write failed", exc) from exc
    return final


class MaildirStore(FileStore):
    """IMailStore over one Maildir per user."""

    def write(self, path: str, message: bytes, sender: str) -> str:
        return write(path, message)

    def write_batch(self, items: list[tuple[str, bytes, str]]) -> list[object]:
        return write_many([(path, message) for path, message, _ in items])
