"""The Account base: a user's folder names, hierarchy, subscriptions and special-use folders, for every format.

Folder names arrive decoded from modified UTF-7; on disk they are kept in modified UTF-7 (ASCII),
as Dovecot does, so any file name we make is plain ASCII. The hierarchy delimiter is ".",
which maps one to one onto Maildir++ (`.Lists.Twisted/`). Each format's module subclasses Account
to map names to files (MaildirAccount, MboxAccount). All methods block (worker thread).
"""
from __future__ import annotations

import os
import re
import threading
from typing import ClassVar

import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)

from appliance.durable import replace_file
from appliance.store.base import MailboxError, make_dirs
from appliance.store.folder import Folder, open_among, refresh_open

DELIMITER = "."
SPECIAL_USE = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk"}
SUBSCRIPTIONS = "subscriptions"
MAX_NAME = 200
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")
# Subscriptions are one file read, changed and replaced: two sessions of one user (two pool
# threads) changing it at once would lose one change without this.
_SUBSCRIPTIONS_LOCK = threading.Lock()


def normalise(name: str) -> str:
    """INBOX in any case is INBOX; everything else is kept as given."""
    return "INBOX" if name.upper() == "INBOX" else name


def check_name(name: str) -> str:
    """The on-disk (modified UTF-7) form of a creatable name; MailboxError for a name we refuse."""
    name = normalise(name)
    if (not name or len(name) > MAX_NAME or _BAD_CHARS.search(name) or name.startswith(DELIMITER)
            or name.endswith(DELIMITER) or DELIMITER * 2 in name or "*" in name or "%" in name):
        raise MailboxError("Invalid mailbox name", "CANNOT")
    return name.encode("imap4-utf-7").decode("ascii")


def from_disk(disk: str) -> str:
    try:
        return disk.encode("ascii").decode("imap4-utf-7")
    except (UnicodeError, ValueError):
        return disk


class Account:
    """The folders of one user; subclasses map names to files."""

    # On-disk folder names the format keeps for its own files beside a folder (mbox: `X.lock`,
    # `X.imap`): a folder may not be created under such a name, or it would be another folder's
    # side file (its mail deleted as a stale lock, or written over).
    side_files: ClassVar[re.Pattern[str] | None] = None

    def __init__(self, root: str):
        self.root = root

    # Delivery (store/base.py, which cannot import folder.py) tells open folders through the Account.
    refresh_open = staticmethod(refresh_open)
    open_among = staticmethod(open_among)

    def _creatable(self, name: str) -> str:
        """check_name, and refuse a name whose disk form is one of the format's side files."""
        disk = check_name(name)
        if self.side_files is not None and self.side_files.search(disk):
            raise MailboxError("Mailbox name reserved", "CANNOT")
        return disk

    # ---- provided by the storage format ----------------------------------------------------------
    def _disk_names(self) -> list[str]:
        """Every folder but INBOX, in on-disk form."""
        raise NotImplementedError

    def _make(self, disk: str) -> None:
        raise NotImplementedError

    def _remove(self, disk: str) -> None:
        raise NotImplementedError

    def _move(self, old: str, new: str) -> None:
        raise NotImplementedError

    def _open(self, disk: str | None) -> Folder:
        """The folder object (None = INBOX)."""
        raise NotImplementedError

    def _path(self, disk: str) -> str:
        """The file or directory holding a folder other than INBOX."""
        raise NotImplementedError

    def _meta_dir(self) -> str:
        raise NotImplementedError

    # ---- names ----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every folder name, INBOX first."""
        return ["INBOX"] + sorted(from_disk(disk) for disk in self._disk_names())

    def exists(self, name: str) -> bool:
        name = normalise(name)
        return name == "INBOX" or name in self.names()

    def folder(self, name: str) -> Folder:
        """The folder called `name`; MailboxError [NONEXISTENT] when there is none."""
        name = normalise(name)
        if name == "INBOX":
            return self._open(None)
        if not self.exists(name):
            raise MailboxError("Mailbox does not exist", "NONEXISTENT")
        return self._open(check_name(name))

    def delivery_path(self, name: str) -> str:
        """Where the store writes a delivery to folder `name` (the mailbox itself for INBOX)."""
        name = normalise(name)
        return self.root if name == "INBOX" else self._path(check_name(name))

    def has_children(self, name: str) -> bool:
        prefix = normalise(name) + DELIMITER
        return any(other.startswith(prefix) for other in self.names())

    def special_use(self, name: str) -> str | None:
        return SPECIAL_USE.get(name)

    # ---- changes ----------------------------------------------------------------------------------------
    def create(self, name: str) -> None:
        disk = self._creatable(name)
        if self.exists(name):
            raise MailboxError("Mailbox already exists", "ALREADYEXISTS")
        self._make(disk)

    def delete(self, name: str) -> None:
        name = normalise(name)
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted", "CANNOT")
        if not self.exists(name):
            raise MailboxError("Mailbox does not exist", "NONEXISTENT")
        if self.has_children(name):
            raise MailboxError("Mailbox has children; delete them first", "INUSE")
        self._remove(check_name(name))
        # The subscription stays: RFC 3501 6.3.6 forbids the server to remove one on its own, and
        # a client that re-creates the folder finds it subscribed again (as with Dovecot).

    def rename(self, old: str, new: str) -> None:
        old, new = normalise(old), normalise(new)
        if old == "INBOX" or new == "INBOX":
            raise MailboxError("Renaming INBOX is not supported", "CANNOT")
        if not self.exists(old):
            raise MailboxError("Mailbox does not exist", "NONEXISTENT")
        new_disk = self._creatable(new)
        if self.exists(new):
            raise MailboxError("Mailbox already exists", "ALREADYEXISTS")
        moves = [(name, new + name[len(old):]) for name in self.names()
                 if name == old or name.startswith(old + DELIMITER)]
        for _, target in moves:
            self._creatable(target)
        for source, target in moves:
            self._move(check_name(source), new_disk if source == old else check_name(target))
        self._follow_rename(dict(moves))

    def _follow_rename(self, moves: dict[str, str]) -> None:
        """A renamed subscribed folder stays subscribed under its new name; the old name stays too.

        RFC 3501 6.3.6: the server must not remove a subscription on its own, so the old name is
        kept (as Dovecot keeps it); adding the new one spares clients that do not resubscribe
        after RENAME from losing the folder from their view (clients that do, Thunderbird among
        them, UNSUBSCRIBE the old name themselves).
        """
        with _SUBSCRIPTIONS_LOCK:
            subscribed = self.subscriptions()
            added = {target for source, target in moves.items() if source in subscribed}
            if added - subscribed:
                self._save_subscriptions(subscribed | added)

    # ---- subscriptions ---------------------------------------------------------------------------------
    def _subscriptions_path(self) -> str:
        return os.path.join(self._meta_dir(), SUBSCRIPTIONS)

    def subscriptions(self) -> set[str]:
        try:
            with open(self._subscriptions_path(), encoding="utf-8") as handle:
                return {normalise(line) for line in handle.read().splitlines() if line}
        except OSError:
            return set()

    def _save_subscriptions(self, names: set[str]) -> None:
        """Replace the file, synced with its folder: nothing rebuilds a lost subscription, and OK was said."""
        make_dirs(self._meta_dir())
        replace_file(self._subscriptions_path(), "".join(f"{n}\n" for n in sorted(names)).encode("utf-8"))

    def subscribe(self, name: str) -> None:
        """Subscribe `name`, whether or not such a folder exists (RFC 3501 6.3.6 allows both)."""
        check_name(name)
        with _SUBSCRIPTIONS_LOCK:
            self._save_subscriptions(self.subscriptions() | {normalise(name)})

    def unsubscribe(self, name: str) -> None:
        with _SUBSCRIPTIONS_LOCK:
            self._save_subscriptions(self.subscriptions() - {normalise(name)})

    def ensure_special(self) -> None:
        """Create Drafts, Sent, Trash and Junk (subscribed) when missing; run at every login."""
        names = set(self.names())
        missing = [name for name in SPECIAL_USE if name not in names]
        for name in missing:
            self._make(check_name(name))
        if missing or not os.path.exists(self._subscriptions_path()):
            with _SUBSCRIPTIONS_LOCK:
                self._save_subscriptions(self.subscriptions() | set(missing) | {"INBOX"})
