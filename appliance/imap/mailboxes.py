"""Mailbox management in the authenticated and selected states: CREATE to STATUS, APPEND, NAMESPACE.

RFC 3501 6.3 and RFC 2342; every command names folders, none needs one selected. The account
does the blocking work in the disk pool; names arrive in modified UTF-7 and leave quoted.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from appliance import replies
from appliance.imap.backend import DELIMITER, SYSTEM_FLAGS, Account, MailboxError, normalise
from appliance.imap.parse import Arguments, mailbox_name, quote_name

STATUS_ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN",
                b"HIGHESTMODSEQ")                                        # RFC 7162 3.1.7


def list_matcher(pattern: str) -> Callable[[str], bool]:
    """RFC 3501 6.3.8: `*` matches anything, `%` anything but the hierarchy delimiter, the rest itself.

    The whole name must match, case-sensitively; only INBOX is matched in any case (RFC 3501 5.1).
    """
    regex = "".join(".*" if char == "*" else "[^" + re.escape(DELIMITER) + "]*" if char == "%" else re.escape(char)
                    for char in pattern)
    exact, folded = re.compile(regex, re.S), re.compile(regex, re.S | re.I)
    return lambda name: bool((folded if name == "INBOX" else exact).fullmatch(name))


class MailboxCommands:
    """CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST, LSUB, STATUS, APPEND, NAMESPACE; a session mixin."""

    account: Account | None
    folder: Any
    state: str
    _selected_name: str

    def do_NAMESPACE(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b'NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')
        self._completed(tag, b"NAMESPACE")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)

    def _account_call(self, tag: bytes, method: str, *names: bytes) -> None:
        """Run `account.<method>(*names)` in the pool and answer `<METHOD> completed` or the refusal."""
        args = self._mailbox_names(tag, *names)
        if args is None:
            return
        d = self._run(getattr(self.account, method), *args)
        d.addCallbacks(lambda _: self._completed(tag, method.upper().encode()), self._fail, errbackArgs=(tag,))

    def do_CREATE(self, tag: bytes, name: bytes) -> None:
        self._account_call(tag, "create", name.rstrip(DELIMITER.encode()))

    def do_DELETE(self, tag: bytes, name: bytes) -> None:
        if self.folder is not None and normalise(name.decode("imap4-utf-7", "replace")) == self._selected_name:
            self._leave_folder()
            self.state = "auth"
        self._account_call(tag, "delete", name)

    def do_RENAME(self, tag: bytes, old: bytes, new: bytes) -> None:
        self._account_call(tag, "rename", old, new)

    def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._account_call(tag, "subscribe", name)

    def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._account_call(tag, "unsubscribe", name)

    auth_CREATE = select_CREATE = (do_CREATE, Arguments.arg_finalastring)
    auth_DELETE = select_DELETE = (do_DELETE, Arguments.arg_finalastring)
    auth_RENAME = select_RENAME = (do_RENAME, Arguments.arg_astring, Arguments.arg_finalastring)
    auth_SUBSCRIBE = select_SUBSCRIBE = (do_SUBSCRIBE, Arguments.arg_finalastring)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (do_UNSUBSCRIBE, Arguments.arg_finalastring)

    def do_LIST(self, tag: bytes, reference: bytes, pattern: bytes, command: bytes) -> None:
        try:
            ref, pat = mailbox_name(reference) if reference else "", mailbox_name(pattern) if pattern else ""
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return
        d = self._run(self._list, ref, pat, command == b"LSUB")
        d.addCallback(self._listed, tag, command)
        d.addErrback(self._fail, tag)

    auth_LIST = select_LIST = (do_LIST, Arguments.arg_astring, Arguments.arg_finalastring, b"LIST")
    auth_LSUB = select_LSUB = (do_LIST, Arguments.arg_astring, Arguments.arg_finalastring, b"LSUB")

    def _list(self, reference: str, pattern: str, subscribed_only: bool) -> list[tuple[list[str], str]]:
        """Blocking: (attributes, name) of the folders matching reference+pattern (RFC 3501 6.3.8)."""
        account = self.account
        assert account is not None
        if not pattern:
            return [(["\\Noselect"], "")]
        matches = list_matcher(reference + pattern)
        names = account.names()
        chosen = account.subscriptions() if subscribed_only else set(names)
        found: list[tuple[list[str], str]] = []
        shown: set[str] = set()
        for name in names:
            if name not in chosen:
                continue
            if pattern.endswith("%"):
                found += [(["\\Noselect", "\\HasChildren"], level) for level in _levels(name, chosen, shown)
                          if matches(level)]
            if matches(name):
                attributes = ["\\HasChildren" if account.has_children(name) else "\\HasNoChildren"]
                special = account.special_use(name)
                if special:
                    attributes.append(special)
                found.append((attributes, name))
        return found

    def _listed(self, found: list[tuple[list[str], str]], tag: bytes, command: bytes) -> None:
        for attributes, name in found:
            self.sendUntaggedResponse(b"%b (%b) \"%b\" %b" % (command, " ".join(attributes).encode(),
                                                             DELIMITER.encode(), quote_name(name)))
        self._completed(tag, command)

    def do_STATUS(self, tag: bytes, name: bytes, items: list[bytes]) -> None:
        wanted = [item.upper() for item in items if isinstance(item, bytes)]
        if not wanted or any(w not in STATUS_ITEMS for w in wanted):
            self._reply(tag, replies.IMAP_BAD_STATUS_ITEMS)
            return
        names = self._mailbox_names(tag, name)
        if names is None:
            return
        folder_name, account = names[0], self.account
        assert account is not None
        self._modseq_status(wanted)
        d = self._run(lambda: account.folder(folder_name).refresh())
        d.addCallback(self._status, tag, folder_name, wanted)
        d.addErrback(self._fail, tag)

    auth_STATUS = select_STATUS = (do_STATUS, Arguments.arg_astring, Arguments.arg_plist)

    def _status(self, snapshot: Any, tag: bytes, name: str, wanted: list[bytes]) -> None:
        values = {b"MESSAGES": len(snapshot.uids), b"RECENT": len(snapshot.fresh), b"UIDNEXT": snapshot.uidnext,
                  b"UIDVALIDITY": snapshot.uidvalidity,
                  b"UNSEEN": sum(1 for flags in snapshot.flags if "\\Seen" not in flags),
                  b"HIGHESTMODSEQ": snapshot.highestmodseq}
        body = b" ".join(b"%b %d" % (w, values[w]) for w in wanted)
        self.sendUntaggedResponse(b"STATUS " + quote_name(name) + b" (" + body + b")")
        self._completed(tag, b"STATUS")

    def do_APPEND(self, tag: bytes, name: bytes, flags_date: tuple, message: Any) -> None:
        flags, date = flags_date
        data = message.read()
        names = self._mailbox_names(tag, name)
        if names is None:
            return
        folder_name, account = names[0], self.account
        assert account is not None

        def append() -> tuple[int, int]:
            if not account.exists(folder_name):
                raise MailboxError(replies.IMAP_NO_MAILBOX.text, replies.IMAP_NO_MAILBOX.code)
            folder = account.folder(folder_name)
            uid = folder.append(data, frozenset(f for f in flags if f in SYSTEM_FLAGS), date)
            return folder.state.uidvalidity, uid

        d = self._run(append)
        d.addCallback(lambda result: self._after_change().addCallback(
            lambda _: self._reply(tag, replies.IMAP_APPENDED, data=b"%d %d" % result)))
        d.addErrback(self._fail, tag)

    auth_APPEND = select_APPEND = (do_APPEND, Arguments.arg_astring, Arguments.opt_flags_date, Arguments.arg_literal)


def _levels(name: str, listed: set[str], shown: set[str]) -> list[str]:
    """The levels above `name` not listed themselves, each reported once (RFC 3501 6.3.8, 6.3.9)."""
    parts = name.split(DELIMITER)
    levels = []
    for depth in range(1, len(parts)):
        level = DELIMITER.join(parts[:depth])
        if level not in listed and level not in shown:
            shown.add(level)
            levels.append(level)
    return levels
