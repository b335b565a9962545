"""IMAP SEARCH (RFC 3501 6.4.4, RFC 4731 ESEARCH): parse the keys into a tree, then test each message (worker thread).

Strings are compared as Unicode, folded as i;unicode-casemap (RFC 5051) folds them, the way
Dovecot does: header fields with their RFC 2047 encoded words decoded, bodies with their
transfer encoding and charset decoded. FROM, TO, CC, BCC, SUBJECT and the SENT* dates come from
the cached ENVELOPE; a message file is read only when a key needs other headers or the text,
and then once.
"""
from __future__ import annotations

import binascii
import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.mail.imap4 import IllegalClientResponse

from appliance import message
import appliance.imap.envelope as envelope
from appliance.imap.backend import Meta, mime
from appliance.imap.parse import Str, tokenize
from appliance.imap.view import Range, SequenceError, _bounds, parse_set

MAX_DEPTH = 32
CHARSETS = ("US-ASCII", "UTF-8")
RETURN_OPTIONS = ("MIN", "MAX", "COUNT", "ALL")
_FLAG_KEYS = {"ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
              "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
              "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
              "UNSEEN": ("\\Seen", False)}
_ENVELOPE_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_MAX_PARTS = 100            # MIME parts of one message whose text a BODY or TEXT key reads

Node = tuple


class SearchError(ValueError):
    """Unparseable search keys: BAD."""


class CharsetError(ValueError):
    """A CHARSET we do not search in: NO [BADCHARSET] (RFC 3501 6.4.4)."""


@dataclass
class Program:
    """A parsed SEARCH (or SORT/THREAD) command after its own leading arguments."""

    nodes: list[Node]
    returns: list[str] | None = None     # RFC 4731 RETURN options; None: a plain SEARCH response


def parse(line: bytes) -> list[Node]:
    """The search keys of one line (no literals, no CHARSET) as nodes, all of which must match."""
    try:
        tokens = tokenize([line])
    except IllegalClientResponse as exc:
        raise SearchError(str(exc)) from None
    return keys(tokens)


def program(tokens: list, allow_return: bool = True) -> Program:
    """SEARCH's arguments (RFC 3501 9 `search`, RFC 4731 `search-return-opts`): [RETURN (...)] [CHARSET x] keys."""
    returns = None
    if allow_return and _is_word(tokens, "RETURN"):
        tokens.pop(0)
        returns = return_options(tokens)
    if _is_word(tokens, "CHARSET"):
        tokens.pop(0)
        charset_of(tokens)            # US-ASCII is read as UTF-8, its superset
    return Program(keys(tokens), returns)


def return_options(tokens: list) -> list[str]:
    """`(MIN MAX COUNT ALL)`; an empty list means ALL (RFC 4731 3.1)."""
    if not tokens or not isinstance(tokens[0], list):
        raise SearchError("RETURN needs a list")
    options = []
    for word in tokens.pop(0):
        option = word.decode("ascii", "replace").upper() if isinstance(word, bytes) else ""
        if option not in RETURN_OPTIONS:
            raise SearchError("Unknown RETURN option")
        options.append(option)
    return options or ["ALL"]


def charset_of(tokens: list) -> str:
    """The CHARSET argument (an astring): one we search in, or CharsetError."""
    if not tokens or isinstance(tokens[0], list):
        raise SearchError("Missing charset")
    name = tokens.pop(0).decode("ascii", "replace").upper()
    if name not in CHARSETS:
        raise CharsetError(name)
    return name


def keys(tokens: list) -> list[Node]:
    """The search keys (RFC 3501 9 `search-key`), all of which must match."""
    nodes = []
    while tokens:
        nodes.append(_node(tokens, 0))
    if not nodes:
        raise SearchError("Missing search keys")
    return nodes


def _is_word(tokens: list, word: str) -> bool:
    return bool(tokens) and isinstance(tokens[0], bytes) and not isinstance(tokens[0], Str) \
        and tokens[0].upper() == word.encode()


def _word(tokens: list) -> bytes:
    if not tokens or isinstance(tokens[0], list):
        raise SearchError("Missing argument")
    return tokens.pop(0)


def _string(tokens: list) -> str:
    """A search string, decoded (US-ASCII searches are read as UTF-8 too, as Dovecot does) and folded."""
    raw = _word(tokens)
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SearchError("Search string is not UTF-8") from None
    return envelope.fold(envelope.squeeze(value))


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
        if not inner:
            raise SearchError("Empty parentheses")
        nodes = []
        while inner:
            nodes.append(_node(inner, depth + 1))
        return ("AND", nodes)
    key = token.decode("ascii", "replace").upper() if not isinstance(token, Str) else ""
    if key in ("ALL", "NEW", "OLD", "RECENT"):
        return (key,)
    if key in _FLAG_KEYS:
        return ("FLAG",) + _FLAG_KEYS[key]
    if key in ("KEYWORD", "UNKEYWORD"):
        # Keywords compare case-insensitively (RFC 3501 2.3.2), so the node holds the lower-case name.
        return ("KEYWORD", _word(tokens).decode("ascii", "replace").lower(), key == "KEYWORD")
    if key in _ENVELOPE_KEYS:
        return ("ENVELOPE", key, _string(tokens))
    if key == "HEADER":
        return ("HEADER", _word(tokens).lower(), _string(tokens))
    if key in ("BODY", "TEXT"):
        return (key, _string(tokens))
    if key in _DATE_KEYS:
        return (key, _date(_word(tokens)))
    if key in ("LARGER", "SMALLER"):
        word = _word(tokens)
        if not word.isdigit() or len(word) > 20:
            raise SearchError("Bad number")
        return (key, int(word))
    if key == "NOT":
        return ("NOT", _node(tokens, depth + 1))
    if key == "OR":
        return ("OR", _node(tokens, depth + 1), _node(tokens, depth + 1))
    try:
        if key == "UID":
            return ("UID", parse_set(_word(tokens)))
        if isinstance(token, Str):
            raise SequenceError("a string is no search key")
        return ("SEQ", parse_set(token))
    except SequenceError:
        raise SearchError("Unknown search key") from None


@dataclass
class Candidate:
    seq: int
    uid: int
    flags: frozenset[str]
    recent: bool


class _Message:
    """A message under test: its file read, and its text decoded, only when a key needs them."""

    def __init__(self, candidate: Candidate, read: Callable[[int], bytes], meta: Meta | None):
        self.c = candidate
        self._read = read
        self.meta = meta
        self._raw: bytes | None = None
        self._body: str | None = None
        self._head: str | None = None

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

    @property
    def envelope(self) -> envelope.Envelope:
        return envelope.safe(self.meta.envelope) if self.meta is not None else envelope.EMPTY

    def decoded_head(self) -> str:
        """Every header field, encoded words decoded, folded: what TEXT searches before the body."""
        if self._head is None:
            self._head = envelope.fold(envelope.squeeze("\n".join(
                name.decode("latin-1") + ": " + envelope.decode_header(value)
                for name, value in message.headers(self.head))))
        return self._head

    def decoded_body(self) -> str:
        if self._body is None:
            self._body = envelope.fold(envelope.squeeze(" ".join(body_texts(self.raw))))
        return self._body


def body_texts(raw: bytes) -> list[str]:
    """The text of each text part (and of each text part of attached messages), decoded (RFC 2045 6, 2046 4.1.2)."""
    texts: list[str] = []
    stack = [mime.parse(raw)]
    while stack and len(texts) < _MAX_PARTS:
        part = stack.pop()
        if part.children:
            stack.extend(reversed(part.children))
        elif part.message is not None:
            stack.append(part.message)
        elif part.maintype == b"text":
            texts.append(_part_text(part))
    return texts


def _part_text(part: mime.Part) -> str:
    encoding = (part.header(b"content-transfer-encoding") or b"").strip().lower()
    body = part.body
    try:
        if encoding == b"base64":
            body = binascii.a2b_base64(body)
        elif encoding == b"quoted-printable":
            body = binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        pass
    charset = dict((k.lower(), v) for k, v in part.params).get(b"charset", b"").strip(b'"').decode("ascii", "replace")
    if charset and charset.lower() not in ("us-ascii", "utf-8", "utf8"):
        try:
            return body.decode(charset, "replace")
        except (LookupError, ValueError):
            pass
    return envelope.text(body)


def _day(seconds: float) -> tuple[int, int, int]:
    return time.gmtime(seconds)[:3]


def _sent_day(m: _Message) -> tuple[int, int, int] | None:
    """SENT* keys compare the Date header's own date, its zone ignored (RFC 3501 6.4.4)."""
    date = m.envelope.date
    if not date:
        return None
    try:
        parsed = email.utils.parsedate_tz(date.decode("latin-1"))
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


def _envelope_text(m: _Message, key: str) -> str:
    env = m.envelope
    if key == "SUBJECT":
        return envelope.fold(envelope.squeeze(envelope.decode_header(env.subject)))
    addresses = {"FROM": env.sender, "TO": env.to, "CC": env.cc, "BCC": env.bcc}[key]
    return envelope.fold(envelope.addresses_text(addresses))


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
    if kind == "KEYWORD":
        return any(flag.lower() == node[1] for flag in m.c.flags if not flag.startswith("\\")) == node[2]
    if kind == "RECENT":
        return m.c.recent
    if kind == "NEW":
        return m.c.recent and "\\Seen" not in m.c.flags
    if kind == "OLD":
        return not m.c.recent
    if kind == "UID":
        return _in_set(m.c.uid, node[1], last_uid)
    if kind == "SEQ":
        return _in_set(m.c.seq, node[1], last_seq)
    if kind == "ENVELOPE":
        return node[2] in _envelope_text(m, node[1])
    if kind == "HEADER":
        values = [value for name, value in message.headers(m.head) if name.lower() == node[1]]
        return any(node[2] in envelope.fold(envelope.squeeze(envelope.decode_header(v))) for v in values)
    if kind == "BODY":
        return node[1] in m.decoded_body()
    if kind == "TEXT":
        return node[1] in m.decoded_head() or node[1] in m.decoded_body()
    if kind in ("LARGER", "SMALLER"):
        size = m.meta.size if m.meta else len(m.raw)
        return size > node[1] if kind == "LARGER" else size < node[1]
    if kind in ("BEFORE", "ON", "SINCE"):
        return m.meta is not None and _compare(_day(m.meta.internaldate), kind, node[1])
    if kind.startswith("SENT"):
        return _compare(_sent_day(m), kind, node[1])
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
    return run_with_meta(nodes, candidates, read, meta, False)[0]


def run_with_meta(nodes: list[Node], candidates: list[Candidate], read: Callable[[int], bytes],
                  meta: Callable[[list[int]], dict[int, Meta]], want_meta: bool
                  ) -> tuple[list[Candidate], dict[int, Meta]]:
    """Blocking: the matching candidates, and the Meta of all candidates when asked (SORT, THREAD)."""
    metas = meta([c.uid for c in candidates]) if want_meta or _needs_meta(nodes) else {}
    last_seq = candidates[-1].seq if candidates else 0
    last_uid = candidates[-1].uid if candidates else 0
    if nodes == [("ALL",)]:
        return list(candidates), metas
    found = []
    for candidate in candidates:
        under_test = _Message(candidate, read, metas.get(candidate.uid))
        if all(matches(node, under_test, last_seq, last_uid) for node in nodes):
            found.append(candidate)
    return found, metas


_META_KEYS = {"LARGER", "SMALLER", "BEFORE", "ON", "SINCE", "ENVELOPE", "SENTBEFORE", "SENTON", "SENTSINCE"}


def _needs_meta(nodes: list[Node]) -> bool:
    """True when a size, date or envelope key appears anywhere in the tree."""
    for node in nodes:
        if node[0] in _META_KEYS:
            return True
        children = node[1] if node[0] == "AND" else [n for n in node[1:] if isinstance(n, tuple)]
        if node[0] in ("AND", "NOT", "OR") and _needs_meta(children):
            return True
    return False


# ---------------------------------------------------------------- ESEARCH (RFC 4731)

def sequence_set(numbers: list[int]) -> bytes:
    """Numbers as a sequence-set, runs going up by one as ranges: 1,2,3,5 -> `1:3,5`.

    In the order given: ESORT's ALL keeps the sort order this way (RFC 5267 3.2).
    """
    parts, start, prev = [], None, None
    for number in numbers:
        if start is not None and number == prev + 1:
            prev = number
            continue
        if start is not None:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = number
    if start is not None:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)


def esearch(tag: bytes, numbers: list[int], options: list[str], by_uid: bool, sorted_order: bool = False) -> bytes:
    """`ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9` (RFC 4731 3.1); nothing matched: COUNT 0 only."""
    words = [b'ESEARCH (TAG "' + tag.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'")']
    if by_uid:
        words.append(b"UID")
    if numbers:
        if "MIN" in options:
            words.append(b"MIN %d" % (numbers[0] if sorted_order else min(numbers)))
        if "MAX" in options:
            words.append(b"MAX %d" % (numbers[-1] if sorted_order else max(numbers)))
    if "COUNT" in options:
        words.append(b"COUNT %d" % len(numbers))
    if numbers and "ALL" in options:
        words.append(b"ALL " + sequence_set(numbers if sorted_order else sorted(numbers)))
    return b" ".join(words)
