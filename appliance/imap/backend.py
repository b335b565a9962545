"""The mailbox layer IMAP works on: every import of it, and opening a user's account, in this one module.

The stores are being reorganised (issue 9); keeping their names behind one module means that move
changes the import lines here and nothing else in appliance.imap.
"""
from __future__ import annotations

from typing import Any

from appliance.interfaces import UserRecord
# ---- the mailbox layer: the only imports of appliance.mailbox.* and appliance.store.* in appliance.imap ----
from appliance.mailbox import SYSTEM_FLAGS, MailboxError, Meta, Snapshot, mime
from appliance.mailbox.account import DELIMITER, Account, normalise, open_account
from appliance.mailbox.folder import Folder
from appliance.store.mbox import MboxStore

__all__ = ["DELIMITER", "SYSTEM_FLAGS", "Account", "Folder", "MailboxError", "Meta", "Snapshot", "mime",
           "normalise", "open_user_account"]


def open_user_account(store: Any, avatar_id: str) -> Account:
    """Blocking: the user's folders, with the special-use ones created on first login."""
    storage_format = "mbox" if isinstance(store, MboxStore) else "maildir"
    account = open_account(storage_format, store.path_for(UserRecord(address=avatar_id)))
    account.ensure_special()
    return account
