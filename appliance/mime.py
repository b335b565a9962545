"""Raw-byte MIME structure for IMAP: sections, ENVELOPE and BODYSTRUCTURE without re-encoding anything.

Works on the message exactly as stored (CRLF form), so BODY[1.2] returns the octets the sender
wrote. Header fields are read by the one header parser, appliance.message; this module only
splits entities and renders what IMAP asks for. Stock Twisted builds these from decoded `str` headers: it lower-cases parameter values
(breaking boundaries and file names), fails on parameters without `=` and on 8-bit headers.
"""
from __future__ import annotations

import email.utils
import functools
import re
from dataclasses import dataclass, field

from appliance import message

MAX_DEPTH = 16          # nesting beyond this is served as an opaque leaf: no recursion bombs
_PARAM = re.compile(rb';\s*([^\s=;]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;]*))?')


class SectionError(ValueError):
    """The client asked for a part the message does not have."""


@dataclass
class Part:
    """One MIME entity: its header block (with the blank line), its body, and what is inside."""

    head: bytes
    body: bytes
    maintype: bytes = b"text"
    subtype: bytes = b"plain"
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    children: list["Part"] = field(default_factory=list)
    message: "Part | None" = None     # the encapsulated message of a message/rfc822 part
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)   # parsed once, by appliance.message

    def header(self, name: bytes) -> bytes | None:
        return message.get(self.headers, name)


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    """Header block (ending in the empty line) and body."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return (raw if raw.endswith(b"\r\n") or not raw else raw + b"\r\n"), b""
    return raw[:end + 4], raw[end + 4:]


_BLANK_LINE = re.compile(rb"\n\r?\n")


def head_block(stored: bytes) -> bytes:
    """split_head(crlf(stored))[0] without converting the body: what ENVELOPE needs of a stored message.

    A blank line of the CRLF form is `\n`, an optional `\r`, `\n` in the stored form (LF or
    CRLF); crlf() works line by line, so converting only the octets up to it gives the same head.
    """
    if stored.startswith(b"\n") or stored.startswith(b"\r\n"):
        return b"\r\n"
    found = _BLANK_LINE.search(stored)
    prefix = stored if found is None else stored[:found.end()]
    return split_head(crlf(prefix))[0]


def header_fields(head: bytes, names: list[bytes], negate: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT: the chosen fields as stored, then the empty line."""
    wanted = {n.lower() for n in names}
    kept = [raw for name, raw in message.fields(head) if name and (name.lower() in wanted) != negate]
    return b"".join(kept) + b"\r\n"


def _content_type(fields: list[tuple[bytes, bytes]], default: tuple[bytes, bytes]) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    value = message.get(fields, b"content-type")
    if not value:
        return default[0], default[1], []
    kind, _, rest = value.partition(b";")
    main, _, sub = kind.strip().partition(b"/")
    if not main or not sub:
        return b"text", b"plain", []
    return main.strip().lower(), sub.strip().lower(), parse_params(b";" + rest)


def parse_params(text: bytes) -> list[tuple[bytes, bytes]]:
    """`; a=b; c="d e"` -> [(b"a", b"b"), (b"c", b"d e")]; a name without a value is kept with an empty one."""
    params = []
    for match in _PARAM.finditer(text):
        value = (match.group(2) or b"").strip()
        if value.startswith(b'"') and value.endswith(b'"') and len(value) >= 2:
            value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
        params.append((match.group(1), value))
    return params


def _param(params: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in params:
        if key.lower() == name:
            return value
    return None


def parse(raw: bytes, default: tuple[bytes, bytes] = (b"text", b"plain"), depth: int = 0) -> Part:
    """The MIME tree of one entity in CRLF form."""
    head, body = split_head(raw)
    fields = message.headers(head)
    main, sub, params = _content_type(fields, default)
    part = Part(head, body, main, sub, params, headers=fields)
    if depth >= MAX_DEPTH:
        return part
    if main == b"multipart":
        boundary = _param(params, b"boundary")
        child_default = (b"message", b"rfc822") if sub == b"digest" else (b"text", b"plain")
        if boundary:
            part.children = [parse(chunk, child_default, depth + 1) for chunk in _split_multipart(body, boundary)]
    elif (main, sub) == (b"message", b"rfc822"):
        part.message = parse(body, depth=depth + 1)
    return part


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The body parts between `--boundary` lines (RFC 2046 5.1.1); the preamble and epilogue are dropped."""
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)")
    chunks, start = [], None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start:match.start()])
        if match.group(1):
            return chunks
        start = match.end()
    if start is not None:
        chunks.append(body[start:])
    return chunks


# ---------------------------------------------------------------- sections (RFC 3501 6.4.5)

def find_part(root: Part, numbers: tuple[int, ...]) -> Part:
    """Walk a section number (1-based) down the tree; SectionError when it leads nowhere."""
    node = root
    for depth, number in enumerate(numbers):
        if depth and node.message is not None:
            node = node.message
        if node.children:
            if not 1 <= number <= len(node.children):
                raise SectionError("no such part")
            node = node.children[number - 1]
        elif node.maintype == b"multipart" or number != 1:
            raise SectionError("no such part")
    return node


def section(raw: bytes, numbers: tuple[int, ...], kind: str, fields: list[bytes] | None = None,
            negate: bool = False) -> bytes:
    """The octets of BODY[<numbers>.<kind>]; kind is "", "HEADER", "HEADER.FIELDS", "TEXT" or "MIME"."""
    if not numbers and not kind:
        return raw
    root = parse(raw)
    node = find_part(root, numbers)
    if kind == "MIME":
        if not numbers:
            raise SectionError("MIME needs a part number")
        return node.head
    if kind in ("HEADER", "HEADER.FIELDS", "TEXT"):
        if numbers:
            if node.message is None:
                raise SectionError("not a message part")
            node = node.message
        if kind == "TEXT":
            return node.body
        if kind == "HEADER":
            return node.head
        return header_fields(node.head, fields or [], negate)
    if not numbers:
        return raw
    return node.body


# ---------------------------------------------------------------- IMAP encodings

_NEEDS_LITERAL = re.compile(rb"[\x00\r\n\x80-\xff]")


def nstring(value: bytes | None) -> bytes:
    """NIL, a quoted string, or a literal when the value holds CR, LF, NUL or 8-bit octets."""
    if value is None:
        return b"NIL"
    if len(value) > 1000 or _NEEDS_LITERAL.search(value):
        return b"{%d}\r\n%b" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# The everyday forms of an address list, `Name <local@domain>` and `local@domain` separated by
# commas, with no quotes, comments, groups, route or dots in the name: for these the answer of
# email.utils.getaddresses is known without its character-by-character parser (several times
# slower, and the bulk of describing a message). Anything else goes to getaddresses.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\xff"
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_SIMPLE_ADDRESS = re.compile(rf"[ \t\r\n]*(?:([{_ATEXT} \t\r\n]*?)[ \t\r\n]*<({_DOT_ATOM}@{_DOT_ATOM})>"
                             rf"|({_DOT_ATOM}@{_DOT_ATOM}))[ \t\r\n]*")


def address_list(text: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header, as email.utils.getaddresses gives them."""
    pairs = []
    for item in text.split(","):
        match = _SIMPLE_ADDRESS.fullmatch(item) if len(item) <= 512 else None    # bounded backtracking
        if match is None:
            return email.utils.getaddresses([text])
        name, bracketed, bare = match.groups()
        pairs.append((" ".join(name.split()), bracketed) if bare is None else ("", bare))
    return pairs


@functools.lru_cache(maxsize=4096)
def _addresses(value: bytes | None) -> bytes:
    """An address list as ENVELOPE renders it. Cached: a folder's messages come from and go to the
    same few people, so most From and To values have been rendered before."""
    if value is None:
        return b"NIL"
    text = value.decode("latin-1")
    items = []
    for name, addr in address_list(text):
        if not addr and not name:
            continue
        mailbox, _, host = addr.rpartition("@") if "@" in addr else (addr, "", "")
        fields = [name or None, None, mailbox or None, host or None]
        items.append(b"(" + b" ".join(nstring(f.encode("latin-1") if f is not None else None) for f in fields) + b")")
    return b"(" + b"".join(items) + b")" if items else b"NIL"


_ENVELOPE_FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to",
                    b"message-id")


def envelope(head: bytes) -> bytes:
    """The ENVELOPE of a header block: date subject from sender reply-to to cc bcc in-reply-to message-id."""
    first: dict[bytes, bytes] = {}
    for name, value in message.headers(head):
        key = name.lower()
        if key in _ENVELOPE_FIELDS and key not in first:
            first[key] = value
    get = first.get
    sender = _addresses(get(b"from"))
    fields = [
        nstring(get(b"date")), nstring(get(b"subject")), sender,
        _addresses(get(b"sender")) if get(b"sender") else sender,
        _addresses(get(b"reply-to")) if get(b"reply-to") else sender,
        _addresses(get(b"to")), _addresses(get(b"cc")), _addresses(get(b"bcc")),
        nstring(get(b"in-reply-to")), nstring(get(b"message-id")),
    ]
    return b"(" + b" ".join(fields) + b")"


def _plist(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(nstring(k.upper()) + b" " + nstring(v) for k, v in params) + b")"


def _disposition(part: Part) -> bytes:
    value = part.header(b"content-disposition")
    if not value:
        return b"NIL"
    kind, _, rest = value.partition(b";")
    return b"(" + nstring(kind.strip().upper()) + b" " + _plist(parse_params(b";" + rest)) + b")"


def _lines(body: bytes) -> int:
    return body.count(b"\r\n") + (1 if body and not body.endswith(b"\r\n") else 0)


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (not extended) of a parsed entity."""
    if part.children:
        inner = b"".join(bodystructure(child, extended) for child in part.children)
        fields = [inner, nstring(part.subtype.upper())]
        if extended:
            fields += [_plist(part.params), _disposition(part), b"NIL", b"NIL"]
        return b"(" + b" ".join(fields) + b")"
    params = part.params
    if part.maintype == b"text" and _param(params, b"charset") is None:
        params = [(b"CHARSET", b"US-ASCII")] + params
    encoding = (part.header(b"content-transfer-encoding") or b"7BIT").upper()
    fields = [nstring(part.maintype.upper()), nstring(part.subtype.upper()), _plist(params),
              nstring(part.header(b"content-id")), nstring(part.header(b"content-description")),
              nstring(encoding), b"%d" % len(part.body)]
    if part.message is not None:
        fields += [envelope(part.message.head), bodystructure(part.message, extended), b"%d" % _lines(part.body)]
    elif part.maintype == b"text":
        fields.append(b"%d" % _lines(part.body))
    if extended:
        fields += [nstring(part.header(b"content-md5")), _disposition(part), b"NIL", b"NIL"]
    return b"(" + b" ".join(fields) + b")"


def crlf(data: bytes) -> bytes:
    """Stored form (LF) to wire form (CRLF), leaving lines that already end in CRLF alone.

    Most stored messages hold no CR at all: one pass (and one copy) then does it."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire_size(data: bytes) -> int:
    """len(crlf(data)) without building it: every bare LF becomes CRLF (POP3 LIST, RFC822.SIZE)."""
    if b"\r" not in data:                 # the usual stored form: no need to count CRLFs
        return len(data) + data.count(b"\n")
    return len(data) + data.count(b"\n") - data.count(b"\r\n")
