"""Mailbox management in the authenticated and selected states: CREATE to STATUS, APPEND, NAMESPACE.

RFC 3501 6.3 and RFC 2342; every command names folders, none needs one selected. The account
does the blocking work in the disk pool; names arrive in modified UTF-7 and leave quoted.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from appliance import replies
import appliance.imap.listing as listing
from appliance.imap.backend import DELIMITER, Account, MailboxError, client_flags, normalise
from appliance.imap.parse import Arguments, mailbox_name, quote_name

STATUS_ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN",
                b"HIGHESTMODSEQ")                                        # RFC 7162 3.1.7


def _after_space(parser: Callable) -> Callable:
    """`parser` for the argument after a mailbox name, skipping the SP between them.

    A quoted or atom name's parser takes that SP itself; after a literal name (`STATUS {5}`) the
    rest of the line starts with it, and the stock parsers refuse ` (MESSAGES)`.
    """
    def parse(self: Any, line: bytes) -> Any:
        return parser(self, line[1:] if line.startswith(b" ") else line)
    return parse


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

    def do_LIST(self, tag: bytes, tokens: list, command: bytes) -> None:
        try:
            request = listing.parse_request(tokens, STATUS_ITEMS, lsub=command == b"LSUB")
            reference = mailbox_name(request.reference) if request.reference else ""
            patterns = [mailbox_name(pattern) if pattern else "" for pattern in request.patterns]
        except listing.ListSyntaxError as exc:
            self._reply(tag, replies.IMAP_INVALID_ARGUMENTS, detail=str(exc).encode("ascii"))
            return
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return
        d = self._run(self._list, request, reference, patterns)
        d.addCallback(self._listed, tag, command, request.status)
        d.addErrback(self._fail, tag)

    def arg_list(self, line: bytes) -> Any:
        """LIST/LSUB arguments as parse.tokenize gives them, every literal read first (RFC 3501 4.3).

        The same reading as SEARCH's, with a lower cap on each literal: LIST's strings are names.
        """
        return self.arg_tokens(line, listing.MAX_LITERAL)

    auth_LIST = select_LIST = (do_LIST, arg_list, b"LIST")
    auth_LSUB = select_LSUB = (do_LIST, arg_list, b"LSUB")

    def _list(self, request: listing.ListRequest, reference: str,
              patterns: list[str]) -> list[tuple[listing.Entry, Any]]:
        """Blocking: the entries to answer, each with its folder's snapshot when LIST-STATUS wants one."""
        account = self.account
        assert account is not None
        names = account.names()
        special = {name: use for name in names if (use := account.special_use(name))}
        snapshot = listing.Snapshot(names, account.subscriptions(), special, DELIMITER)
        entries = listing.select(request, reference, patterns, snapshot)
        if not request.status:
            return [(entry, None) for entry in entries]
        return [(entry, self._folder_status(account, entry.name) if entry.selectable else None)
                for entry in entries]

    @staticmethod
    def _folder_status(account: Account, name: str) -> Any:
        """A folder's snapshot for LIST-STATUS; None when it went away since the listing (RFC 5819 2)."""
        try:
            return account.folder(name).refresh()
        except MailboxError:
            return None

    def _listed(self, found: list[tuple[listing.Entry, Any]], tag: bytes, command: bytes,
                wanted: list[bytes]) -> None:
        for entry, status in found:
            line = b"%b (%b) \"%b\" %b" % (command, " ".join(entry.attributes).encode(), DELIMITER.encode(),
                                            quote_name(entry.name))
            if entry.childinfo:
                line += b' ("CHILDINFO" (%b))' % b" ".join(b'"%b"' % opt.encode() for opt in entry.childinfo)
            self.sendUntaggedResponse(line)
            if status is not None:
                self.sendUntaggedResponse(self._status_response(status, entry.name, wanted))
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

    auth_STATUS = select_STATUS = (do_STATUS, Arguments.arg_astring, _after_space(Arguments.arg_plist))

    def _status(self, snapshot: Any, tag: bytes, name: str, wanted: list[bytes]) -> None:
        self.sendUntaggedResponse(self._status_response(snapshot, name, wanted))
        self._completed(tag, b"STATUS")

    @staticmethod
    def _status_response(snapshot: Any, name: str, wanted: list[bytes]) -> bytes:
        """`STATUS name (item value ...)`: the answer to STATUS, and to LIST ... RETURN (STATUS ...) (RFC 5819)."""
        values = {b"MESSAGES": len(snapshot.uids), b"RECENT": len(snapshot.fresh), b"UIDNEXT": snapshot.uidnext,
                  b"UIDVALIDITY": snapshot.uidvalidity,
                  b"UNSEEN": sum(1 for flags in snapshot.flags if "\\Seen" not in flags),
                  b"HIGHESTMODSEQ": snapshot.highestmodseq}
        body = b" ".join(b"%b %d" % (w, values[w]) for w in wanted)
        return b"STATUS " + quote_name(name) + b" (" + body + b")"

    def do_APPEND(self, tag: bytes, name: bytes, flags_date: tuple, message: Any) -> None:
        flags, date = flags_date
        data = message.read()
        try:
            wanted = client_flags(flags)          # keywords too (store/keywords.py)
        except ValueError as exc:
            self.sendBadResponse(tag, str(exc).encode("ascii", "replace"))
            return
        names = self._mailbox_names(tag, name)
        if names is None:
            return
        folder_name, account = names[0], self.account
        assert account is not None

        def append() -> tuple[int, int]:
            if not account.exists(folder_name):
                raise MailboxError(replies.IMAP_NO_MAILBOX.text, replies.IMAP_NO_MAILBOX.code)
            folder = account.folder(folder_name)
            uid = folder.append(data, wanted, date)
            return folder.state.uidvalidity, uid

        d = self._run(append)
        d.addCallback(lambda result: self._after_change().addCallback(
            lambda _: self._reply(tag, replies.IMAP_APPENDED, data=b"%d %d" % result)))
        d.addErrback(self._fail, tag)

    auth_APPEND = select_APPEND = (do_APPEND, Arguments.arg_astring, _after_space(Arguments.opt_flags_date),
                                   Arguments.arg_literal)

