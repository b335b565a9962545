"""IMAP SEARCH (RFC 3501 6.4.4): parse the keys into a tree, then test each message (worker thread).

Messages are read only when a key needs their header or text, and then once each.
"""
from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.mail.imap4 import parseNestedParens

from appliance import message
from appliance.imap.backend import Meta, mime
from appliance.imap.view import Range, SequenceError, _bounds, parse_set

MAX_DEPTH = 32
_FLAG_KEYS = {"ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
              "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
              "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
              "UNSEEN": ("\\Seen", False)}
_HEADER_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]

Node = tuple


class SearchError(ValueError):
    """Unparseable search keys: BAD."""


def parse(line: bytes) -> list[Node]:
    """The search keys of a SEARCH command (after any CHARSET) as a list of nodes, all of which must match."""
    try:
        tokens = parseNestedParens(line, 0)
    except Exception as exc:      # parseNestedParens raises assorted errors on bad nesting
        raise SearchError("Unbalanced parentheses") from exc
    nodes = []
    while tokens:
        nodes.append(_node(tokens, 0))
    if not nodes:
        raise SearchError("Missing search keys")
    return nodes


def _word(tokens: list) -> bytes:
    if not tokens or isinstance(tokens[0], list):
        raise SearchError("Missing argument")
    token = tokens.pop(0)
    return token[0] if isinstance(token, tuple) else token


def _date(text: bytes) -> tuple[int, int, int]:
    try:
        day, month, year = text.decode("ascii").split("-")
        return int(year), _MONTHS.index(month.lower()) + 1, int(day)
    except (ValueError, UnicodeDecodeError):
        raise SearchError("Bad date") from None


def _node(tokens: list, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise SearchError("Search keys nested too deeply")
    token = tokens.pop(0)
    if isinstance(token, list):
        inner = list(token)
        nodes = []
        while inner:
            nodes.append(_node(inner, depth + 1))
        return ("AND", nodes)
    key = token.decode("ascii", "replace").upper() if isinstance(token, bytes) else ""
    if key in ("ALL", "NEW", "OLD", "RECENT"):
        return (key,)
    if key in _FLAG_KEYS:
        return ("FLAG",) + _FLAG_KEYS[key]
    if key in ("KEYWORD", "UNKEYWORD"):
        _word(tokens)
        return ("FLAG", "\\Keyword-unsupported", key == "KEYWORD")
    if key in _HEADER_KEYS:
        return ("HEADER", key.lower().encode(), _word(tokens))
    if key == "HEADER":
        return ("HEADER", _word(tokens).lower(), _word(tokens))
    if key in ("BODY", "TEXT"):
        return (key, _word(tokens))
    if key in _DATE_KEYS:
        return (key, _date(_word(tokens)))
    if key == "MODSEQ":
        return _modseq_node(tokens)
    if key in ("LARGER", "SMALLER"):
        word = _word(tokens)
        if not word.isdigit():
            raise SearchError("Bad number")
        return (key, int(word))
    if key == "NOT":
        return ("NOT", _node(tokens, depth + 1))
    if key == "OR":
        return ("OR", _node(tokens, depth + 1), _node(tokens, depth + 1))
    try:
        if key == "UID":
            return ("UID", parse_set(_word(tokens)))
        return ("SEQ", parse_set(token))
    except SequenceError:
        raise SearchError("Unknown search key") from None


def _modseq_node(tokens: list) -> Node:
    """RFC 7162 3.1.5 `MODSEQ [<entry-name> <entry-type-req>] <mod-sequence-valzer>`: we keep one MODSEQ per
    message (not per flag), so an entry name is read and has no effect."""
    word = _word(tokens)
    if not word.isdigit() and tokens:
        _word(tokens)                       # entry-type-req: priv / shared / all
        word = _word(tokens)
    if not word.isdigit() or len(word) > 19:
        raise SearchError("Bad mod-sequence")
    return ("MODSEQ", int(word))


def uses_modseq(nodes: list[Node]) -> bool:
    """Whether a MODSEQ key appears anywhere in the tree (the result then ends in `(MODSEQ n)`)."""
    for node in nodes:
        if node[0] == "MODSEQ":
            return True
        children = node[1] if node[0] == "AND" else [n for n in node[1:] if isinstance(n, tuple)]
        if node[0] in ("AND", "NOT", "OR") and uses_modseq(children):
            return True
    return False


@dataclass
class Candidate:
    seq: int
    uid: int
    flags: frozenset[str]
    recent: bool
    modseq: int = 0


class _Message:
    """A message under test, read lazily."""

    def __init__(self, candidate: Candidate, read: Callable[[int], bytes], meta: Meta | None):
        self.c = candidate
        self._read = read
        self.meta = meta
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            try:
                self._raw = self._read(self.c.uid)
            except (KeyError, OSError):
                self._raw = b""
        return self._raw

    @property
    def head(self) -> bytes:
        return mime.split_head(self.raw)[0]


def _contains(haystack: bytes, needle: bytes) -> bool:
    return needle.lower() in haystack.lower()


def _day(seconds: float) -> tuple[int, int, int]:
    return time.gmtime(seconds)[:3]


def _sent_day(head: bytes) -> tuple[int, int, int] | None:
    value = message.get(head, b"date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value.decode("latin-1"))
    except (TypeError, ValueError):
        return None
    return tuple(parsed[:3]) if parsed else None  # type: ignore[return-value]


def _compare(day, kind: str, wanted) -> bool:
    if day is None:
        return False
    if kind.endswith("BEFORE"):
        return day < wanted
    if kind.endswith("ON"):
        return day == wanted
    return day >= wanted


def matches(node: Node, m: _Message, last_seq: int, last_uid: int) -> bool:
    kind = node[0]
    if kind == "ALL":
        return True
    if kind == "AND":
        return all(matches(n, m, last_seq, last_uid) for n in node[1])
    if kind == "NOT":
        return not matches(node[1], m, last_seq, last_uid)
    if kind == "OR":
        return matches(node[1], m, last_seq, last_uid) or matches(node[2], m, last_seq, last_uid)
    if kind == "FLAG":
        return (node[1] in m.c.flags) == node[2]
    if kind == "RECENT":
        return m.c.recent
    if kind == "NEW":
        return m.c.recent and "\\Seen" not in m.c.flags
    if kind == "OLD":
        return not m.c.recent
    if kind == "MODSEQ":
        return m.c.modseq >= node[1]
    if kind == "UID":
        return _in_set(m.c.uid, node[1], last_uid)
    if kind == "SEQ":
        return _in_set(m.c.seq, node[1], last_seq)
    if kind == "HEADER":
        values = [raw.split(b":", 1)[1] for name, raw in message.fields(m.head) if name.lower() == node[1]]
        return any(_contains(value, node[2]) for value in values)
    if kind == "BODY":
        return _contains(mime.split_head(m.raw)[1], node[1])
    if kind == "TEXT":
        return _contains(m.raw, node[1])
    if kind in ("LARGER", "SMALLER"):
        size = m.meta.size if m.meta else len(m.raw)
        return size > node[1] if kind == "LARGER" else size < node[1]
    if kind in ("BEFORE", "ON", "SINCE"):
        return m.meta is not None and _compare(_day(m.meta.internaldate), kind, node[1])
    if kind.startswith("SENT"):
        return _compare(_sent_day(m.head), kind, node[1])
    return False


def _in_set(number: int, ranges: list[Range], star: int) -> bool:
    for item in ranges:
        low, high = _bounds(item, star)
        if low <= number <= high:
            return True
    return False


def run(nodes: list[Node], candidates: list[Candidate], read: Callable[[int], bytes],
        meta: Callable[[list[int]], dict[int, Meta]]) -> list[Candidate]:
    """Blocking: the candidates matching every node."""
    metas = meta([c.uid for c in candidates]) if _needs_meta(nodes) else {}
    last_seq = candidates[-1].seq if candidates else 0
    last_uid = candidates[-1].uid if candidates else 0
    found = []
    for candidate in candidates:
        under_test = _Message(candidate, read, metas.get(candidate.uid))
        if all(matches(node, under_test, last_seq, last_uid) for node in nodes):
            found.append(candidate)
    return found


_META_KEYS = {"LARGER", "SMALLER", "BEFORE", "ON", "SINCE"}


def _needs_meta(nodes: list[Node]) -> bool:
    """True when a size or internal-date key appears anywhere in the tree."""
    for node in nodes:
        if node[0] in _META_KEYS:
            return True
        children = node[1] if node[0] == "AND" else [n for n in node[1:] if isinstance(n, tuple)]
        if node[0] in ("AND", "NOT", "OR") and _needs_meta(children):
            return True
    return False
