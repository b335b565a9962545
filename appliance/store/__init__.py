"""Mailbox stores (the write side): pick the format, map a user to a path, run writes off the reactor."""
from __future__ import annotations

import errno
import os
import re
from typing import TYPE_CHECKING

from twisted.internet import defer, threads
from zope.interface import implementer

from appliance import address
from appliance.errors import MailboxUnavailable
from appliance.interfaces import IMailStore, UserRecord

if TYPE_CHECKING:
    from appliance.config import StorageSection

_PLACEHOLDER = re.compile(r"\{(domain|local)\}")
_FORBIDDEN = ("/", "\\", "\0")


def _safe_part(part: str, what: str) -> str:
    """Lower-case one address part, refusing anything that could leave the mail tree."""
    part = part.lower()
    if not part or part.startswith(".") or any(c in part for c in _FORBIDDEN):
        raise ValueError(f"unsafe {what} for a mailbox path: {part!r}")
    return part


def mailbox_path(template: str, addr: str) -> str:
    """Fill `{domain}` and `{local}` of the template from the user's primary address.

    Both parts come from the directory, which may be LDAP: a crafted `../x` or `a/b` must never
    steer a write outside the tree, so such parts raise ValueError instead of being cleaned up.
    """
    local, domain = address.split(addr)
    parts = {"local": _safe_part(local, "local part"), "domain": _safe_part(domain, "domain")}
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], template)


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


Item = tuple[str, bytes, str]          # (mailbox path, wire-form message, envelope sender)


@implementer(IMailStore)
class FileStore:
    """What both formats share: the path template, and handing blocking writes to the pool.

    Deliveries asked for in the same reactor turn go to the pool as one batch: one thread
    hand-off instead of one per message, and a format can make the batch durable with fewer
    fsyncs (Maildir syncs each new/ folder once per batch).
    """

    def __init__(self, template: str, reactor, pool):
        self.template = template
        self.reactor = reactor
        self.pool = pool
        self._batch: list[tuple[Item, defer.Deferred]] = []

    def path_for(self, user: UserRecord) -> str:
        return mailbox_path(self.template, user.address)

    def deliver(self, user: UserRecord, message: bytes, sender: str) -> defer.Deferred:
        try:
            path = self.path_for(user)
        except ValueError:
            # Retried rather than bounced: the operator can still fix the directory entry.
            return defer.fail(MailboxUnavailable("unsafe mailbox name"))
        d: defer.Deferred = defer.Deferred()
        self._batch.append(((path, message, sender), d))
        if len(self._batch) == 1:
            self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        done = threads.deferToThreadPool(self.reactor, self.pool, self.write_batch, [item for item, _ in batch])
        done.addCallbacks(self._fire, self._fail_all, callbackArgs=(batch,), errbackArgs=(batch,))

    @staticmethod
    def _fire(outcomes: list[object], batch: list[tuple[Item, defer.Deferred]]) -> None:
        for outcome, (_, d) in zip(outcomes, batch):
            if isinstance(outcome, BaseException):
                d.errback(outcome)
            else:
                d.callback(outcome)

    @staticmethod
    def _fail_all(failure: object, batch: list[tuple[Item, defer.Deferred]]) -> None:
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

    def open_maildrop(self, path: str) -> defer.Deferred:
        """Deferred[Maildrop]: POP3's snapshot of the mailbox at `path`, scanned in the pool."""
        from appliance.maildrop import format_for, open_maildrop
        return open_maildrop(format_for(self), path, self.reactor, self.pool)

    def open_account(self, path: str) -> defer.Deferred:
        """Deferred[Account]: IMAP's folders of the mailbox at `path`, special-use ones made, in the pool."""
        from appliance.mailbox.account import open_account
        from appliance.store.mbox import MboxStore

        def open_now():
            account = open_account("mbox" if isinstance(self, MboxStore) else "maildir", path)
            account.ensure_special()
            return account
        return threads.deferToThreadPool(self.reactor, self.pool, open_now)


def make_store(storage: StorageSection, reactor, pool) -> IMailStore:
    """The store for `[storage] format`; the config loader has already refused unknown formats."""
    from appliance.store.maildir import MaildirStore
    from appliance.store.mbox import MboxStore

    stores = {"maildir": MaildirStore, "mbox": MboxStore}
    if storage.format not in stores:
        raise ValueError(f"unknown storage format: {storage.format!r}")
    return stores[storage.format](storage.path, reactor, pool)
