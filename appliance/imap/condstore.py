"""ENABLE (RFC 5161), CONDSTORE and QRESYNC (RFC 7162): mod-sequences on the wire; a session mixin.

The store gives every message a MODSEQ and remembers expunges (store/modseq.py); every Snapshot
carries them, so what a session reports is always consistent with the snapshot its client saw.
This mixin adds the commands and modifiers and turns a session "CONDSTORE-aware" (RFC 7162 3.1:
ENABLE, SELECT (CONDSTORE), FETCH MODSEQ / CHANGEDSINCE, SEARCH MODSEQ, STORE UNCHANGEDSINCE,
STATUS HIGHESTMODSEQ): from then on every untagged FETCH carries UID and MODSEQ, and once
QRESYNC is enabled expunges are reported as `VANISHED <uids>` instead of EXPUNGE (3.2.10.2).
The other mixins call the small `_modseq_*` hooks below; nothing here blocks the reactor.

Why no NOMODSEQ: every folder of both formats has persistent mod-sequences.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.mail.imap4 import IllegalClientResponse

from appliance import replies
from appliance.imap.backend import Folder, Ranges, Snapshot, first_known, format_ranges, merge
from appliance.imap.fetch import FetchCommand, marks_seen
from appliance.imap.parse import MAX_COMMAND, Arguments, _as_words, _fetch_atts, _then
from appliance.imap.selected import SelectedCommands
from appliance.imap.view import MAX_NUMBER, Range, SequenceError, View, _bounds, format_flags, parse_set

MAX_MODSEQ = (1 << 63) - 1          # RFC 7162 7: mod-sequence-value is 63-bit
MAX_SEQ_MATCH = 1 << 16             # seq-match pairs looked at: clients send a small sample (RFC 7162 3.2.5.2)
_NUMBER = re.compile(rb"[0-9]{1,20}")
_SET_CHARS = re.compile(rb"[0-9:,]+")


# ---- what clients send: parsed strictly, anything else is ValueError -----------------------------------
@dataclass(frozen=True)
class Qresync:
    """`QRESYNC (uidvalidity modseq [known-uids] [(known-sequence-set known-uid-set)])`."""

    uidvalidity: int
    modseq: int
    known_uids: Ranges | None = None
    sequences: tuple[Range, ...] = ()
    uids: tuple[Range, ...] = ()


@dataclass(frozen=True)
class SelectParams:
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True)
class FetchModifiers:
    modseq_item: bool = False            # MODSEQ among the data items
    changedsince: int | None = None      # CHANGEDSINCE n
    vanished: bool = False               # VANISHED (UID FETCH under QRESYNC only)


def number(token: bytes, low: int, high: int) -> int:
    if not _NUMBER.fullmatch(token):
        raise ValueError("not a number")
    value = int(token)
    if not low <= value <= high:
        raise ValueError("number out of range")
    return value


def number_set(token: bytes) -> list[Range]:
    """A sequence set without `*` (RFC 7162 7: known-uids, known-sequence-set, known-uid-set)."""
    if not _SET_CHARS.fullmatch(token):
        raise ValueError("bad set")
    try:
        return parse_set(token)
    except SequenceError:
        raise ValueError("bad set") from None


def _expand(ranges: tuple[Range, ...], limit: int) -> list[int]:
    """The numbers of a set in the client's order, at most `limit` of them."""
    out: list[int] = []
    for low, high in ranges:
        assert low is not None and high is not None
        step = 1 if high >= low else -1
        for value in range(low, high + step, step):
            if len(out) >= limit:
                return out
            out.append(value)
    return out


def _words(text: bytes) -> list[bytes | list]:
    """Atoms and parenthesised lists (nested), split on single spaces; ValueError on anything else."""
    stack: list[list] = [[]]
    word = b""
    for char in text:
        c = bytes((char,))
        if c in (b" ", b"(", b")"):
            if word:
                stack[-1].append(word)
                word = b""
            if c == b"(":
                stack.append([])
                if len(stack) > 4:
                    raise ValueError("nested too deeply")
            elif c == b")":
                if len(stack) == 1:
                    raise ValueError("unbalanced")
                inner = stack.pop()
                stack[-1].append(inner)
        elif 0x21 <= char <= 0x7E and c not in (b'"', b"{", b"\\"):
            word += c
        else:
            raise ValueError("unexpected character")
    if len(stack) != 1:
        raise ValueError("unbalanced")
    if word:
        stack[0].append(word)
    return stack[0]


def parse_select_params(line: bytes) -> SelectParams:
    """What follows the mailbox name of SELECT/EXAMINE: nothing, or `(CONDSTORE)` / `(QRESYNC (...))` (RFC 4466)."""
    line = line.strip(b" ")
    if not line:
        return SelectParams()
    words = _words(line)
    if len(words) != 1 or not isinstance(words[0], list) or not words[0]:
        raise ValueError("select parameters must be one parenthesised list")
    items, condstore, qresync = list(words[0]), False, None
    while items:
        name = items.pop(0)
        if not isinstance(name, bytes):
            raise ValueError("parameter name expected")
        if name.upper() == b"CONDSTORE":
            condstore = True
        elif name.upper() == b"QRESYNC" and qresync is None and items and isinstance(items[0], list):
            qresync = _qresync(items.pop(0))
        else:
            raise ValueError("unknown select parameter")
    return SelectParams(condstore, qresync)


def _qresync(values: list) -> Qresync:
    if not 2 <= len(values) <= 4 or not all(isinstance(v, bytes) for v in values[:2]):
        raise ValueError("QRESYNC needs uidvalidity and mod-sequence")
    validity, modseq = number(values[0], 1, MAX_NUMBER), number(values[1], 1, MAX_MODSEQ)
    rest = values[2:]
    known: Ranges | None = None
    if rest and isinstance(rest[0], bytes):
        known = merge(_bounds(item, 0) for item in number_set(rest.pop(0)))
    sequences: tuple[Range, ...] = ()
    uids: tuple[Range, ...] = ()
    if rest:
        pair = rest.pop(0)
        if rest or not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, bytes) for p in pair):
            raise ValueError("seq-match-data is (sequence-set uid-set)")
        sequences, uids = tuple(number_set(pair[0])), tuple(number_set(pair[1]))
    return Qresync(validity, modseq, known, sequences, uids)


def _top_level_split(text: bytes) -> list[bytes]:
    """Split on spaces outside () and []: `BODY[HEADER.FIELDS (A B)] UID` is two items."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in b"([":
            depth += 1
        elif char in b")]":
            depth -= 1
        elif char == 0x20 and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def split_fetch(line: bytes) -> tuple[bytes, FetchModifiers]:
    """FETCH's items without MODSEQ (for the stock item parser), and the RFC 7162 item and modifiers."""
    items = _top_level_split(line.strip(b" "))
    modifiers: list[bytes] = []
    if len(items) == 2 and items[1].startswith(b"(") and items[1].endswith(b")"):
        modifiers = _top_level_split(items[1][1:-1])
    elif len(items) != 1:
        raise ValueError("bad FETCH arguments")
    atts = items[0]
    parenthesised = atts.startswith(b"(") and atts.endswith(b")")
    words = _top_level_split(atts[1:-1]) if parenthesised else [atts]
    kept = [w for w in words if w.upper() != b"MODSEQ"]
    modseq_item = len(kept) != len(words)
    changedsince, vanished = None, False
    while modifiers:
        name = modifiers.pop(0).upper()
        if name == b"CHANGEDSINCE" and changedsince is None and modifiers:
            changedsince = number(modifiers.pop(0), 0, MAX_MODSEQ)
        elif name == b"VANISHED" and not vanished:
            vanished = True
        else:
            raise ValueError("unknown FETCH modifier")
    rest = b"(" + b" ".join(kept) + b")" if parenthesised else (b"" if not kept else kept[0])
    return rest, FetchModifiers(modseq_item, changedsince, vanished)


def parse_store_modifier(line: bytes) -> tuple[int | None, bytes]:
    """`(UNCHANGEDSINCE n) rest` -> (n, rest); no modifier -> (None, line) (RFC 7162 3.1.3)."""
    line = line.lstrip(b" ")
    if not line.startswith(b"("):
        return None, line
    end = line.find(b")")
    words = line[1:end].split(b" ") if end > 0 else []
    if len(words) != 2 or words[0].upper() != b"UNCHANGEDSINCE":
        raise ValueError("unknown STORE modifier")
    return number(words[1], 0, MAX_MODSEQ), line[end + 1:].lstrip(b" ")


def _in(uid: int, ranges: Ranges | None) -> bool:
    """Whether `uid` is in merged, sorted `ranges` (None: every UID); a bisection, as clients send long sets."""
    if ranges is None:
        return True
    index = bisect.bisect_right(ranges, (uid, MAX_MODSEQ)) - 1
    return index >= 0 and ranges[index][0] <= uid <= ranges[index][1]


# ---- the mixin -------------------------------------------------------------------------------------
class CondstoreCommands:
    """ENABLE; SELECT/EXAMINE parameters; FETCH, STORE with modifiers; the hooks the other mixins call."""

    transport: Any
    folder: Folder | None
    view: View | None
    condstore_on = False             # RFC 7162 3.1: a CONDSTORE enabling command was seen
    qresync_on = False               # RFC 7162 3.2.3: ENABLE QRESYNC answered with ENABLED QRESYNC
    _qresync_request: Qresync | None = None
    _fetch_modseq = False            # the FETCH being answered puts MODSEQ in its lines

    # ---- ENABLE (RFC 5161) --------------------------------------------------------------------------
    def do_ENABLE(self, tag: bytes, line: bytes) -> None:
        names = line.split()
        if not names:
            self._reply(tag, replies.IMAP_BAD_ENABLE)
            return
        enabled = []
        for name in names:
            name = name.upper()
            if name == b"QRESYNC" and not self.qresync_on:
                self.qresync_on = True
                enabled.append(name)
                self._enable_condstore()        # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
            elif name == b"CONDSTORE" and not self.condstore_on:
                enabled.append(name)
                self._enable_condstore()
        self.sendUntaggedResponse(b" ".join([b"ENABLED"] + enabled))
        self._completed(tag, b"ENABLE")

    auth_ENABLE = select_ENABLE = (do_ENABLE, Arguments.arg_line)

    def _enable_condstore(self) -> None:
        """The first CONDSTORE enabling command while a mailbox is selected also tells its HIGHESTMODSEQ."""
        if self.condstore_on:
            return
        self.condstore_on = True
        if self.view is not None:
            self._untagged(replies.IMAP_HIGHESTMODSEQ, data=b"%d" % self.view.known.highestmodseq)

    # ---- SELECT / EXAMINE (CONDSTORE) (QRESYNC ...) ------------------------------------------------
    def arg_select_params(self, line: bytes) -> tuple[SelectParams, bytes]:
        try:
            return parse_select_params(line), b""
        except ValueError as exc:
            raise IllegalClientResponse(str(exc)) from None

    def _select_with(self, tag: bytes, raw_name: bytes, params: SelectParams, readonly: bool, command: bytes) -> None:
        if params.qresync is not None and not self.qresync_on:
            self._reply(tag, replies.IMAP_QRESYNC_NOT_ENABLED)
            return
        if params.condstore or params.qresync is not None:
            self.condstore_on = True            # HIGHESTMODSEQ follows in the SELECT's own answer
        self._qresync_request = params.qresync
        SelectedCommands._select(self, tag, raw_name, readonly, command)  # type: ignore[arg-type]

    auth_SELECT = select_SELECT = (_select_with, Arguments.arg_astring, arg_select_params, False, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (_select_with, Arguments.arg_astring, arg_select_params, True, b"EXAMINE")

    def _modseq_resync(self, folder: Folder, state: Snapshot, claimed: frozenset[int]) -> list[bytes]:
        """Blocking (the SELECT's pool job): what a QRESYNC client missed, RFC 7162 3.2.5.1.

        `VANISHED (EARLIER)` first (3.2.6: never after FETCH), then FETCH (UID FLAGS MODSEQ) of every
        message changed since the client's mod-sequence. A different UIDVALIDITY: nothing (3.2.5).
        """
        request, self._qresync_request = self._qresync_request, None
        if request is None or request.uidvalidity != state.uidvalidity:
            return []
        floor = 0
        if request.sequences:
            limit = min(MAX_SEQ_MATCH, len(state.uids) + 1)
            floor = first_known(state.uids, _expand(request.sequences, limit), _expand(request.uids, limit))
        gone = folder.modseq.vanished(request.modseq, state.uids, state.uidnext, request.known_uids, floor)
        lines = [b"* VANISHED (EARLIER) " + format_ranges(gone).encode()] if gone else []
        for index, (uid, modseq) in enumerate(zip(state.uids, state.modseqs)):
            if modseq > request.modseq and _in(uid, request.known_uids):
                lines.append(b"* %d FETCH (UID %d FLAGS %b MODSEQ (%d))"
                             % (index + 1, uid, format_flags(state.flags[index], uid in claimed), modseq))
        return lines

    def _modseq_select_lines(self, state: Snapshot, resync: list[bytes]) -> list[bytes]:
        """The SELECT answer's RFC 7162 part: HIGHESTMODSEQ (once CONDSTORE-aware), then the resync."""
        if not self.condstore_on:
            return []
        return [replies.IMAP_HIGHESTMODSEQ.line(data=b"%d" % state.highestmodseq)] + resync

    # ---- untagged updates ----------------------------------------------------------------------------
    def _modseq_updates(self, lines: list[bytes], old: Snapshot, current: Snapshot) -> list[bytes]:
        """View.updates' lines for a CONDSTORE/QRESYNC client: FETCH gets UID and MODSEQ; EXPUNGEs become VANISHED.

        The EXPUNGE lines number messages as in `old` (highest first), the FETCH lines as in `current`.
        """
        if not self.condstore_on:
            return lines
        out: list[bytes] = []
        gone: list[int] = []
        for line in lines:
            words = line.split(b" ", 3)
            if self.qresync_on and len(words) == 3 and words[2] == b"EXPUNGE":
                if not gone:
                    out.append(b"")             # where the VANISHED line goes
                gone.append(old.uids[int(words[1]) - 1])
            elif len(words) == 4 and words[2] == b"FETCH" and line.endswith(b")"):
                uid = current.uids[int(words[1]) - 1]
                out.append(line[:-1] + b" UID %d MODSEQ (%d))" % (uid, current.modseq_of(uid)))
            else:
                out.append(line)
        if gone:
            out[out.index(b"")] = b"* VANISHED " + format_ranges(merge((u, u) for u in gone)).encode()
        return out

    def _modseq_item(self, uid: int, state: Snapshot, by_uid: bool) -> bytes:
        """What a CONDSTORE-aware client's STORE response line adds: ` [UID n] MODSEQ (m)`."""
        if not self.condstore_on or uid not in state.position:
            return b""
        return (b"" if by_uid else b" UID %d" % uid) + b" MODSEQ (%d)" % state.modseq_of(uid)

    def _expunge_completed(self, tag: bytes, expunged: bool) -> None:
        """RFC 7162 3.2.7: after an EXPUNGE that removed something, a QRESYNC client learns HIGHESTMODSEQ."""
        if self.qresync_on and expunged and self.view is not None:
            self._reply(tag, replies.IMAP_EXPUNGED_MODSEQ, data=b"%d" % self.view.known.highestmodseq,
                        command=b"EXPUNGE")
        else:
            self._completed(tag, b"EXPUNGE")

    def _modseq_search(self, uses_modseq: bool) -> None:
        if uses_modseq:
            self._enable_condstore()

    def _modseq_status(self, wanted: list[bytes]) -> None:
        if b"HIGHESTMODSEQ" in wanted:
            self._enable_condstore()

    # ---- FETCH MODSEQ, (CHANGEDSINCE n [VANISHED]) ----------------------------------------------------
    def arg_fetch_modseq(self, line: bytes) -> Any:
        """FETCH's attributes and RFC 7162 modifiers, once every literal in them is read (as parse.py does)."""
        if not line.strip():
            raise IllegalClientResponse("Missing fetch attributes")
        return _then(self._segments(line, [], MAX_COMMAND), lambda segments: self._fetch_spec(_as_words(segments)))

    def _fetch_spec(self, line: bytes) -> tuple[tuple[list, FetchModifiers], bytes]:
        try:
            atts, modifiers = split_fetch(line)
        except ValueError as exc:
            raise IllegalClientResponse(str(exc)) from None
        query: list = []
        if atts not in (b"", b"()"):
            query, _ = _fetch_atts(atts)
        elif not (modifiers.modseq_item or modifiers.changedsince is not None):
            raise IllegalClientResponse("Missing fetch attributes")
        return (query, modifiers), b""

    def do_FETCH_modseq(self, tag: bytes, ranges: list, spec: tuple[list, FetchModifiers], uid: int = 0) -> None:
        query, modifiers = spec
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if modifiers.vanished and not self.qresync_on:
            self._reply(tag, replies.IMAP_QRESYNC_NOT_ENABLED)
            return
        if modifiers.vanished and (not uid or modifiers.changedsince is None):
            self._reply(tag, replies.IMAP_BAD_VANISHED)
            return
        try:
            items = view.resolve(ranges, bool(uid))
        except SequenceError as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        if modifiers.modseq_item or modifiers.changedsince is not None:
            self._enable_condstore()
        since = modifiers.changedsince
        if since is not None:
            state = folder.state
            items = [(seq, u) for seq, u in items if u in state.position and state.modseq_of(u) > since]
        self._fetch_modseq = (modifiers.modseq_item or since is not None
                              or self.condstore_on and not view.readonly and marks_seen(query))
        d: defer.Deferred = defer.succeed(None)
        if modifiers.vanished:
            assert since is not None
            known = view.known
            star = known.uids[-1] if known.uids else 0
            within = merge(_bounds(item, star) for item in ranges)
            d = self._run(folder.modseq.vanished, since, known.uids, known.uidnext, within)
            d.addCallback(lambda gone: gone and self.sendUntaggedResponse(
                b"VANISHED (EARLIER) " + format_ranges(gone).encode()))
        d.addCallback(lambda _: FetchCommand._fetch_items(self, tag, items, query, bool(uid)))  # type: ignore[arg-type]
        d.addErrback(self._fail, tag)

    select_FETCH = (do_FETCH_modseq, Arguments.arg_seqset, arg_fetch_modseq)

    # ---- STORE (UNCHANGEDSINCE n) ------------------------------------------------------------------------
    def arg_store_modifier(self, line: bytes) -> tuple[int | None, bytes]:
        try:
            return parse_store_modifier(line)
        except ValueError as exc:
            raise IllegalClientResponse(str(exc)) from None

    def do_STORE_modseq(self, tag: bytes, ranges: list, since: int | None, mode: bytes, flags: list[str],
                        uid: int = 0) -> None:
        if since is None:
            SelectedCommands.do_STORE(self, tag, ranges, mode, flags, uid)  # type: ignore[arg-type]
            return
        request = self._store_request(tag, ranges, mode, flags, uid)
        if request is not None:
            items, sign, wanted, silent = request
            self._enable_condstore()
            d = self._run(self.folder.store_unchanged_since, [u for _, u in items], sign, wanted, since)
            d.addCallback(self._stored_if_unchanged, tag, items, silent, bool(uid))
            d.addErrback(self._fail, tag)

    select_STORE = (do_STORE_modseq, Arguments.arg_seqset, arg_store_modifier, Arguments.arg_atom,
                    Arguments.arg_flaglist)

    def _stored_if_unchanged(self, result: tuple[Snapshot, frozenset[int]], tag: bytes, items: list[tuple[int, int]],
                             silent: bool, by_uid: bool) -> None:
        """RFC 7162 3.1.3: FETCH with MODSEQ for every message (even .SILENT), MODIFIED naming the refused."""
        snapshot, refused = result
        view = self.view
        assert view is not None
        out = self._adopt_quietly(snapshot, [u for _, u in items])
        for seq, u in items:
            if u not in snapshot.position:
                continue
            flags = b"" if silent and u not in refused else b" FLAGS " + format_flags(snapshot.flags_of(u),
                                                                                     u in view.recent)
            out.append(b"* %d FETCH (UID %d%b MODSEQ (%d))" % (seq, u, flags, snapshot.modseq_of(u)))
        self.transport.writeSequence([line + b"\r\n" for line in out])
        failed = sorted(u if by_uid else seq for seq, u in items if u in refused)
        if failed:
            self._reply(tag, replies.IMAP_MODIFIED, data=format_ranges(merge((n, n) for n in failed)).encode())
        else:
            self._completed(tag, b"STORE")
