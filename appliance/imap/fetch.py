"""FETCH (RFC 3501 6.4.5, 7.4.2): marking \\Seen, reading in bounded batches, rendering every data item.

Items the metadata index answers (FLAGS, UID, ENVELOPE, INTERNALDATE, RFC822.SIZE, BODYSTRUCTURE)
never open a message file; body items read messages in the disk pool a few megabytes at a time,
and the next batch waits until the transport has sent the last one.
"""
from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, interfaces
from zope.interface import implementer

from appliance.bulkwrite import PieceWriter
from appliance.imap.backend import Folder, Meta, mime
from appliance.imap.parse import MONTHS, Arguments
from appliance.imap.view import SequenceError, View, format_flags

FETCH_BATCH_BYTES = 4 << 20     # message octets read per trip to the disk pool during FETCH
_FROM_INDEX = {"envelope", "internaldate", "rfc822size", "bodystructure"}


def internaldate(seconds: float) -> bytes:
    """INTERNALDATE in UTC: `"17-Jul-1996 02:44:25 +0000"` (month names fixed, not from the locale)."""
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, MONTHS[t.tm_mon - 1].encode(), t.tm_year,
                                                     t.tm_hour, t.tm_min, t.tm_sec)


def literal(data: bytes) -> bytes:
    """Octets as an IMAP literal: binary-safe, so message data is never quoted."""
    return b"{%d}\r\n%b" % (len(data), data)


def has_section(part: Any) -> bool:
    """BODY[...] (which may set \\Seen) rather than BODY (the non-extensible BODYSTRUCTURE)."""
    return bool(part.empty or part.header is not None or part.text is not None or part.mime is not None)


def marks_seen(query: list) -> bool:
    """Whether fetching `query` sets \\Seen: RFC822, RFC822.TEXT and BODY[...] without .PEEK do."""
    return any(p.type in ("rfc822", "rfc822text") or p.type == "body" and not p.peek and has_section(p)
               for p in query)


def read_batch(folder: Folder, uids: list[int]) -> list[bytes | None]:
    """Blocking: read the first few of `uids` for FETCH, stopping once FETCH_BATCH_BYTES are in memory."""
    return folder.read_many(uids, FETCH_BATCH_BYTES)


def body_item(part: Any, raw: bytes) -> list[bytes]:
    """One of RFC822, RFC822.HEADER, RFC822.TEXT, BODY, BODY[section]<partial>, as pieces: the
    octets of a literal are their own piece, so a whole message is never copied into a response."""
    if part.type == "rfc822":
        return literal_parts(b"RFC822 ", raw)
    if part.type == "rfc822header":
        return literal_parts(b"RFC822.HEADER ", mime.split_head(raw)[0])
    if part.type == "rfc822text":
        return literal_parts(b"RFC822.TEXT ", mime.split_head(raw)[1])
    if not has_section(part):
        return [b"BODY " + mime.bodystructure(mime.parse(raw), extended=False)]
    numbers = tuple(p + 1 for p in part.part)
    kind, fields, negate = _section_kind(part)
    label = _section_label(numbers, kind, fields, negate)
    try:
        data: bytes | None = mime.section(raw, numbers, kind, fields, negate)
    except mime.SectionError:
        data = None
    origin = b""
    if part.partialBegin is not None and data is not None:
        origin = b"<%d>" % part.partialBegin
        data = data[part.partialBegin:part.partialBegin + part.partialLength]
    name = b"BODY[%b]%b " % (label, origin)
    return [name + b"NIL"] if data is None else literal_parts(name, data)


def literal_parts(name: bytes, data: bytes) -> list[bytes]:
    """`name {n}CRLF` and the octets: what `name + literal(data)` is, without the copy."""
    return [b"%b{%d}\r\n" % (name, len(data)), data]


def whole_message_name(query: list, by_uid: bool, flags_changed: bool, modseq: bool) -> bytes | None:
    """`BODY[] ` or `RFC822 ` (after `UID %d ` in UID FETCH) when that is all each response holds, else None.

    `FETCH 1:* (BODY.PEEK[])` is how clients download a mailbox; its responses are then built by
    `whole_messages` with one format per message instead of the general item machinery."""
    if flags_changed or modseq or len(query) != 1:
        return None
    part = query[0]
    if part.type == "rfc822":
        name = b"RFC822 "
    elif (part.type == "body" and part.empty and not part.part and part.partialBegin is None
          and part.header is None and part.text is None and part.mime is None):
        name = b"BODY[] "
    else:
        return None
    return b"UID %d " + name if by_uid else name


def whole_messages(batch: list[tuple[int, int]], raws: list[bytes | None], name: bytes, position: Any) -> list[bytes]:
    """`* seq FETCH (<name>{n}CRLF<message>)CRLF` for each message still there, as pieces: each
    message its own piece, the short text between two messages one piece."""
    pieces: list[bytes] = []
    gap = b""
    uid_first = name.startswith(b"UID")
    for (seq, uid), raw in zip(batch, raws):
        if raw is None or uid not in position:
            continue           # gone from the disk, or expunged by another session meanwhile
        label = name % uid if uid_first else name
        pieces += [b"%b* %d FETCH (%b{%d}\r\n" % (gap, seq, label, len(raw)), raw]
        gap = b")\r\n"
    if gap:
        pieces.append(gap)
    return pieces


def _section_kind(part: Any) -> tuple[str, list[bytes] | None, bool]:
    """(HEADER | HEADER.FIELDS | TEXT | MIME | "", the header fields, whether they are negated)."""
    if part.header is not None:
        fields = list(part.header.fields or [])
        return ("HEADER.FIELDS" if fields else "HEADER"), fields, bool(part.header.negate)
    if part.text is not None:
        return "TEXT", None, False
    if part.mime is not None:
        return "MIME", None, False
    return "", None, False


def _section_label(numbers: tuple[int, ...], kind: str, fields: list[bytes] | None, negate: bool) -> bytes:
    """The section as echoed in the response: `1.2.HEADER.FIELDS.NOT (Subject)`."""
    label = b".".join(b"%d" % n for n in numbers)
    if kind:
        label += (b"." if label else b"") + kind.encode()
        if fields:
            label += (b".NOT" if negate else b"") + b" (" + b" ".join(fields) + b")"
    return label


def fetch_response(seq: int, uid: int, raw: bytes | None, meta: Meta | None, query: list, by_uid: bool,
                   flags_changed: bool, state: Any, view: View, modseq: bool = False) -> bytes | None:
    """One `* n FETCH (...)` line; None when the message is gone or its metadata is missing."""
    items = _items(uid, raw, meta, query, by_uid, flags_changed, state, view, modseq)
    if items is None:
        return None
    return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(item[0] if len(item) == 1 else b"".join(item) for item in items))


BIG_PIECE = 16 << 10     # a piece this long is written as it is; shorter ones are joined with their neighbours


def fetch_parts(seq: int, uid: int, raw: bytes | None, meta: Meta | None, query: list, by_uid: bool,
                flags_changed: bool, state: Any, view: View, modseq: bool = False) -> list[bytes] | None:
    """`fetch_response` as pieces for transport.writeSequence: message octets stay their own piece."""
    items = _items(uid, raw, meta, query, by_uid, flags_changed, state, view, modseq)
    return None if items is None else _coalesce(seq, items)


def _items(uid: int, raw: bytes | None, meta: Meta | None, query: list, by_uid: bool, flags_changed: bool,
           state: Any, view: View, modseq: bool = False) -> list[list[bytes]] | None:
    """The data items of one FETCH response, each as pieces; None when the message is gone or its metadata is missing."""
    if uid not in state.position:
        return None            # expunged by another session meanwhile: nothing to show
    flags = format_flags(state.flags_of(uid), uid in view.recent)
    items: list[list[bytes]] = []
    if by_uid and not any(p.type == "uid" for p in query):
        items.append([b"UID %d" % uid])
    for part in query:
        kind = part.type
        if kind == "uid":
            items.append([b"UID %d" % uid])
        elif kind == "flags":
            items.append([b"FLAGS " + flags])
        elif kind in _FROM_INDEX:
            if meta is None:
                return None
            items.append([_index_item(kind, meta)])
        elif raw is not None:
            items.append(body_item(part, raw))
    if flags_changed and not any(p.type == "flags" for p in query):
        items.append([b"FLAGS " + flags])
    if modseq:
        items.append([b"MODSEQ (%d)" % state.modseq_of(uid)])          # RFC 7162 3.1.4.2, imap/condstore.py
    return items


def _coalesce(seq: int, items: list[list[bytes]]) -> list[bytes]:
    """`* seq FETCH (items separated by spaces)`, in as few pieces as possible with big ones kept apart."""
    pieces: list[bytes] = []
    small = [b"* %d FETCH (" % seq]
    for n, item in enumerate(items):
        if n:
            small.append(b" ")
        for piece in item:
            if len(piece) >= BIG_PIECE:
                pieces += [b"".join(small), piece]
                small = []
            else:
                small.append(piece)
    small.append(b")\r\n")
    pieces.append(b"".join(small))
    return pieces


def _index_item(kind: str, meta: Meta) -> bytes:
    """An item answered from the metadata index alone."""
    if kind == "envelope":
        return b"ENVELOPE " + meta.envelope
    if kind == "internaldate":
        return b"INTERNALDATE " + internaldate(meta.internaldate)
    if kind == "rfc822size":
        return b"RFC822.SIZE %d" % meta.size
    return b"BODYSTRUCTURE " + meta.bodystructure


@implementer(interfaces.IPushProducer)
class Backpressure:
    """Registered with the transport during a big FETCH: `wait()` fires when its buffer has drained."""

    def __init__(self) -> None:
        self.paused = False
        self._waiting: list[defer.Deferred] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def wait(self) -> defer.Deferred:
        if not self.paused:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d


class FetchCommand:
    """FETCH and UID FETCH in the selected state; a session mixin."""

    transport: Any
    folder: Folder | None
    view: View | None
    _fetch_modseq = False          # set by imap/condstore.py for the FETCH being answered

    def do_FETCH(self, tag: bytes, ranges: list, query: list, uid: int = 0) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        try:
            items = view.resolve(ranges, bool(uid))
        except SequenceError as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        self._fetch_items(tag, items, query, bool(uid))

    def _fetch_items(self, tag: bytes, items: list[tuple[int, int]], query: list, uid: bool) -> None:
        """Answer FETCH for (sequence number, uid) pairs already chosen (imap/condstore.py filters CHANGEDSINCE)."""
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        kinds = {part.type for part in query}
        if uid:
            kinds.add("uid")
        seen = not view.readonly and marks_seen(query)
        d = self._mark_seen(items) if seen else defer.succeed(None)
        if kinds & _FROM_INDEX:
            d.addCallback(lambda _: self._run(folder.meta, [u for _, u in items], "bodystructure" in kinds))
        else:
            d.addCallback(lambda _: {})
        d.addCallback(self._stream, items, query, bool(uid), seen)
        if seen:
            d.addCallback(lambda _: self.transport.writeSequence(
                [line + b"\r\n" for line in self._adopt_quietly(folder.state, [u for _, u in items])]))
        d.addCallbacks(lambda _: self._completed(tag, b"FETCH"), self._fail, errbackArgs=(tag,))

    select_FETCH = (do_FETCH, Arguments.arg_seqset, Arguments.arg_fetchatt)

    def _mark_seen(self, items: list[tuple[int, int]]) -> defer.Deferred:
        folder = self.folder
        assert folder is not None
        current = folder.state
        unseen = [u for _, u in items if u in current.position and "\\Seen" not in current.flags_of(u)]
        if not unseen:
            return defer.succeed(None)
        return self._run(folder.store, unseen, "+", frozenset({"\\Seen"}))

    def _stream(self, metas: dict[int, Meta], items: list[tuple[int, int]], query: list, by_uid: bool,
                flags_changed: bool) -> defer.Deferred:
        """Write the FETCH responses: from the index alone when possible, else reading in batches."""
        needs_body = any(p.type in ("rfc822", "rfc822header", "rfc822text", "body") for p in query)
        view = self.view
        assert view is not None
        state = self.folder.state if self.folder is not None else view.known
        if not needs_body:
            chunk: list[bytes] = []
            for seq, uid in items:
                response = fetch_response(seq, uid, None, metas.get(uid), query, by_uid, flags_changed, state, view,
                                          self._fetch_modseq)
                if response is not None:
                    chunk.append(response)
            self.transport.writeSequence(chunk)
            return defer.succeed(None)
        return self._stream_bodies(list(items), metas, query, by_uid, flags_changed, state)

    @defer.inlineCallbacks
    def _stream_bodies(self, items: list[tuple[int, int]], metas: dict[int, Meta], query: list, by_uid: bool,
                       flags_changed: bool, state: Any) -> Any:
        """Read a batch in the pool while the previous one is being sent: disk and socket overlap,
        with at most two batches (2 x FETCH_BATCH_BYTES) in memory besides the transport's buffer
        and the socket's. On plain TCP the pieces go to the socket uncopied (appliance/bulkwrite.py)."""
        folder, view = self.folder, self.view
        assert folder is not None and view is not None
        send = _Sender(self.transport)
        whole = whole_message_name(query, by_uid, flags_changed, self._fetch_modseq)
        try:
            reading = self._run(read_batch, folder, [u for _, u in items[:256]]) if items else None
            while reading is not None and not self.transport.disconnecting and not send.stopped:
                raws = yield reading
                batch, items = items[:len(raws)], items[len(raws):]
                reading = self._run(read_batch, folder, [u for _, u in items[:256]]) if items else None
                if whole is not None:
                    yield send.write(whole_messages(batch, raws, whole, state.position))
                    continue
                out: list[bytes] = []
                for (seq, uid), raw in zip(batch, raws):
                    if raw is not None:
                        parts = fetch_parts(seq, uid, raw, metas.get(uid), query, by_uid, flags_changed, state, view,
                                            self._fetch_modseq)
                        if parts is not None:
                            out += parts
                yield send.write(out)
            if reading is not None:
                yield reading         # the client left: let the last read finish before unregistering
        finally:
            send.stop()


class _Sender:
    """The batches of one FETCH to the client: a PieceWriter on plain TCP, else the transport with
    Backpressure (TLS, COMPRESS, the tests' StringTransport). `write()` fires when more may follow."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._direct = PieceWriter.over(transport)
        self._pressure = Backpressure()
        if self._direct is not None:
            self._direct.start()
        else:
            transport.registerProducer(self._pressure, True)

    @property
    def stopped(self) -> bool:
        return self._direct is not None and self._direct.stopped

    def write(self, pieces: list[bytes]) -> defer.Deferred:
        if self._direct is not None:
            self._direct.write(pieces)
            return self._direct.drained()
        self._transport.writeSequence(pieces)
        return self._pressure.wait()

    def stop(self) -> None:
        if self._direct is not None:
            self._direct.stop()
        else:
            self._transport.unregisterProducer()
