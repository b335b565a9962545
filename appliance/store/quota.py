"""Per-user storage quotas (RFC 9208 STORAGE): whose limit applies, how much a mailbox uses, and "is there room".

The limit is the user's own (the users file's `quota=` field, or the LDAP quota attribute) or
else `[storage] quota`; 0 is unlimited, the default, as in Dovecot without a quota plugin.

Usage is the space the user's folders take on disk, every folder counted (INBOX, Junk, Trash,
...): what RFC 9208 5.1 calls the "physical space estimate" of the quota root. It is read off
what is already there, never by reading messages:
- Maildir: each message file's name carries its size (`,S=<octets>`, written by our delivery and
  by Dovecot's); a name without one costs one stat, remembered. A folder is listed again only
  when its new/ or cur/ directory changed (their mtimes), so a check on a quiet mailbox is two
  stats per folder, and a delivery costs one listing of the folder it changed.
- mbox: the size of each folder's file, one stat.
(The metadata index of store/index.py holds CRLF sizes only of messages a client has fetched,
so it cannot give a total without reading the rest; file names and file sizes always can.)

Quotas are soft by nature here, as in Dovecot: two deliveries checked at the same moment may
both fit and together pass the limit by one message. Nothing is ever lost over quota: SMTP
answers 452 4.2.2 at RCPT (the sender retries), the queue defers a delivery to a full mailbox
(MailboxFull is a temporary failure; it bounces only when the queue lifetime ends), and IMAP
answers APPEND and COPY with NO [OVERQUOTA] (imap/quota.py).
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, threads

from appliance import maillog, replies
from appliance.aliases import is_command_or_file
from appliance.errors import TemporaryFailure
from appliance.interfaces import UserRecord
from appliance.replies import SMTPReplyError

_SIZE_IN_NAME = re.compile(r",S=([0-9]{1,18})(?:[,:]|$)")
MAX_REMEMBERED = 1000      # users whose last measured usage is kept for `status` (the fullest ones)
MAX_FOLDERS = 10000        # Maildir folders whose sizes are remembered (least recently checked forgotten)
NEARLY_FULL = 0.9          # `status` lists mailboxes at or above this share of their limit


class MailboxFull(TemporaryFailure):
    """Over quota at delivery: temporary (RFC 3463 4.2.2), so the queue keeps the message and retries."""

    status = "4.2.2"


@dataclass(frozen=True)
class Usage:
    """One mailbox's usage and limit, in octets; limit 0 = unlimited."""

    used: int
    limit: int

    def fits(self, incoming: int) -> bool:
        return not self.limit or self.used + incoming <= self.limit

    @property
    def share(self) -> float:
        return self.used / self.limit if self.limit else 0.0


# ---- measuring (blocking: worker threads or the CLI) ------------------------------------------------
@dataclass
class _MaildirSizes:
    stamp: tuple[int, ...]
    total: int
    unnamed: dict[str, int]          # message key -> size, for names without S= (stat once)


class UsageMeter:
    """The space each folder takes, remembered per Maildir folder until its directories change.

    Thread-safe: deliveries and IMAP sessions measure from several pool threads at once. At most
    MAX_FOLDERS folders are remembered (a few hundred bytes each): a forgotten one is listed again.
    """

    def __init__(self, max_folders: int = MAX_FOLDERS) -> None:
        self._maildirs: OrderedDict[str, _MaildirSizes] = OrderedDict()
        self._max_folders = max_folders
        self._guard = threading.Lock()

    def mailbox(self, account: Any) -> int:
        """Octets used by every folder of `account` (a store Account); a folder that vanished counts 0."""
        mbox = _is_mbox(account)
        total = 0
        for name in account.names():
            path = account.delivery_path(name)
            total += _file_size(path) if mbox else self._maildir(path)
        return total

    def _maildir(self, path: str) -> int:
        stamp = _dir_stamp(path)
        with self._guard:
            known = self._maildirs.get(path)
            if known is not None:
                self._maildirs.move_to_end(path)
        if known is not None and known.stamp == stamp:
            return known.total
        previous = known.unnamed if known is not None else {}
        total, unnamed = 0, {}
        for sub in ("new", "cur"):
            folder = os.path.join(path, sub)
            for name in _names(folder):
                size, key = _size_from_name(name)
                if size is None:
                    size = previous.get(key)
                    if size is None:
                        size = _file_size(os.path.join(folder, name))
                    unnamed[key] = size
                total += size
        with self._guard:
            self._maildirs[path] = _MaildirSizes(stamp, total, unnamed)
            self._maildirs.move_to_end(path)
            while len(self._maildirs) > self._max_folders:
                self._maildirs.popitem(last=False)
        return total


def _is_mbox(account: Any) -> bool:
    from appliance.store.mbox import MboxAccount
    return isinstance(account, MboxAccount)


def _dir_stamp(path: str) -> tuple[int, ...]:
    stamp: list[int] = []
    for sub in ("new", "cur"):
        try:
            info = os.stat(os.path.join(path, sub))
            stamp += [info.st_mtime_ns, info.st_ino, info.st_size]
        except OSError:
            stamp += [0, 0, 0]
    return tuple(stamp)


def _names(folder: str) -> list[str]:
    try:
        return [name for name in os.listdir(folder) if not name.startswith(".")]
    except OSError:
        return []


def _size_from_name(name: str) -> tuple[int | None, str]:
    """(the S= size in a Maildir name or None, the message key: the name up to `:`)."""
    key = name.partition(":")[0]
    match = _SIZE_IN_NAME.search(key + ":")
    return (int(match.group(1)) if match else None), key


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# ---- the policy: limits, checks, what status reports ------------------------------------------------
class Quotas:
    """Limits and usage for the whole process: the local courier, the SMTP policies and IMAP ask here.

    `default` is `[storage] quota` (a reload may change it). Measuring runs in `pool`.
    """

    def __init__(self, store: Any, default: int, reactor: Any, pool: Any) -> None:
        self.store = store
        self.default = default
        self.reactor = reactor
        self.pool = pool
        self.meter = UsageMeter()
        self._measured: OrderedDict[str, Usage] = OrderedDict()
        self._measured_guard = threading.Lock()

    def limit(self, user: UserRecord) -> int:
        """The user's own limit when the directory has one, else the default; 0 = unlimited."""
        return self.default if user.quota is None else user.quota

    def measure(self, user: UserRecord, account: Any | None = None) -> Usage:
        """Blocking: the user's usage now (remembered for `status` when nearly full)."""
        if account is None:
            account = self.store.account(self.store.path_for(user))
        usage = Usage(self.meter.mailbox(account), self.limit(user))
        self._remember(user.address, usage)
        return usage

    def usage(self, user: UserRecord) -> defer.Deferred:
        """Deferred[Usage], measured in the pool."""
        return threads.deferToThreadPool(self.reactor, self.pool, self.measure, user)

    def admit(self, user: UserRecord, incoming: int) -> defer.Deferred:
        """Deferred[None] when `incoming` more octets fit; fails with MailboxFull when they do not."""
        if not self.limit(user):
            return defer.succeed(None)
        try:
            self.store.path_for(user)
        except ValueError:
            return defer.succeed(None)      # no mailbox for such a name: the store refuses it, with its reason
        d = self.usage(user)
        d.addCallback(self._admitted, user, incoming)
        return d

    @staticmethod
    def _admitted(usage: Usage, user: UserRecord, incoming: int) -> None:
        if not usage.fits(incoming):
            maillog.emit("over-quota", user=user.address, used=usage.used, limit=usage.limit, size=incoming,
                         stage="delivery")
            raise MailboxFull("4.2.2", "mailbox full")

    def admit_recipients(self, recipients: list, directory: Any, declared: int = 0) -> Any:
        """RCPT: 452 4.2.2 when the address is one local user whose mailbox cannot take the message.

        `declared` is MAIL's SIZE= (RFC 1870; smtplib, Postfix and Exim send it): the message must
        fit. Without it, only a mailbox already at its limit is refused, and a message that then
        turns out too big waits in the queue. Only a RCPT naming one mailbox is refused: a list
        with one full member is accepted, and that member's copy waits in the queue, so the
        others get theirs at once. Plain callbacks, not a generator: this runs for every RCPT.
        """
        mailboxes = [r for r in recipients if r.local and not is_command_or_file(r.address)]
        if len(recipients) != 1 or len(mailboxes) != 1:
            return defer.succeed(recipients)
        d = directory.lookup(mailboxes[0].address)
        d.addCallback(self._admit_user, recipients, declared)
        return d

    def _admit_user(self, user: UserRecord | None, recipients: list, declared: int) -> Any:
        if user is None or not self.limit(user):
            return recipients
        d = self.usage(user)
        d.addCallbacks(self._fits_declared, self._unmeasured, (user, recipients, declared), None, (recipients,))
        return d

    @staticmethod
    def _unmeasured(failure: Any, recipients: list) -> Any:
        """The queue's delivery will tell; RCPT is no place to fail on it."""
        failure.trap(OSError, ValueError)
        return recipients

    @staticmethod
    def _fits_declared(usage: Usage, user: UserRecord, recipients: list, declared: int) -> list:
        if not usage.fits(max(declared, 1)):
            maillog.emit("over-quota", user=user.address, used=usage.used, limit=usage.limit, size=declared,
                         stage="rcpt")
            raise SMTPReplyError(replies.MAILBOX_FULL)
        return recipients

    # ---- what `status` shows ----------------------------------------------------------------------
    def _remember(self, address: str, usage: Usage) -> None:
        with self._measured_guard:
            self._measured.pop(address, None)
            if usage.limit and usage.share >= NEARLY_FULL:
                self._measured[address] = usage
                while len(self._measured) > MAX_REMEMBERED:
                    self._measured.popitem(last=False)

    def nearly_full(self) -> list[tuple[str, Usage]]:
        """Mailboxes at 90% of their limit or more, as last measured (at a delivery or an IMAP command)."""
        with self._measured_guard:
            return sorted(self._measured.items(), key=lambda item: -item[1].share)
