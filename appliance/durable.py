"""Crash-safe file writes: a file is either the old one or the complete new one, and stays so.

The pattern every part of the appliance uses for state it must not lose (queue state, uid
lists, rewritten mailboxes): write beside the target, fsync, rename over it, fsync the folder
so the rename itself survives a power cut.
"""
from __future__ import annotations

import os
import threading


def fsync_dir(path: str) -> None:
    """Make a created, renamed or removed name in the folder `path` durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = 0o600, *, sync_dir: bool = True,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace `path` whole with `data`, `mode` from its creation (never readable by others for a
    moment) and given to `owner` (uid, gid) before it appears. With sync_dir=False the caller
    syncs the folder itself (once for several files)."""
    folder = os.path.dirname(path)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if owner is not None:
            os.fchown(fd, *owner)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(temporary, path)
    if sync_dir:
        fsync_dir(folder)
