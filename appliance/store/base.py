"""What every mailbox format shares: the path template, the value types IMAP and POP3 read, and the
write-side base class that hands blocking writes to the pool."""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, ClassVar

from twisted.internet import defer, threads
from zope.interface import implementer

from appliance import address
from appliance.errors import MailboxUnavailable
from appliance.interfaces import IMailStore, UserRecord
from appliance.store.pop3view import open_maildrop

if TYPE_CHECKING:
    from appliance.store.account import Account

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class MailboxError(Exception):
    """A refusal the client may read (NO); its text never holds paths or exception details."""

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.code = code            # an RFC 5530 response code such as "NONEXISTENT", or ""


@dataclass(frozen=True)
class Meta:
    """What FETCH needs without opening the message file; cached in the folder's index."""

    size: int                 # RFC822.SIZE: octets in CRLF form
    internaldate: float       # seconds since the epoch
    envelope: bytes           # the ENVELOPE response, ready to send
    bodystructure: bytes | None = None   # the extended BODYSTRUCTURE response, ready to send; None until asked


@dataclass(frozen=True)
class Snapshot:
    """A folder's messages at one moment, in UID order; shared read-only between sessions."""

    uidvalidity: int
    uidnext: int
    uids: tuple[int, ...] = ()
    flags: tuple[frozenset[str], ...] = ()
    fresh: frozenset[int] = frozenset()      # UIDs nobody has claimed as \\Recent yet
    position: dict[int, int] = field(default_factory=dict, compare=False)   # uid -> index
    keywords: tuple[str, ...] = ()           # the folder's keywords (FLAGS, PERMANENTFLAGS), store/keywords.py
    keywords_full: bool = False              # no letter left for a new keyword: no \\* in PERMANENTFLAGS
    modseqs: tuple[int, ...] = ()             # RFC 7162 MODSEQ of each message, in UID order (store/modseq.py)
    highestmodseq: int = 0

    @classmethod
    def build(cls, uidvalidity: int, uidnext: int, messages: list[tuple[int, frozenset[str]]],
              fresh: frozenset[int] = frozenset(), keywords: tuple[str, ...] = (),
              keywords_full: bool = False, modseqs: dict[int, int] | None = None,
              highestmodseq: int = 0) -> "Snapshot":
        messages.sort()
        uids = tuple(uid for uid, _ in messages)
        known = modseqs or {}
        return cls(uidvalidity, uidnext, uids, tuple(flags for _, flags in messages), fresh,
                   {uid: i for i, uid in enumerate(uids)}, keywords, keywords_full,
                   modseqs=tuple(map(known.get, uids, repeat(0))), highestmodseq=highestmodseq)

    def flags_of(self, uid: int) -> frozenset[str]:
        return self.flags[self.position[uid]]

    def modseq_of(self, uid: int) -> int:
        return self.modseqs[self.position[uid]] if self.modseqs else 0

_PLACEHOLDER = re.compile(r"\{(domain|local)\}")
_FORBIDDEN = ("/", "\\", "\0")


def _safe_part(part: str, what: str) -> str:
    """Lower-case one address part, refusing anything that could leave the mail tree."""
    part = part.lower()
    if not part or part.startswith(".") or any(c in part for c in _FORBIDDEN):
        raise ValueError(f"unsafe {what} for a mailbox path: {part!r}")
    return part


def mailbox_path(template: str, addr: str, side_files: re.Pattern[str] | None = None) -> str:
    """Fill `{domain}` and `{local}` of the template from the user's primary address.

    Both parts come from the directory, which may be LDAP: a crafted `../x` or `a/b` must never
    steer a write outside the tree, so such parts raise ValueError instead of being cleaned up.

    `side_files` is the format's pattern of the names it keeps NEXT TO a mailbox (mbox:
    `<mbox>.lock`, `<mbox>.imap/`, `<mbox>.folders/`, see store/mbox.py SIDE_FILE). A path
    component that a placeholder helped to fill and that matches it raises ValueError: otherwise
    the mailbox of user `bob.lock` would be the dot-lock of `bob`'s, and a delivery to `bob`
    would delete it as a stale lock. Since no part may hold a "/", every mailbox path has the
    template's depth, so a side file can only be met in a component the template fills: checking
    those components is enough, whatever the template (`{local}`, `{local}@{domain}`, ...).
    """
    local, domain = address.split(addr)
    parts = {"local": _safe_part(local, "local part"), "domain": _safe_part(domain, "domain")}
    path = _PLACEHOLDER.sub(lambda m: parts[m.group(1)], template)
    if side_files is not None:
        for pattern, component in zip(template.split("/"), path.split("/")):
            if _PLACEHOLDER.search(pattern) and side_files.search(component):
                raise ValueError(f"mailbox name {component!r} is reserved for another mailbox's side file")
    return path


def make_dirs(path: str) -> None:
    """Create `path` and every missing parent with mode 0700 (os.makedirs leaves parents at 0777-umask)."""
    if not path or os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path:
        make_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from None


def unavailable(what: str, exc: OSError) -> MailboxUnavailable:
    """A short, path-free reason for the log and the retry: `what: ENOSPC`."""
    name = errno.errorcode.get(exc.errno, "error") if exc.errno else type(exc).__name__
    return MailboxUnavailable(f"{what}: {name}")


Item = tuple[str, bytes, str]          # (mailbox or folder path to write, wire-form message, envelope sender)


@dataclass(frozen=True)
class Delivery:
    """One message waiting in a batch for the pool: whose mailbox, and which folder of it."""

    path: str                     # the user's mailbox (INBOX)
    message: bytes
    sender: str
    folder: str = ""              # "" = INBOX; else used when it exists (Junk)
    fallback: bytes | None = None  # what INBOX gets instead when the folder does not exist


@implementer(IMailStore)
class FileStore:
    """What both formats share: the path template, and handing blocking writes to the pool.

    Deliveries asked for in the same reactor turn go to the pool in a few jobs (see _jobs): a
    thread hand-off per job instead of one per message, different mailboxes written in parallel,
    and a format can make a job durable with fewer fsyncs (Maildir syncs each new/ folder once
    per job).
    """

    account_class: ClassVar[type["Account"]]     # the format's Account (set by each format's store)
    side_files: ClassVar[re.Pattern[str] | None] = None   # names the format keeps beside a mailbox
    serial_mailbox: ClassVar[bool] = True    # deliveries to one mailbox must be written one after another

    def __init__(self, template: str, reactor, pool, writers=None):
        self.template = template
        self.reactor = reactor
        self.pool = pool
        # Where deliveries are written: appliance.jobthreads.JobThreads in the daemon (a job
        # costs the reactor one C call, not Twisted's pool coordinator); `pool` otherwise.
        self.writers = writers if writers is not None else pool
        self._batch: list[tuple[Delivery, defer.Deferred]] = []    # waiting for a writer
        self._writing = 0                                          # jobs handed to the writers, not back yet

    def path_for(self, user: UserRecord) -> str:
        """The user's mailbox; ValueError for a name that is unsafe or another mailbox's side file."""
        return mailbox_path(self.template, user.address, self.side_files)

    def account(self, path: str) -> "Account":
        """The folders of the mailbox at `path` (for IMAP). Cheap: nothing is read until asked."""
        return self.account_class(path)

    def open_maildrop(self, path: str) -> defer.Deferred:
        """Deferred[Maildrop]: a POP3 session's snapshot of the INBOX at `path`, scanned in the pool.

        The snapshot is taken from the same Folder object IMAP uses, so both protocols see the
        same messages in the same (UID) order; it needs no MIME parsing and no metadata index.
        """
        return open_maildrop(self.account(path), self.reactor, self.pool)

    def open_account(self, path: str) -> defer.Deferred:
        """Deferred[Account]: an IMAP login's folders, with the special-use ones made on first login
        (that touches the disk, so it runs in the pool)."""
        def open_now() -> "Account":
            account = self.account(path)
            account.ensure_special()
            return account
        return threads.deferToThreadPool(self.reactor, self.pool, open_now)

    def deliver(self, user: UserRecord, message: bytes, sender: str, folder: str = "",
                fallback: bytes | None = None) -> defer.Deferred:
        """Deferred[str]: the path written. `folder` (Junk) is used when the user has it; otherwise
        the message goes to INBOX, as `fallback` when given (a copy marked for POP3 users)."""
        try:
            path = self.path_for(user)
        except ValueError:
            # Retried rather than bounced: the operator can still fix the directory entry.
            return defer.fail(MailboxUnavailable("unsafe mailbox name"))
        d: defer.Deferred = defer.Deferred()
        self._batch.append((Delivery(path, message, sender, folder, fallback), d))
        if len(self._batch) == 1:
            self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """Hand the waiting deliveries to the writers, at most one job per idle writer thread.

        While every writer is busy the deliveries wait here, and the first job to finish takes
        them all along (group commit, as the queue's writer does): under load a job holds
        several messages and fsyncs their new/ folder once, where one job per message queued
        behind the others' fsyncs and paid a folder fsync and two thread hand-offs each.
        """
        idle = getattr(self.writers, "max", 1) - self._writing
        if idle <= 0 or not self._batch:
            return
        batch, self._batch = self._batch, []
        for job in self._jobs(batch, idle):
            self._writing += 1
            done = threads.deferToThreadPool(self.reactor, self.writers, self._write_all, [item for item, _ in job])
            done.addCallbacks(self._fire, self._fail_all, callbackArgs=(job,), errbackArgs=(job,))
            done.addBoth(self._written)

    def _written(self, _: object) -> None:
        """A job is over: the deliveries that waited for a writer go now."""
        self._writing -= 1
        self._flush()

    def _jobs(self, batch: list[tuple[Delivery, defer.Deferred]], idle: int) -> list[list[tuple[Delivery, defer.Deferred]]]:
        """Cut the waiting deliveries into jobs, so the `idle` writer threads sync at once.

        One job for the whole turn left all but one disk thread idle while each message's fsync
        waited for the one before it. Deliveries to one mailbox stay in one job when the format
        must append them one after another (`serial_mailbox`, mbox); a Maildir's deliveries are
        independent files, so they are cut into as many jobs as there are idle writers, a mailbox's
        messages kept side by side so each job still syncs a new/ folder once for several.
        """
        by_mailbox: dict[str, list[tuple[Delivery, defer.Deferred]]] = {}
        for entry in batch:
            by_mailbox.setdefault(entry[0].path, []).append(entry)
        if self.serial_mailbox:
            return list(by_mailbox.values())
        ordered = [entry for group in by_mailbox.values() for entry in group]
        count = max(1, min(len(ordered), idle))
        size, extra = divmod(len(ordered), count)
        jobs, start = [], 0
        for index in range(count):
            end = start + size + (1 if index < extra else 0)
            jobs.append(ordered[start:end])
            start = end
        return jobs

    def _write_all(self, deliveries: list[Delivery]) -> list[object]:
        """Blocking: find each delivery's folder, then write them as one batch of the format."""
        placed = [self._place(delivery) for delivery in deliveries]
        written = iter(self.write_batch([item for item in placed if not isinstance(item, BaseException)]))
        outcomes = [item if isinstance(item, BaseException) else next(written) for item in placed]
        folders = [item[0] for item, outcome in zip(placed, outcomes) if not isinstance(outcome, BaseException)]
        folders = self.account_class.open_among(folders)
        if folders:
            self.reactor.callFromThread(self._tell_folders, folders)
        return outcomes

    def _tell_folders(self, paths: list[str]) -> None:
        """After a batch (its senders' replies are not held up): rescan the folders sessions have open."""
        d = threads.deferToThreadPool(self.reactor, self.pool, self.account_class.refresh_open, paths)
        d.addErrback(lambda failure: None)        # a failed rescan is retried by the next poll or command

    def _place(self, delivery: Delivery) -> Item | MailboxUnavailable:
        """Blocking: the (path, message, sender) to write: the folder's own file when the user has it.

        The folder is looked up at every delivery, not remembered: the user makes Junk by logging
        in over IMAP once (Account.ensure_special), and may delete it again.
        """
        if not delivery.folder:
            return delivery.path, delivery.message, delivery.sender
        try:
            account = self.account(delivery.path)
            if account.exists(delivery.folder):
                return account.delivery_path(delivery.folder), delivery.message, delivery.sender
        except OSError as exc:
            return unavailable("folder lookup failed", exc)
        message = delivery.message if delivery.fallback is None else delivery.fallback
        return delivery.path, message, delivery.sender

    @staticmethod
    def _fire(outcomes: list[object], batch: list[tuple[Delivery, defer.Deferred]]) -> None:
        for outcome, (_, d) in zip(outcomes, batch):
            if isinstance(outcome, BaseException):
                d.errback(outcome)
            else:
                d.callback(outcome)

    @staticmethod
    def _fail_all(failure: object, batch: list[tuple[Delivery, defer.Deferred]]) -> None:
        for _, d in batch:
            d.errback(failure)

    def write_batch(self, items: list[Item]) -> list[object]:
        """Blocking: store each item; the path written, or the exception, for each."""
        outcomes: list[object] = []
        for path, message, sender in items:
            try:
                outcomes.append(self.write(path, message, sender))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def write(self, path: str, message: bytes, sender: str) -> str:
        """Blocking: store one wire-form message at `path`; runs in a worker thread."""
        raise NotImplementedError
