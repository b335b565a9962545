"""The mailbox layer IMAP works on (appliance.store): every name appliance.imap takes from it, in one place."""
from __future__ import annotations

from appliance import mime
from appliance.store import SYSTEM_FLAGS, MailboxError, Meta, Snapshot
from appliance.store.account import DELIMITER, Account, normalise
from appliance.store.folder import Folder
from appliance.store.keywords import client_flags

__all__ = ["DELIMITER", "SYSTEM_FLAGS", "Account", "Folder", "MailboxError", "Meta", "Snapshot", "client_flags", "mime",
           "normalise"]
