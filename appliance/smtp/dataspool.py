"""Where a DATA transfer in progress is kept: in memory while small, in an unlinked temporary file once large.

A client may take `data_timeout` (600 s) between two chunks, so a transfer in progress must not
hold its message in memory: fifty unfinished 20 MiB transfers would hold a gigabyte. Each
transfer (a DataBuffer) keeps its first bytes in memory; once it passes SPILL_THRESHOLD, or once
the process-wide MemoryBudget that every SMTP listener shares is spent, it moves to a
temporary file under `<state_dir>/smtp-data/` and every later chunk goes there.

The bound, and what it is not:
- the bytes held in memory by all transfers in progress together never exceed the budget
  (MEMORY_BUDGET); beyond it, further chunks go to disk. Outside the budget, each connection
  also holds the chunk it is scanning (one read: up to 256 KiB during DATA, smtp/server.py
  DATA_READ_SIZE) for as long as the scan takes, and input a client pipelines while a command
  waits (at most MAX_PENDING_INPUT, 1 MiB, before smtp/server.py stops reading from it);
- it is not a bound on messages past the end of DATA: the queue takes bytes, so the message is
  read back whole for the checks and the queue put (`Intake.accept`), and is held until the
  queue has written it; that memory is limited by `max_message_size` per finished message
  and by the number of messages finishing at the same moment, not by the budget.

The temporary file is created already unlinked (tempfile.TemporaryFile: O_TMPFILE, or created
and unlinked at once), so nothing is left on disk at any end: 250, a refusal, a disconnect, a
timeout, or the process killed. Its descriptor is closed on each of those ends (`close`).
Writing to it is done on the reactor thread, without fsync (page cache): it is a buffer, not a
promise; the promise (250) is still made by the queue.
"""
from __future__ import annotations

import os
import tempfile
from typing import IO

SPILL_THRESHOLD = 256 * 1024        # a transfer larger than this goes to disk
MEMORY_BUDGET = 8 * 1024 * 1024     # all transfers in progress together hold at most this in memory
FOLDER = "smtp-data"                 # under state_dir


class MemoryBudget:
    """Bytes that transfers in progress may hold in memory, shared by every listener of the process."""

    def __init__(self, limit: int = MEMORY_BUDGET) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (and nothing reserved) when that would pass the limit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class DataSpool:
    """Makes the DataBuffers of one process: the spool folder, the per-transfer threshold, the budget."""

    def __init__(self, directory: str | None = None, threshold: int = SPILL_THRESHOLD,
                 budget: MemoryBudget | None = None) -> None:
        self.directory = directory          # None: the system's temporary folder (tests)
        self.threshold = threshold
        self.budget = budget if budget is not None else MemoryBudget()
        self.open_files = 0                 # temporary files open right now (for tests and status)

    def buffer(self) -> "DataBuffer":
        return DataBuffer(self)

    def temporary(self) -> IO[bytes]:
        if self.directory is not None and not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        handle = tempfile.TemporaryFile(dir=self.directory, prefix="data-")
        self.open_files += 1
        return handle


class DataBuffer:
    """One transfer: `write` as chunks arrive, then `read` once (which closes), or `close` on any other end."""

    def __init__(self, spool: DataSpool) -> None:
        self._spool = spool
        # In memory: the chunks as written, joined once by `read` (a bytearray copied each chunk in
        # and grew by reallocation, then was copied out again).
        self._chunks: list[bytes | memoryview] = []
        self._held = 0                      # bytes in _chunks
        self._file: IO[bytes] | None = None
        self.size = 0                       # every byte written, kept or not
        self.discarded = False              # too big: only counted from then on
        self.error: OSError | None = None   # the spool file could not be written

    @property
    def in_memory(self) -> int:
        return self._held

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes | memoryview) -> None:
        """Add `data` (kept as given, not copied, while in memory: it must not change afterwards)."""
        self.size += len(data)
        if self.discarded or not data:
            return
        try:
            if self._file is None:
                if self._held + len(data) <= self._spool.threshold and self._spool.budget.take(len(data)):
                    self._chunks.append(data)
                    self._held += len(data)
                    return
                self._file = self._spool.temporary()
                self._file.writelines(self._chunks)
                self._release_memory()
            self._file.write(data)
        except OSError as exc:
            self.error = exc
            self.discard()

    def discard(self) -> None:
        """Keep nothing more (the message is too big, or the disk failed); the size is still counted."""
        self.discarded = True
        self.close()

    def read(self, skip: int = 0) -> bytes:
        """The message from offset `skip`, whole, as bytes (for the queue); the buffer is closed after."""
        try:
            if self._file is None:
                return _joined(self._chunks, skip)
            self._file.flush()
            self._file.seek(skip)
            return self._file.read()
        finally:
            self.close()

    def close(self) -> None:
        """Give back the memory and close the file; safe to call more than once."""
        self._release_memory()
        if self._file is not None:
            handle, self._file = self._file, None
            self._spool.open_files -= 1
            handle.close()

    def _release_memory(self) -> None:
        self._spool.budget.give(self._held)
        self._chunks, self._held = [], 0


def _joined(chunks: list[bytes | memoryview], skip: int) -> bytes:
    """b"".join(chunks)[skip:] with one copy (none for a single whole chunk of bytes)."""
    pieces = []
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        pieces.append(memoryview(chunk)[skip:] if skip else chunk)
        skip = 0
    return b"".join(pieces)
