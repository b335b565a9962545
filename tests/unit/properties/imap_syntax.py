"""A strict reader of IMAP response data (RFC 3501 9): what the client library will have to parse."""
from __future__ import annotations

import re

_ATOM = re.compile(rb'[^\x00-\x20\x7f()"{}\\\]%*]+')   # NIL and numbers are atoms too
_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


class Unparsable(AssertionError):
    pass


def read_value(data: bytes, pos: int = 0) -> int:
    """The end of the one value (list, quoted string, literal, atom) starting at `pos`."""
    if pos >= len(data):
        raise Unparsable(f"value missing at {pos}")
    char = data[pos:pos + 1]
    if char == b"(":
        pos += 1
        first = True
        while True:
            if data[pos:pos + 1] == b")":
                return pos + 1
            if not first:
                if data[pos:pos + 1] != b" " and data[pos - 1:pos] != b")":
                    raise Unparsable(f"no space between values at {pos}: {data[pos - 10:pos + 10]!r}")
                if data[pos:pos + 1] == b" ":
                    pos += 1
            pos = read_value(data, pos)
            first = False
    if char == b'"':
        pos += 1
        while True:
            if pos >= len(data):
                raise Unparsable("unterminated quoted string")
            c = data[pos:pos + 1]
            if c in (b"\r", b"\n", b"\x00") or c >= b"\x80":
                raise Unparsable(f"{c!r} inside a quoted string")
            if c == b"\\":
                if data[pos + 1:pos + 2] not in (b"\\", b'"'):
                    raise Unparsable("bad quoted-special escape")
                pos += 2
                continue
            if c == b'"':
                return pos + 1
            pos += 1
    literal = _LITERAL.match(data, pos)
    if literal:
        end = literal.end() + int(literal.group(1))
        if end > len(data):
            raise Unparsable("short literal")
        return end
    atom = _ATOM.match(data, pos)
    if not atom:
        raise Unparsable(f"unexpected {data[pos:pos + 10]!r} at {pos}")
    return atom.end()


def check_one_value(data: bytes) -> None:
    """`data` is exactly one IMAP value (a parenthesised list for BODYSTRUCTURE and ENVELOPE)."""
    if not data.startswith(b"("):
        raise Unparsable("not a list")
    end = read_value(data)
    if end != len(data):
        raise Unparsable(f"trailing data after the value: {data[end:end + 20]!r}")
