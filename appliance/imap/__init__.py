"""IMAP4rev1 listeners (imap 143 with STARTTLS, imaps 993) over the mailbox layer.

session.py is the connection and its state machine, with the commands in one mixin per job
(mailboxes.py, selected.py, fetch.py, parse.py); search.py and view.py are SEARCH and the
session's view of its folder; watcher.py feeds IDLE; backend.py is the one door to the stores.
"""
from appliance.imap.session import IMAPFactory
from appliance.imap.watcher import FolderWatcher

__all__ = ["FolderWatcher", "IMAPFactory"]
