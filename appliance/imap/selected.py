"""The selected state: SELECT/EXAMINE, UNSELECT, CLOSE, STORE, SEARCH, EXPUNGE, COPY/MOVE, UID, IDLE, updates.

A session sees its folder through a View: the snapshot the client was last told about. Changes
by this session, other sessions and delivery reach the client as EXISTS/EXPUNGE/FETCH
responses at the moments RFC 3501 7.4.1 allows (never EXPUNGE during FETCH, STORE or SEARCH).
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.mail.imap4 import IllegalClientResponse
from twisted.python.failure import Failure

from appliance import maillog, replies
import appliance.imap.search as search
from appliance.imap.backend import Account, Folder, MailboxError, client_flags
from appliance.imap.parse import Arguments, mailbox_name
from appliance.imap.view import SequenceError, View, flag_list, format_flags, permanent_flags

UID_COMMANDS = (b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE", b"SORT", b"THREAD")


def uid_set(uids: list[int]) -> bytes:
    """1,2,3,5 -> `1:3,5` (RFC 4315 uid-set)."""
    parts, start, prev = [], None, None
    for uid in uids:
        if start is None:
            start = prev = uid
        elif uid == prev + 1:
            prev = uid
        else:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = uid
    if start is not None:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)


_claiming: set[Folder] = set()          # folders one idler is claiming \Recent in right now (folder_changed)


class SelectedCommands:
    """Selecting a folder and the commands that work on the selected one; a session mixin."""

    transport: Any
    factory: Any
    peer: str
    state: str
    parseState: str
    account: Account | None
    folder: Folder | None
    view: View | None
    _selected_name: str
    _idle_tag: bytes | None
    _syncing: bool

    # ---- selecting -------------------------------------------------------------------------------------
    def _select(self, tag: bytes, raw_name: bytes, readonly: bool, command: bytes) -> None:
        if self.folder is not None:
            self._untagged(replies.IMAP_CLOSED)         # RFC 7162 3.2.11: the old mailbox's responses end here
        self._leave_folder()
        self.state = "auth"            # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected
        names = self._mailbox_names(tag, raw_name)
        if names is None:
            return
        name, account = names[0], self.account
        assert account is not None

        def open_folder() -> tuple[Folder, Any, frozenset[int], list[bytes]]:
            folder = account.folder(name)
            snapshot = folder.refresh()
            claimed = frozenset() if readonly else folder.claim(snapshot.fresh)
            state = folder.state
            return folder, state, claimed, self._modseq_resync(folder, state, claimed)

        d = self._run(open_folder)
        d.addCallback(self._selected, tag, name, readonly, command)
        d.addErrback(self._fail, tag)

    def _selected(self, result: tuple, tag: bytes, name: str, readonly: bool, command: bytes) -> None:
        folder, snapshot, claimed, resync = result
        self.folder, self.view, self._selected_name = folder, View(snapshot, claimed, readonly), name
        view = self.view
        lines = [b"* FLAGS " + flag_list(snapshot), replies.IMAP_PERMANENT_FLAGS.line(data=permanent_flags(snapshot, readonly)),
                 b"* %d EXISTS" % view.exists, b"* %d RECENT" % len(view.recent)]
        unseen = view.first_unseen()
        if unseen:
            lines.append(replies.IMAP_FIRST_UNSEEN.line(data=b"%d" % unseen))
        lines += [replies.IMAP_UIDVALIDITY.line(data=b"%d" % snapshot.uidvalidity),
                  replies.IMAP_UIDNEXT.line(data=b"%d" % snapshot.uidnext)]
        lines += self._modseq_select_lines(snapshot, resync)
        self.transport.writeSequence([line + b"\r\n" for line in lines])
        self.state = "select"
        self._reply(tag, replies.IMAP_EXAMINED if readonly else replies.IMAP_SELECTED, command=command)

    auth_SELECT = select_SELECT = (_select, Arguments.arg_astring, False, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (_select, Arguments.arg_astring, True, b"EXAMINE")

    def _leave_folder(self) -> None:
        if self.folder is not None and self._idle_tag is not None:
            self.factory.watcher.unwatch(self.folder, self)
        self.folder = self.view = None
        self._idle_tag = None

    def do_UNSELECT(self, tag: bytes) -> None:
        self._leave_folder()
        self.state = "auth"
        self._completed(tag, b"UNSELECT")

    select_UNSELECT = (do_UNSELECT,)

    def do_CLOSE(self, tag: bytes) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if view.readonly:
            self.do_UNSELECT(tag)
            return
        doomed = [uid for uid, flags in zip(view.known.uids, view.known.flags) if "\\Deleted" in flags]
        d = self._run(folder.expunge, doomed) if doomed else defer.succeed(None)
        d.addCallback(lambda _: self.do_UNSELECT(tag))
        d.addErrback(self._fail, tag)

    select_CLOSE = (do_CLOSE,)

    # ---- updates from other sessions and from delivery -------------------------------------------------
    def _sync(self, allow_expunge: bool = True) -> defer.Deferred:
        """Refresh the folder, claim \\Recent for new mail, and send what changed."""
        folder, view = self.folder, self.view
        if folder is None or view is None:
            return defer.succeed(None)

        def refresh() -> tuple[Any, frozenset[int]]:
            snapshot = folder.refresh() if folder.changed() else folder.state
            claimed = frozenset() if view.readonly or not snapshot.fresh else folder.claim(snapshot.fresh)
            return folder.state, claimed

        return self._run(refresh).addCallback(self._send_updates, allow_expunge)

    def _send_updates(self, result: tuple[Any, frozenset[int]], allow_expunge: bool = True) -> None:
        snapshot, claimed = result
        if self.view is None or self.transport.disconnecting:
            return
        old = self.view.known
        lines = self.view.updates(snapshot, claimed, allow_expunge)
        if lines:
            lines = self._modseq_updates(lines, old, snapshot)
            self.transport.writeSequence([line + b"\r\n" for line in lines])

    def _after_change(self) -> defer.Deferred:
        """After this session added mail to its own folder (APPEND, COPY): report EXISTS, with the new
        messages \\Recent here as this session is the first told of them, but no EXPUNGE mid-command."""
        if self.view is None or self.folder is None:
            return defer.succeed(None)
        return self._sync(allow_expunge=False)

    def _adopt_quietly(self, snapshot: Any, shown: Any = None) -> list[bytes]:
        """Take in our own flag changes, already shown to the client for the UIDs in `shown` (all
        when None): the other changes (EXISTS, other sessions' flags) remain to be sent."""
        assert self.view is not None
        if shown is None:
            shown = snapshot.uids
        old = self.view.known
        lines = self.view.updates(snapshot, allow_expunge=False, quiet=frozenset(shown)) or []
        return self._modseq_updates(lines, old, snapshot)

    def _report_changes(self) -> None:
        """Before a tagged OK: what other sessions changed meanwhile, from the shared folder state
        (no disk access). EXPUNGE waits for NOOP, CHECK, IDLE or EXPUNGE (RFC 3501 7.4.1)."""
        if self.view is not None and self.folder is not None and not self.transport.disconnecting:
            self._send_updates((self.folder.state, frozenset()), allow_expunge=False)

    # ---- IDLE (RFC 2177) ---------------------------------------------------------------------------------
    def folder_changed(self) -> None:
        """Called by the FolderWatcher after each poll and each change made in this process: catch
        up if the folder moved past the snapshot this session's client has seen."""
        if self.view is not None and self.folder is not None and self.view.known is not self.folder.state:
            self._catch_up_idling()

    def _catch_up_idling(self) -> None:
        """Tell the idling client what changed, from the folder's shared state.

        The watcher has just read the folder (or this process changed it), so its state is
        current: an idler needs the disk pool only to claim \\Recent for fresh messages, and one
        idler of the folder at a time does (the others are told from the shared state at once).
        A pool job per idler was a second poll per session: with 10,000 idlers, seconds before
        the last heard of new mail.
        """
        view, folder = self.view, self.folder
        if view is None or folder is None or self._idle_tag is None or self._syncing:
            return
        if view.readonly or not folder.state.fresh or folder in _claiming:
            self._send_updates((folder.state, frozenset()))
            return
        _claiming.add(folder)
        self._idle_sync().addBoth(lambda _: _claiming.discard(folder))

    def _idle_sync(self) -> defer.Deferred:
        """Refresh and report while idling, one refresh at a time; fires when done."""
        if self._idle_tag is not None and not self._syncing:
            self._syncing = True
            d = self._sync()
            d.addErrback(lambda failure: maillog.log.failure("IMAP IDLE update failed session={session}", failure,
                                                             peer=self.peer, session=self.sid))
            return d.addBoth(lambda _: setattr(self, "_syncing", False))
        return defer.succeed(None)

    def do_IDLE(self, tag: bytes) -> None:
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendLine(replies.IMAP_IDLING.line())
        if self.folder is not None:
            self.factory.watcher.watch(self.folder, self)
            self._idle_sync()

    auth_IDLE = select_IDLE = (do_IDLE,)

    def parse_idle(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        if self.folder is not None:
            self.factory.watcher.unwatch(self.folder, self)
        self.parseState = "command"
        if line.strip().upper() == b"DONE":
            self._reply(tag, replies.IMAP_IDLE_DONE)
        else:
            self._reply(tag, replies.IMAP_EXPECTED_DONE)

    # ---- STORE ---------------------------------------------------------------------------------------------
    def do_STORE(self, tag: bytes, ranges: list, mode: bytes, flags: list[str], uid: int = 0) -> None:
        request = self._store_request(tag, ranges, mode, flags, uid)
        if request is not None:
            items, operation, wanted, silent = request
            d = self._run(self.folder.store, [u for _, u in items], operation, wanted)
            d.addCallback(self._stored, tag, items, silent, bool(uid))
            d.addErrback(self._fail, tag)

    def _store_request(self, tag: bytes, ranges: list, mode: bytes, flags: list[str],
                       uid: int) -> tuple[list[tuple[int, int]], str, frozenset[str], bool] | None:
        """STORE's arguments checked: (items, "+"/"-"/"" for add/remove/replace, flags, silent),
        or None once the refusal is sent (read-only, an unknown item, a bad set or flag)."""
        view = self.view
        assert view is not None and self.folder is not None
        if view.readonly:
            self._reply(tag, replies.IMAP_READ_ONLY)
            return None
        mode = mode.upper()
        if mode.lstrip(b"+-") not in (b"FLAGS", b"FLAGS.SILENT"):
            self._reply(tag, replies.IMAP_BAD_STORE_ITEM)
            return None
        try:
            items = view.resolve(ranges, bool(uid))
            wanted = client_flags(flags)
        except (SequenceError, ValueError) as exc:
            self.sendBadResponse(tag, str(exc).encode("ascii", "replace"))
            return None
        operation = mode[:1].decode() if mode[:1] in (b"+", b"-") else ""
        return items, operation, wanted, mode.endswith(b".SILENT")

    select_STORE = (do_STORE, Arguments.arg_seqset, Arguments.arg_atom, Arguments.arg_flaglist)

    def _stored(self, snapshot: Any, tag: bytes, items: list[tuple[int, int]], silent: bool, by_uid: bool) -> None:
        view = self.view
        assert view is not None
        out = self._adopt_quietly(snapshot, [u for _, u in items])
        if not silent:
            for seq, u in items:
                if u in snapshot.position:
                    uid_part = (b" UID %d" % u if by_uid else b"") + self._modseq_item(u, snapshot, by_uid)
                    out.append(b"* %d FETCH (FLAGS %b%b)" % (seq, format_flags(snapshot.flags_of(u), u in view.recent),
                                                           uid_part))
        self.transport.writeSequence([line + b"\r\n" for line in out])
        self._completed(tag, b"STORE")

    # ---- SEARCH (RFC 3501 6.4.4, RFC 4731 ESEARCH) -------------------------------------------------------
    def do_SEARCH(self, tag: bytes, tokens: list, uid: int = 0) -> None:
        try:
            program = search.program(tokens)
        except search.CharsetError:
            self._reply(tag, replies.IMAP_BAD_CHARSET)
            return
        except search.SearchError as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        folder = self.folder
        assert folder is not None
        with_modseq = search.uses_modseq(program.nodes)
        self._modseq_search(with_modseq)
        d = self._run(search.run, program.nodes, self._candidates(), folder.read, folder.meta)
        d.addCallback(self._searched, tag, bool(uid), program.returns, with_modseq)
        d.addErrback(self._fail, tag)

    select_SEARCH = (do_SEARCH, Arguments.arg_tokens)

    def _candidates(self) -> list:
        """Every message the client knows of, with its flags (and MODSEQ) as they are now (RFC 3501 6.4.4)."""
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        known, current = view.known, folder.state
        return [search.Candidate(i + 1, u, current.flags_of(u) if u in current.position else known.flags[i],
                                 u in view.recent, (current if u in current.position else known).modseq_of(u))
                for i, u in enumerate(known.uids)]

    def _searched(self, found: list, tag: bytes, by_uid: bool, returns: list[str] | None,
                  with_modseq: bool = False) -> None:
        numbers = [c.uid if by_uid else c.seq for c in found]
        if returns is not None:
            self.sendUntaggedResponse(search.esearch(tag, numbers, returns, by_uid))
        else:
            text = b" ".join(b"%d" % n for n in numbers)
            if with_modseq and found:
                text += b" (MODSEQ %d)" % max(c.modseq for c in found)     # RFC 7162 3.1.6
            self.sendUntaggedResponse(b"SEARCH" + (b" " + text if text else b""))
        self._completed(tag, b"SEARCH")

    # ---- EXPUNGE, COPY, MOVE, UID --------------------------------------------------------------------------
    def do_EXPUNGE(self, tag: bytes, ranges: list | None = None) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if view.readonly:
            self._reply(tag, replies.IMAP_READ_ONLY)
            return
        current = folder.state
        allowed = None if ranges is None else {u for _, u in view.resolve(ranges, True)}
        doomed = [u for u, flags in zip(current.uids, current.flags)
                  if "\\Deleted" in flags and (allowed is None or u in allowed)]
        d = self._run(folder.expunge, doomed)
        d.addCallback(lambda snapshot: self._send_updates((snapshot, frozenset())))
        d.addCallbacks(lambda _: self._expunge_completed(tag, bool(doomed)), self._fail, errbackArgs=(tag,))

    select_EXPUNGE = (do_EXPUNGE,)

    def do_COPY(self, tag: bytes, ranges: list, name: bytes, uid: int = 0, move: bool = False) -> None:
        view, folder, account = self.view, self.folder, self.account
        assert view is not None and folder is not None and account is not None
        if move and view.readonly:
            self._reply(tag, replies.IMAP_READ_ONLY)
            return
        try:
            items = view.resolve(ranges, bool(uid))
            target_name = mailbox_name(name)
        except (SequenceError, MailboxError) as exc:
            self._fail(Failure(exc), tag)
            return
        d = self._run(_copy, account, folder, folder.state, items, target_name, move)
        d.addCallback(self._copied, tag, move)
        d.addErrback(self._fail, tag)

    select_COPY = (do_COPY, Arguments.arg_seqset, Arguments.arg_finalastring)

    def _copied(self, result: tuple[int, list[int], list[int]], tag: bytes, move: bool) -> None:
        validity, copied, new = result
        code = b"%d %b %b" % (validity, uid_set(copied), uid_set(new)) if copied else b""
        if move:
            if code:
                self._untagged(replies.IMAP_MOVED_UIDS, data=code)
            assert self.folder is not None
            self._send_updates((self.folder.state, frozenset()))
            self._completed(tag, b"MOVE")
        else:
            d = self._after_change()         # a copy into our own folder: EXISTS, and \Recent here
            if code:
                d.addCallback(lambda _: self._reply(tag, replies.IMAP_COPIED, data=code))
            else:
                d.addCallback(lambda _: self._completed(tag, b"COPY"))
            d.addErrback(self._fail, tag)

    def do_MOVE(self, tag: bytes, ranges: list, name: bytes, uid: int = 0) -> None:
        self.do_COPY(tag, ranges, name, uid, move=True)

    select_MOVE = (do_MOVE, Arguments.arg_seqset, Arguments.arg_finalastring)

    def do_UID(self, tag: bytes, command: bytes, line: bytes) -> None:
        command = command.upper()
        if command == b"EXPUNGE":
            ranges, rest = self.arg_seqset(line)
            if rest.strip():
                raise IllegalClientResponse("Too many arguments")
            self.do_EXPUNGE(tag, ranges)
            return
        if command not in UID_COMMANDS:
            raise IllegalClientResponse("Unknown UID command")
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, Arguments.arg_atom, Arguments.arg_line)


def _copy(account: Account, folder: Folder, source_state: Any, items: list[tuple[int, int]], target_name: str,
          move: bool) -> tuple[int, list[int], list[int]]:
    """Blocking: append the messages to the target folder; for MOVE, expunge them here afterwards.

    Returns the target's UIDVALIDITY, the source UIDs copied and their new UIDs (for COPYUID).
    """
    if not account.exists(target_name):
        raise MailboxError(replies.IMAP_NO_MAILBOX.text, replies.IMAP_NO_MAILBOX.code)
    target = account.folder(target_name)
    uids = [u for _, u in items if u in source_state.position]
    metas = folder.meta(uids)
    copied, new = [], []
    for u in uids:
        try:
            data = folder.read(u)
        except (KeyError, FileNotFoundError):
            continue
        flags = source_state.flags_of(u) - ({"\\Deleted"} if move else set())
        new.append(target.append(data, frozenset(flags), metas[u].internaldate if u in metas else None))
        copied.append(u)
    if move and copied:
        folder.expunge(copied)
    return target.state.uidvalidity, copied, new
