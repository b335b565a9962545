"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA (refused), and NO [OVERQUOTA] for APPEND and COPY.

Each user has one quota root, named "" (as in RFC 9208's examples), holding every folder, with
one resource, STORAGE, in units of 1024 octets (store/quota.py says how usage is measured). A
user without a limit has no quota root: GETQUOTAROOT lists none, as RFC 9208 4.1.2 allows,
since a QUOTA response must name at least one limited resource. Quotas are the administrator's
(`[storage] quota`, `mailappliance user quota`, an LDAP attribute): SETQUOTA is refused and
QUOTASET is not advertised.

APPEND and COPY are checked before they run: the message (or the copied messages) must fit.
MOVE is never refused: it does not change the usage of the one quota root, and a full mailbox
must stay tidy-able (Thunderbird deletes by moving to Trash).

A session mixin: it comes before MailboxCommands and SelectedCommands in IMAPServer's bases, so
its APPEND and COPY wrap theirs (the parsers are taken from their tables, whatever they become).
"""
from __future__ import annotations

from typing import Any

from appliance import replies
from appliance.imap.mailboxes import MailboxCommands
from appliance.imap.parse import Arguments, quote_name
from appliance.imap.selected import SelectedCommands
from appliance.imap.view import SequenceError
from appliance.interfaces import UserRecord
from appliance.store.base import MailboxError
from appliance.store.quota import Quotas, Usage

ROOT = b""          # the one quota root of every user


def check_room(quotas: Quotas, record: UserRecord, account: Any, incoming: int) -> None:
    """Blocking: MailboxError [OVERQUOTA] when `incoming` more octets do not fit in the user's quota."""
    if not quotas.measure(record, account).fits(incoming):
        raise MailboxError(replies.IMAP_OVER_QUOTA.text, replies.IMAP_OVER_QUOTA.code)


def quota_line(usage: Usage) -> bytes:
    """`QUOTA "" (STORAGE used limit)` in KiB: usage rounded up, the limit down (never claims room it lacks)."""
    return b'QUOTA "" (STORAGE %d %d)' % ((usage.used + 1023) // 1024, usage.limit // 1024)


class QuotaCommands:
    """GETQUOTAROOT, GETQUOTA and SETQUOTA in the authenticated and selected states; APPEND/COPY checks."""

    factory: Any
    account: Any
    user_record: UserRecord | None
    view: Any
    folder: Any
    _reply: Any
    _fail: Any
    _run: Any
    _mailbox_names: Any
    sendUntaggedResponse: Any

    # ---- who and how much ---------------------------------------------------------------------------
    def _quota_limit(self) -> int:
        quotas, record = self.factory.quotas, self.user_record
        return quotas.limit(record) if quotas is not None and record is not None else 0

    # ---- GETQUOTAROOT, GETQUOTA, SETQUOTA (RFC 9208 4.1) -----------------------------------------------
    def do_GETQUOTAROOT(self, tag: bytes, name: bytes) -> None:
        names = self._mailbox_names(tag, name)
        if names is None:
            return
        mailbox, account, limited = names[0], self.account, bool(self._quota_limit())
        quotas, record = self.factory.quotas, self.user_record

        def look() -> Usage | None:
            if not account.exists(mailbox):
                raise MailboxError(replies.IMAP_NO_MAILBOX.text, "NONEXISTENT")
            return quotas.measure(record, account) if limited else None

        def answer(usage: Usage | None) -> None:
            self.sendUntaggedResponse(b"QUOTAROOT " + quote_name(mailbox) + (b' ""' if usage else b""))
            if usage is not None:
                self.sendUntaggedResponse(quota_line(usage))
            self._reply(tag, replies.IMAP_COMPLETED, command=b"GETQUOTAROOT")

        self._run(look).addCallbacks(answer, self._fail, errbackArgs=(tag,))

    auth_GETQUOTAROOT = select_GETQUOTAROOT = (do_GETQUOTAROOT, Arguments.arg_finalastring)

    def do_GETQUOTA(self, tag: bytes, root: bytes) -> None:
        if root != ROOT or not self._quota_limit():
            self._reply(tag, replies.IMAP_NO_QUOTA_ROOT)
            return
        quotas, record, account = self.factory.quotas, self.user_record, self.account

        def answer(usage: Usage) -> None:
            self.sendUntaggedResponse(quota_line(usage))
            self._reply(tag, replies.IMAP_COMPLETED, command=b"GETQUOTA")

        self._run(quotas.measure, record, account).addCallbacks(answer, self._fail, errbackArgs=(tag,))

    auth_GETQUOTA = select_GETQUOTA = (do_GETQUOTA, Arguments.arg_finalastring)

    def do_SETQUOTA(self, tag: bytes, line: bytes) -> None:
        self._reply(tag, replies.IMAP_QUOTA_SET_REFUSED)

    auth_SETQUOTA = select_SETQUOTA = (do_SETQUOTA, Arguments.arg_line)

    # ---- APPEND and COPY must fit (RFC 9208 4.3: NO [OVERQUOTA]) ------------------------------------------
    def do_APPEND(self, tag: bytes, *args: Any) -> None:
        append = super(QuotaCommands, self).do_APPEND  # type: ignore[misc]
        if not self._quota_limit():
            append(tag, *args)
            return
        message = args[-1]            # the literal (a file) is always the last argument
        message.seek(0, 2)
        size = message.tell()
        message.seek(0)
        d = self._run(check_room, self.factory.quotas, self.user_record, self.account, size)
        d.addCallbacks(lambda _: append(tag, *args), self._fail, errbackArgs=(tag,))

    auth_APPEND = select_APPEND = (do_APPEND, *MailboxCommands.auth_APPEND[1:])

    def do_COPY(self, tag: bytes, *args: Any, **options: Any) -> None:
        copy = super(QuotaCommands, self).do_COPY  # type: ignore[misc]
        if options.get("move") or not self._quota_limit():
            copy(tag, *args, **options)
            return
        folder, uid = self.folder, options.get("uid", args[2] if len(args) > 2 else 0)
        try:
            items = self.view.resolve(args[0], bool(uid))
        except SequenceError:
            copy(tag, *args, **options)         # COPY itself says what is wrong with the set
            return
        state = folder.state
        uids = [u for _, u in items if u in state.position]
        quotas, record, account = self.factory.quotas, self.user_record, self.account

        def check() -> None:
            check_room(quotas, record, account, sum(meta.size for meta in folder.meta(uids).values()))

        self._run(check).addCallbacks(lambda _: copy(tag, *args, **options), self._fail, errbackArgs=(tag,))

    select_COPY = (do_COPY, *SelectedCommands.select_COPY[1:])
