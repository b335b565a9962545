"""The one header parser: read a wire-form message's header block, unfold, find, add, remove and rewrite fields.

Everything works on bytes, so 8-bit header text passes through untouched, and on CRLF or bare
LF line ends alike (a script's message before it is put in wire form). The rules, in one place:
- The header block is every line before the first empty line; the rest (from that empty line
  on) is the body side. A message without an empty line is all header.
- A message whose first line is not a field (no colon, or indented, or empty) has no header
  block at all: it is all body, and fields added to it get an empty line after them.
- A field starts on a line that is not indented; its name is what precedes the first colon
  (trailing blanks dropped) and is compared case-insensitively. An indented line continues the
  field above it (folding). A line with no colon keeps its place but has no name.
Every function leaves what it does not change byte for byte as it was.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

Name = str | bytes
Header = tuple[bytes, bytes]          # (name as written, unfolded value)

_EMPTY_LINE = re.compile(rb"\n\r?\n")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
_BREAK = re.compile(rb"\r?\n")
_WSP = (b" ", b"\t")


def _bytes(text: Name) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "replace")


def _key(name: Name) -> bytes:
    return _bytes(name).lower()


def has_header_block(raw: bytes) -> bool:
    """The first line is a field: the message starts with headers rather than with its body."""
    end = raw.find(b"\n")
    first = raw if end < 0 else raw[:end]
    return b":" in first and first[:1] not in _WSP


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header block, rest), with `head + rest == raw`.

    The block holds its fields with their line ends but not the empty line; the rest starts with
    that empty line, or is b"" when the message has none.
    """
    head = header_block(raw)
    return head, raw[len(head):]


def header_block(raw: bytes) -> bytes:
    """The header block alone (split's first part), without copying the body: what readers of
    fields need, on every message of every size."""
    if not has_header_block(raw):
        return b""
    match = _EMPTY_LINE.search(raw)
    return raw if match is None else raw[:match.start() + 1]


def body(raw: bytes) -> bytes:
    """What follows the empty line that ends the header block; all of `raw` when it has no header block."""
    head, rest = split(raw)
    if not head:
        return raw
    return rest[2:] if rest.startswith(b"\r\n") else rest[1:]


def fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(name, field as written, folding and line end included) for each field of the header block.

    Joined back together, the fields are the header block again, byte for byte. `raw` may be a
    whole message or a header block alone.
    """
    found: list[tuple[bytes, bytes]] = []
    for line in _LINE.findall(header_block(raw)):
        if line[:1] in _WSP and found:
            name, text = found[-1]
            found[-1] = (name, text + line)
        else:
            found.append((_name_of(line), line))
    return found


def _name_of(line: bytes) -> bytes:
    if line[:1] in _WSP:
        return b""
    name, colon, _ = line.partition(b":")
    return name.rstrip(b" \t") if colon else b""


def unfold(field: bytes) -> bytes:
    """The value of one field as written: after the colon, line breaks removed, blanks stripped at both ends."""
    value = field.partition(b":")[2]
    return _BREAK.sub(b"", value).strip()


def headers(raw: bytes) -> list[Header]:
    """(name as written, unfolded value) for each named field, in order: parse once, `get` many times."""
    return [(name, unfold(text)) for name, text in fields(raw) if name]


def get_all(source: bytes | list[Header], name: Name) -> list[bytes]:
    """Every value of the field `name`, in order; `source` is a message, a header block or `headers()`."""
    key = _key(name)
    pairs = headers(source) if isinstance(source, bytes) else source
    return [value for field_name, value in pairs if field_name.lower() == key]


def get(source: bytes | list[Header], name: Name) -> bytes | None:
    """The first value of the field `name`, unfolded; None when the message has no such field."""
    values = get_all(source, name)
    return values[0] if values else None


def has(source: bytes | list[Header], name: Name) -> bool:
    return bool(get_all(source, name))


def field(name: Name, value: Name) -> bytes:
    """One field in wire form; `value` may hold its own folding ("...\\r\\n\\tmore")."""
    return _bytes(name) + b": " + _bytes(value) + b"\r\n"


def prepend(raw: bytes, *new: tuple[Name, Name]) -> bytes:
    """`raw` with the fields `new` (name, value) on top, in the order given (trace fields go first).

    A message without a header block gets an empty line after them, so its body stays a body.
    """
    if not new:
        return raw
    added = b"".join(field(name, value) for name, value in new)
    return added + raw if has_header_block(raw) else added + b"\r\n" + raw


def remove(raw: bytes, *names: Name) -> bytes:
    """`raw` without any field named in `names` (Bcc before a message leaves)."""
    keys = {_key(name) for name in names}
    return _rebuild(raw, lambda name, text: b"" if name.lower() in keys else text)


def remove_matching(raw: bytes, name: Name, drop: Callable[[bytes], bool]) -> bytes:
    """`raw` without the fields `name` whose unfolded value `drop` accepts (a forged Authentication-Results).

    `raw` itself comes back (the same object) when nothing was removed.
    """
    key = _key(name)
    return _rebuild(raw, lambda field_name, text: b"" if field_name.lower() == key and drop(unfold(text)) else text)


def replace(raw: bytes, name: Name, value: Name) -> bytes:
    """`raw` with one field `name` of `value`: in place of the first such field (others removed), else on top."""
    key, done = _key(name), []

    def swap(field_name: bytes, text: bytes) -> bytes:
        if field_name.lower() != key:
            return text
        if done:
            return b""
        done.append(True)
        return field(field_name, value)

    changed = _rebuild(raw, swap)
    return changed if done else prepend(raw, (name, value))


def rewrite(raw: bytes, names: Iterable[Name], change: Callable[[bytes], bytes]) -> bytes:
    """`raw` with `change(field as written)` put in place of each field named in `names`.

    `raw` itself comes back (the same object) when nothing changed, so callers can tell cheaply.
    """
    keys = {_key(name) for name in names}
    return _rebuild(raw, lambda name, text: change(text) if name.lower() in keys else text)


def _rebuild(raw: bytes, each: Callable[[bytes, bytes], bytes]) -> bytes:
    head, rest = split(raw)
    parts = fields(head)
    new = [each(name, text) for name, text in parts]
    if all(a is b or a == b for a, (_, b) in zip(new, parts)):
        return raw
    return _from_a_field(b"".join(new)) + rest


def _from_a_field(head: bytes) -> bytes:
    """`head` without the malformed (colon-less) lines a removal left on top.

    Such a line first would make every field below it read as body (the rule above), so after
    removing a Bcc the To: line would become text; the malformed lines go instead.
    """
    while head and not has_header_block(head):
        cut = head.find(b"\n")
        head = b"" if cut < 0 else head[cut + 1:]
    return head
