"""The POP3 view of a mailbox: a session's snapshot of the INBOX folder, its messages in wire form, deletions.

A POP3 session sees its maildrop as it was at login (RFC 1939 numbers messages for the whole
session), so mail delivered meanwhile waits for the next session and never shifts the numbers.
The snapshot is taken from the same Folder object IMAP uses (store/folder.py), so POP3 and IMAP
list the same messages, in UID order; this module knows no storage format. `Maildrop` is the
reactor-side session object; the blocking parts run in the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer, threads
from zope.interface import implementer

from appliance.interfaces import IMaildrop
from appliance.mime import crlf as to_wire, wire_size

if TYPE_CHECKING:
    from appliance.store.account import Account
    from appliance.store.folder import Folder

__all__ = ["Entry", "FolderSource", "Maildrop", "MessageGone", "NoSuchMessage", "open_maildrop", "to_wire",
           "wire_size"]


class MessageGone(Exception):
    """The message of the snapshot is no longer there (another session or program removed it)."""


class NoSuchMessage(Exception):
    """A message number outside the snapshot, or one marked deleted (RFC 1939: -ERR no such message)."""


@dataclass(frozen=True)
class Entry:
    """One message of a snapshot. `where` is the source's own locator (for a folder: the IMAP UID)."""

    uid: str         # the UIDL: stable across sessions and restarts
    size: int        # octets of the CRLF form, the exact size RFC 1939 LIST and STAT report
    where: Any


class Source(Protocol):
    """Blocking operations behind a Maildrop; all run in a worker thread."""

    def scan(self, path: str) -> list[Entry]: ...

    def read(self, path: str, entry: Entry) -> bytes: ...

    def expunge(self, path: str, entries: list[Entry]) -> None: ...


class FolderSource:
    """A Maildrop's source over one Folder: listing, reading and removing by UID."""

    def __init__(self, folder: "Folder") -> None:
        self.folder = folder

    def scan(self, path: str = "") -> list[Entry]:
        return [Entry(uidl, size, uid) for uid, uidl, size in self.folder.pop3_listing()]

    def read(self, path: str, entry: Entry) -> bytes:
        try:
            return self.folder.read(entry.where)
        except (KeyError, FileNotFoundError):
            raise MessageGone(entry.uid) from None

    def expunge(self, path: str, entries: list[Entry]) -> None:
        """Remove by UID: a message flagged or moved to cur/ by another reader is still the one removed."""
        self.folder.expunge([entry.where for entry in entries])


@implementer(IMaildrop)
class Maildrop:
    """One POP3 session's view of a maildrop: the snapshot taken at login and the deletion marks.

    Message numbers are 0-based here; the protocol adds one. Only `read` and `commit` touch the
    disk, in the pool; everything else answers from the snapshot.
    """

    def __init__(self, source: Source, path: str, entries: list[Entry], reactor: Any, pool: Any) -> None:
        self._source = source
        self._path = path
        self._entries = entries
        self._deleted: set[int] = set()
        self._reactor = reactor
        self._pool = pool

    def count(self) -> int:
        """Messages not marked deleted, as STAT reports them."""
        return len(self._entries) - len(self._deleted)

    def octets(self) -> int:
        return sum(entry.size for n, entry in enumerate(self._entries) if n not in self._deleted)

    def live(self) -> list[tuple[int, Entry]]:
        """(number, entry) of every message not marked deleted, for LIST and UIDL without argument."""
        return [(n, entry) for n, entry in enumerate(self._entries) if n not in self._deleted]

    def entry(self, n: int) -> Entry:
        """The message `n`; NoSuchMessage when out of range or marked deleted."""
        if not 0 <= n < len(self._entries) or n in self._deleted:
            raise NoSuchMessage(n)
        return self._entries[n]

    def delete(self, n: int) -> None:
        self.entry(n)
        self._deleted.add(n)

    def undelete_all(self) -> None:
        self._deleted.clear()

    def read(self, n: int) -> defer.Deferred:
        """Deferred[bytes]: message `n` in CRLF form, not yet byte-stuffed."""
        try:
            entry = self.entry(n)
        except NoSuchMessage:
            return defer.fail()
        return threads.deferToThreadPool(self._reactor, self._pool, self._source.read, self._path, entry)

    def commit(self) -> defer.Deferred:
        """Deferred[None]: remove the messages marked deleted (the UPDATE state of RFC 1939)."""
        doomed = [self._entries[n] for n in sorted(self._deleted)]
        if not doomed:
            return defer.succeed(None)
        return threads.deferToThreadPool(self._reactor, self._pool, self._source.expunge, self._path, doomed)


def _scan_inbox(account: "Account") -> tuple[FolderSource, list[Entry]]:
    source = FolderSource(account.folder("INBOX"))
    return source, source.scan()


def open_maildrop(account: "Account", reactor: Any, pool: Any) -> defer.Deferred:
    """Deferred[Maildrop]: the snapshot of the account's INBOX, scanned in the pool."""
    d = threads.deferToThreadPool(reactor, pool, _scan_inbox, account)
    return d.addCallback(lambda found: Maildrop(found[0], account.root, found[1], reactor, pool))
