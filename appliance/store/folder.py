"""The Folder base every format builds on: UIDs from the UID list, the metadata index, the shared Snapshot.

One Folder object exists per folder path in the process (see `shared`), so IMAP sessions and
POP3 sessions on the same mailbox see each other's changes at once and the same messages;
other processes' changes (delivery, a second server) are found by `refresh`. Every method here
blocks and runs in a worker thread, except reading `state`, which the reactor may do at any time.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from appliance import mime
from appliance.store.base import Meta, Snapshot
from appliance.store.keywords import MAX_KEYWORDS, KeywordMap, listed
from appliance.store.index import INDEX, LOCK, UIDLIST, MetaIndex, UidState, load_uids, locked, save_uids
from appliance.store.modseq import MODSEQ, ModseqLog

_registry: "weakref.WeakValueDictionary[str, Folder]" = weakref.WeakValueDictionary()
_registry_guard = threading.Lock()
# The folders used last stay open after their sessions end: a client logging in again (a phone
# polling, a second SELECT) finds the Snapshot, UID list and loaded index in memory and pays a
# few stat calls instead of a rescan. Bounded: a 10,000-message folder keeps a few MB.
KEEP_OPEN = 8
_kept: "OrderedDict[str, Folder]" = OrderedDict()
# A directory or file changed less than this long before a scan may change again within the
# same timestamp tick without its stamp moving: such a scan is not trusted to be the last word.
RACY_NS = 1_000_000_000


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def racy(mtime_ns: int, scanned_ns: int) -> bool:
    """Whether a change at `mtime_ns` is too close to a scan started at `scanned_ns` to trust the stamp."""
    return mtime_ns >= scanned_ns - RACY_NS


def shared(path: str, make: Callable[[], "Folder"]) -> "Folder":
    """The process-wide Folder for `path`, made on first use."""
    with _registry_guard:
        folder = _registry.get(path)
        if folder is None:
            folder = make()
            _registry[path] = folder
        _kept[path] = folder
        _kept.move_to_end(path)
        while len(_kept) > KEEP_OPEN:
            _kept.popitem(last=False)
        return folder


def open_among(paths: Iterable[str]) -> list[str]:
    """Blocking (realpath): those of `paths` this process has open as Folders.

    Asked in the delivering thread, so a delivery to a folder nobody has open costs the reactor
    no hand-off to refresh_open (two thread round trips per delivery on the ingest path)."""
    with _registry_guard:
        if not _registry:
            return []
    wanted = {path: os.path.realpath(path) for path in set(paths)}
    with _registry_guard:
        return [path for path, real in wanted.items() if real in _registry]


def refresh_open(paths: Iterable[str]) -> None:
    """Blocking: rescan those of `paths` that this process has open as Folders (sessions are on them).

    Delivery writes files without a Folder; this makes its mail part of the shared state at once,
    so idling sessions hear of it without waiting for a poll, and the others at their next command.
    """
    for path in set(paths):
        real = os.path.realpath(path)
        with _registry_guard:
            folder = _registry.get(real)
        if folder is not None and folder.changed():
            folder.refresh()


class Folder:
    """A folder of messages addressed by UID; subclasses say where the messages live."""

    def __init__(self, path: str, meta_dir: str):
        self.path = path
        self._uidlist = f"{meta_dir}/{UIDLIST}"
        self._lock = f"{meta_dir}/{LOCK}"
        self._index = MetaIndex(f"{meta_dir}/{INDEX}")
        self.modseq = ModseqLog(f"{meta_dir}/{MODSEQ}")     # RFC 7162: fed by _publish, read for VANISHED
        self._uids = UidState(0)
        self._keys: dict[int, str] = {}          # uid -> message key
        self._uid_stamp: tuple[int, int, int] | None = None
        self._scanned = False
        self._published: tuple[dict, tuple[str, ...]] | None = None     # (found, keyword names) last published
        self._meta_guard = threading.Lock()
        self._keywords = KeywordMap()            # the format loads it in _scan, saves it in _save_keywords
        self._listeners: list[Callable[[], None]] = []
        self.state = Snapshot(0, 1)

    # ---- what subclasses provide ---------------------------------------------------------------
    def _scan(self) -> dict[str, tuple[frozenset[str], bool]]:
        """Every message now present: key -> (flags, fresh). Called with the folder locked."""
        raise NotImplementedError

    def _order(self, key: str) -> object:
        """Sort key giving new messages their UIDs in arrival order."""
        return key

    def _read(self, key: str) -> bytes:
        """The stored octets of one message (LF or CRLF); FileNotFoundError when it is gone."""
        raise NotImplementedError

    def _mtime(self, key: str) -> float:
        raise NotImplementedError

    def _set_flags(self, changes: dict[str, frozenset[str]]) -> None:
        """Write the complete flag sets (system flags and defined keywords) of some messages."""
        raise NotImplementedError

    def _load_keywords(self) -> None:
        """Re-read the folder's keyword list if another program may have changed it."""

    def _save_keywords(self) -> None:
        """Make `self._keywords` durable (new keywords were defined). Called with the folder locked."""
        raise NotImplementedError

    def _remove(self, keys: list[str]) -> None:
        raise NotImplementedError

    def _add(self, message: bytes, flags: frozenset[str], date: float | None) -> str:
        """Store one message; return its key. Called with the folder locked."""
        raise NotImplementedError

    def _claim(self, keys: list[str]) -> list[str]:
        """Mark fresh messages as seen by a session; return the keys this call claimed."""
        return []

    def _prepare_pop3(self) -> None:
        """Called before the scan of a POP3 login: a format may gather POP3 facts during the scan."""

    def _pop3_describe(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        """key -> (POP3 UIDL, CRLF size) of present messages, cheaply. Called with the folder locked."""
        raise NotImplementedError

    def changed(self) -> bool:
        """Cheap check (a few stat calls) whether a refresh could find anything new."""
        return True

    # ---- the folder's life ------------------------------------------------------------------------
    def refresh(self) -> Snapshot:
        """Rescan the folder, give UIDs to new messages, and publish a new Snapshot.

        When neither the folder (`changed`, a few stat calls) nor the UID list changed since the
        last scan, the Snapshot in memory is still right and is returned as is: a warm SELECT
        costs no directory listing.
        """
        if self._scanned and not self.changed() and _stamp(self._uidlist) == self._uid_stamp:
            return self.state
        with locked(self._lock):
            self._refresh_locked()
        return self.state

    def _refresh_locked(self) -> None:
        self._scanned = True
        found = self._scan()
        uids = self._load_uids()
        seen = (found, tuple(self._keywords.names))
        if uids is self._uids and seen == self._published:
            # The rescan a young stamp forces (RACY_NS) usually finds what the last one found:
            # nothing to renumber, record or rebuild (a 10,000-message Snapshot costs milliseconds).
            return
        dirty = uids.validity != self._uids.validity
        for key in [key for key in uids.uids if key not in found]:
            del uids.uids[key]
            dirty = True
        for key in sorted((key for key in found if key not in uids.uids), key=self._order):
            uids.assign(key)
            dirty = True
        self._uids = uids
        if dirty:
            self._save_uids()
        self._publish(found)
        self._published = seen

    def _load_uids(self) -> UidState:
        """The UID list, re-read only when another process or folder object changed it."""
        stamp = _stamp(self._uidlist)
        if self._uid_stamp is not None and stamp == self._uid_stamp:
            return self._uids
        self._uid_stamp = stamp          # taken before reading: a change meanwhile is read next time
        return load_uids(self._uidlist)

    def _save_uids(self) -> None:
        save_uids(self._uidlist, self._uids)
        self._uid_stamp = _stamp(self._uidlist)

    def _publish(self, found: dict[str, tuple[frozenset[str], bool]]) -> None:
        self._keys = {uid: key for key, uid in self._uids.uids.items() if key in found}
        messages = [(uid, found[key][0]) for uid, key in self._keys.items()]
        fresh = frozenset(uid for uid, key in self._keys.items() if found[key][1])
        self.modseq.observe(self._uids.validity, self._uids.next, messages)    # every change gets its MODSEQ here
        state = Snapshot.build(self._uids.validity, self._uids.next, messages, fresh, tuple(listed(self._keywords)),
                               len(self._keywords.names) >= MAX_KEYWORDS, modseqs=self.modseq.modseq,
                               highestmodseq=self.modseq.highest)
        if state != self.state:
            # Unchanged folders keep their Snapshot object: every session selecting the folder shares
            # one copy (and one identity check tells an idle session nothing happened).
            self.state = state
            for listener in list(self._listeners):
                listener()

    # ---- who hears of changes -----------------------------------------------------------------------
    def listen(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in the thread that changed the folder) whenever `state` changes.

        Every change this process makes (an IMAP session's STORE, APPEND, EXPUNGE, COPY, a POP3
        QUIT, a rescan that found another program's mail) publishes a new Snapshot here, so the
        FolderWatcher hears of it at once instead of at its next poll.
        """
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _keys_for(self, uids) -> dict[int, str]:
        """uid -> key for the UIDs still present, rescanning first if some are unknown to this object."""
        if any(uid not in self._keys for uid in uids):
            self._refresh_locked()
        return {uid: self._keys[uid] for uid in uids if uid in self._keys}

    def claim(self, uids: frozenset[int]) -> frozenset[int]:
        """Claim fresh messages for one session's \\Recent; each is claimed by one session only."""
        if not uids:
            return frozenset()
        with locked(self._lock):
            keys = list(self._keys_for(uids).values())
            claimed = set(self._claim(keys))
            self._refresh_locked()
        return frozenset(uid for uid in uids if self._keys.get(uid) in claimed)

    def store(self, uids: Iterable[int], mode: str, flags: frozenset[str]) -> Snapshot:
        """THE place where present messages' flags change: add (mode "+"), remove ("-") or replace ("") `flags`.

        The new flag sets are computed here, under the folder lock, from the folder's current
        state: two sessions adding different flags to one message at once both keep theirs.
        Keywords are matched case-insensitively to the folder's (new ones defined, or MailboxError
        [LIMIT]); gone messages are skipped.
        """
        with locked(self._lock):
            if self.changed():
                self._refresh_locked()
            self._apply_flags(list(uids), mode, flags)
        return self.state

    def store_unchanged_since(self, uids: list[int], mode: str, flags: frozenset[str],
                              since: int) -> tuple[Snapshot, frozenset[int]]:
        """STORE (UNCHANGEDSINCE since), RFC 7162 3.1.3: add (mode "+"), remove ("-") or replace ("") `flags`
        on the messages whose MODSEQ is still <= since; the others are refused and returned.

        The test and the change happen under the folder lock, with the new flags computed from the
        folder's state there, so no other writer slips between them.
        """
        with locked(self._lock):
            if self.changed():
                self._refresh_locked()
            state = self.state
            refused = frozenset(u for u in uids if u in state.position and state.modseq_of(u) > since)
            self._apply_flags([u for u in uids if u not in refused], mode, flags)
        return self.state, refused

    def _apply_flags(self, uids: list[int], mode: str, flags: frozenset[str]) -> None:
        """Under the folder lock: the new flag sets from the current state, written, then published."""
        keys = self._keys_for(uids)
        flags = self._canonical(flags) if mode == "-" else self._define(flags)
        changes = {}
        for uid, key in keys.items():
            old = self.state.flags_of(uid) if uid in self.state.position else frozenset()
            new = old | flags if mode == "+" else old - flags if mode == "-" else flags
            if new != old:
                changes[key] = new
        if changes:
            self._set_flags(changes)
        self._refresh_locked()

    def _canonical(self, flags: frozenset[str]) -> frozenset[str]:
        """Keywords in the folder's spelling; unknown ones kept as given (they match nothing)."""
        return frozenset(flag if flag.startswith("\\") else self._keywords.canonical(flag) or flag for flag in flags)

    def _define(self, flags: frozenset[str]) -> frozenset[str]:
        """Keywords in the folder's spelling, new ones added to its list and saved. Called with the folder locked."""
        self._load_keywords()
        flags, added = self._keywords.define(flags)
        if added:
            self._save_keywords()
        return flags

    def expunge(self, uids: list[int]) -> Snapshot:
        with locked(self._lock):
            self._remove(list(self._keys_for(uids).values()))
            self._refresh_locked()
            with self._meta_guard:
                self._index.prune(set(self._keys.values()))
        return self.state

    def append(self, message: bytes, flags: frozenset[str], date: float | None) -> int:
        """Add one message (wire form); return its UID."""
        with locked(self._lock):
            self._refresh_locked()
            key = self._add(message, self._define(flags), date)
            uid = self._uids.assign(key)
            self._save_uids()
            self._refresh_locked()
        return uid

    def pop3_listing(self) -> list[tuple[int, str, int]]:
        """(UID, UIDL, CRLF size) of every message, in UID order: a POP3 session's snapshot at login.

        Built from the same scan and UID list IMAP uses, so both protocols list the same messages
        in the same order. It never parses MIME nor loads the metadata index: a 10,000-message
        login costs a directory listing (Maildir, with a size cache) or one read of the file (mbox).
        """
        with locked(self._lock):
            self._prepare_pop3()
            self._refresh_locked()
            keys = [(uid, self._keys[uid]) for uid in self.state.uids if uid in self._keys]
            described = self._pop3_describe([key for _, key in keys])
        return [(uid, *described[key]) for uid, key in keys if key in described]

    # ---- reading ------------------------------------------------------------------------------------
    def read(self, uid: int) -> bytes:
        """One message in CRLF form; KeyError or FileNotFoundError when it is gone."""
        return mime.crlf(self._read(self._keys[uid]))

    def read_many(self, uids: list[int], budget: int = 1 << 62) -> list[bytes | None]:
        """Messages in CRLF form for the first of `uids`, in order (None: gone), stopping after the
        one that brings the octets read to `budget`: FETCH reads its batches so, a few megabytes
        a trip to the disk pool. One list, no generators: at 10,000 messages a second the
        per-message calls show."""
        messages = self._read_many([self._keys.get(uid) for uid in uids], budget)
        for n, data in enumerate(messages):
            if data is not None:         # each stored form is dropped as its wire form replaces it
                messages[n] = data.replace(b"\n", b"\r\n") if b"\r" not in data else mime.crlf(data)
        return messages

    def _read_many(self, keys: list[str | None], budget: int) -> list[bytes | None]:
        """The stored octets of the first keys (None: gone) up to `budget` octets; a format whose
        whole run is cheaper another way (mbox: one descriptor) overrides it."""
        out: list[bytes | None] = []
        total = 0
        for key in keys:
            data = self._read_or_none(key)
            out.append(data)
            total += len(data) if data is not None else 0
            if total >= budget:
                break
        return out

    def _read_or_none(self, key: str | None) -> bytes | None:
        """One message of a batch read, None when it is gone; a format with a cheaper single read overrides it."""
        try:
            return None if key is None else self._read(key)
        except FileNotFoundError:
            return None

    def meta(self, uids: list[int], structure: bool = False) -> dict[int, Meta]:
        """Meta for each still-present UID, from the index, reading only messages it lacks.

        A message first described reads only what ENVELOPE, RFC822.SIZE and INTERNALDATE need
        (the header block; the size by counting line ends); its BODYSTRUCTURE, which needs the
        whole MIME tree, is worked out and added to the index only when `structure` is asked for.
        """
        with self._meta_guard:
            self._index.load()
        keys = {uid: self._keys.get(uid) for uid in uids}
        found: dict[int, Meta] = {}
        missing: dict[str, Meta] = {}
        for uid, key in keys.items():
            if key is None:
                continue
            meta = self._index.entries.get(key)
            if meta is None or structure and meta.bodystructure is None:
                meta = self._describe(key, structure)
                if meta is None:
                    continue
                missing[key] = meta
            found[uid] = meta
        if missing:
            with self._meta_guard:
                self._index.add(missing)
        return found

    def _read_dated(self, key: str) -> tuple[bytes, float]:
        """The stored octets of one message and its INTERNALDATE; FileNotFoundError when it is gone."""
        data = self._read(key)
        return data, self._mtime(key)

    def _describe(self, key: str, structure: bool = False) -> Meta | None:
        try:
            data, date = self._read_dated(key)
        except FileNotFoundError:
            return None
        if not structure:
            return Meta(mime.wire_size(data), date, mime.envelope(mime.head_block(data)), None)
        raw = mime.crlf(data)
        part = mime.parse(raw)
        return Meta(len(raw), date, mime.envelope(part.head), mime.bodystructure(part, True))
