"""The mail store: pick the format, map a user to a path, and hand POP3 and IMAP the same folders.

One module per format owns everything about it (store/maildir.py, store/mbox.py): writing,
the one reader, UIDs, flags and folders. POP3 and IMAP never learn the format: IMAP asks
`FileStore.account(path)`, POP3 asks `FileStore.open_maildrop(path)`, and both end up on the
same process-wide Folder objects (store/folder.py), so they see exactly the same messages.
What the formats share is in store/base.py; the names other parts of the appliance use are
re-exported here.
"""
from __future__ import annotations

from appliance.config import StorageSection
from appliance.interfaces import IMailStore
from appliance.store.base import (SYSTEM_FLAGS, FileStore, MailboxError, Meta, Snapshot, mailbox_path,
                                  make_dirs)
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore

__all__ = ["FORMATS", "SYSTEM_FLAGS", "FileStore", "MailboxError", "Meta", "Snapshot", "mailbox_path", "make_dirs",
           "make_store"]

FORMATS = {"maildir": MaildirStore, "mbox": MboxStore}


def make_store(storage: StorageSection, reactor, pool, writers=None) -> IMailStore:
    """The store for `[storage] format`; the config loader has already refused unknown formats.
    `writers` runs the deliveries (FileStore), `pool` everything else."""
    if storage.format not in FORMATS:
        raise ValueError(f"unknown storage format: {storage.format!r}")
    return FORMATS[storage.format](storage.path, reactor, pool, writers)
