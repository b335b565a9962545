"""IMAP command arguments: literals capped before a byte is read, sequence sets, flags, dates, mailbox names.

These replace the stock IMAP4Server parsers, which accept a literal of any size and expand
sequence sets; they are mixed into the session, because reading a literal switches the line
protocol into raw mode.
"""
from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.mail import imap4
from twisted.mail.imap4 import IllegalClientResponse, IMAP4Server

from appliance import replies
from appliance.imap.backend import MailboxError, normalise
from appliance.imap.view import SequenceError, parse_set

MAX_STRING_LITERAL = 65536      # a literal that is not a message (names, passwords, search strings)
MAX_COMMAND = 262144            # one command's arguments read by arg_tokens: its lines and literals together
MAX_LITERALS = 32               # literals in one such command (each costs stack while pipelined data is parsed)
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_LITERAL = re.compile(rb"^\{(\d{1,30})(\+?)\}$")
_NONSYNC_AT_END = re.compile(rb"\{(\d{1,30})\+\}$")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"(?: |$)')
_UNQUOTE = re.compile(rb"\\(.)", re.S)
_FIELD_NAME = re.compile(rb'[^\x00-\x20\x7f-\xff:()\[\]"\\{}]+')    # ftext (RFC 5322 3.6.8), no IMAP specials
_QUOTED_NAME = re.compile(rb'"([^\x00-\x20\x7f-\xff:()\[\]"\\{}]+)"')
_LITERAL_AT_END = re.compile(rb"\{(\d{1,30})(\+?)\}$")
# One token of a command's arguments: a parenthesis, a quoted string, or a word (an atom, a number,
# a sequence set, a list-mailbox with `%`, `*` and `]`): any run of octets but SP, ( ) and ".
_TOKEN = re.compile(rb' *(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^ ()"]+))')


class Str(bytes):
    """A string argument (quoted or literal, RFC 3501 4.3), as opposed to an atom or number."""


class Literal(bytes):
    """The octets of one literal, between the line parts of a command (see Arguments.arg_tokens)."""


def parse_date(text: bytes) -> float | None:
    """APPEND's date-time `"dd-Mon-yyyy hh:mm:ss +zzzz"` as epoch seconds; None when malformed."""
    try:
        return _parse_date(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError, IndexError):
        return None


def _parse_date(text: str) -> float:
    day_part, clock, zone = text.strip().split(" ")
    day, month, year = day_part.split("-")
    hour, minute, second = (int(v) for v in clock.split(":"))
    when = calendar.timegm((int(year), MONTHS.index(month.capitalize()) + 1, int(day), hour, minute, second))
    sign = -1 if zone[0] == "-" else 1
    offset = sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    return float(when - offset)


def mailbox_name(raw: bytes) -> str:
    """A client's mailbox name (modified UTF-7, RFC 3501 5.1.3) as the store's normal form."""
    try:
        name = raw.decode("imap4-utf-7")
        # Only the one canonical spelling (RFC 3501 5.1.3: no ASCII inside &...-, no bare &): else
        # `&AGE-` would be stored as `a`, and LIST would show a name the client never created.
        if name.encode("imap4-utf-7") != raw:
            raise ValueError("not canonical modified UTF-7")
        return normalise(name)
    except Exception:
        reply = replies.IMAP_NAME_ENCODING
        raise MailboxError(reply.text, reply.code) from None


def quote_name(name: str) -> bytes:
    """A mailbox name as an IMAP quoted string in modified UTF-7."""
    encoded = name.encode("imap4-utf-7")
    return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def nonsync_literal_size(line: bytes) -> int | None:
    """The size of the LITERAL+ literal announced at the end of `line`, if one is."""
    match = _NONSYNC_AT_END.search(line)
    return int(match.group(1)) if match else None


def tokenize(segments: list[bytes]) -> list:
    """A command's arguments (line parts and Literals) as nested lists of bytes (words) and Str (strings).

    The one reader of IMAP argument octets for the commands whose arguments are lists of strings
    and words: SEARCH, SORT, THREAD, ID, LIST and LSUB. RFC 3501 9: strings are quoted or literal,
    lists are parenthesised. A word is any run of octets but SP, `(`, `)` and `"`: that takes in
    atom, astring (`]`) and list-mailbox (`%`, `*`, `]`) alike, and which words a command accepts
    is its own parser's business. Braces are word octets: a literal is only `{n}` or `{n+}` at the
    end of a line, which _segments has already read into a Literal, so no other reading of the
    line can take it for one. Raises IllegalClientResponse on unbalanced parentheses, lists nested
    more than 64 deep or an unterminated quoted string; nothing else.
    """
    stack: list[list] = [[]]
    for segment in segments:
        if isinstance(segment, Literal):
            stack[-1].append(Str(segment))
            continue
        pos, end = 0, len(segment)
        while pos < end:
            match = _TOKEN.match(segment, pos)
            if not match or match.end() == pos:
                if not segment[pos:].strip(b" "):
                    break
                raise IllegalClientResponse("Unmatched quotes")
            pos = match.end()
            opening, closing, text, atom = match.groups()
            if opening:
                if len(stack) > 64:
                    raise IllegalClientResponse("Lists nested too deeply")
                stack.append([])
            elif closing:
                if len(stack) == 1:
                    raise IllegalClientResponse("Unbalanced parentheses")
                inner = stack.pop()
                stack[-1].append(inner)
            elif text is not None:
                stack[-1].append(Str(_UNQUOTE.sub(rb"\1", text)))
            else:
                stack[-1].append(atom)
    if len(stack) != 1:
        raise IllegalClientResponse("Unbalanced parentheses")
    return stack[0]


def _then(value: Any, step: Callable[[Any], Any]) -> Any:
    """`step(value)` now, or once a Deferred value fires."""
    return value.addCallback(step) if isinstance(value, defer.Deferred) else step(value)


def _as_words(segments: list[bytes]) -> bytes:
    """One line from line parts and literals, each literal and quoted header name written bare.

    Only FETCH uses it, where strings can only be header field names (RFC 5322 ftext, no blanks).
    """
    parts = []
    for segment in segments:
        if isinstance(segment, Literal):
            if not _FIELD_NAME.fullmatch(segment):
                raise IllegalClientResponse("Invalid header field name")
            parts.append(bytes(segment))
        else:
            parts.append(_QUOTED_NAME.sub(rb"\1", segment))
    return b"".join(parts)


def _fetch_atts(line: bytes) -> tuple[list, bytes]:
    parser = imap4._FetchParser()
    try:
        parser.parseString(line)
    except Exception:
        raise IllegalClientResponse("Invalid fetch attributes") from None
    if not parser.result:
        raise IllegalClientResponse("Missing fetch attributes")
    return parser.result, b""


class Discard:
    """Takes the octets of a LITERAL+ literal whose command was refused, so they never run as commands."""

    def __init__(self, size: int, on_line: Any):
        self.size = size
        self._on_line = on_line

    def write(self, data: bytes) -> bytes | None:
        self.size -= len(data)
        if self.size > 0:
            return None
        return data[len(data) + self.size:] if self.size else b""

    def callback(self, line: bytes) -> None:
        """The rest of the refused command's line after the literal."""
        self._on_line(line)


class Arguments:
    """The argument parsers named in the command tables (`(handler, arg_x, arg_y)`); a session mixin."""

    factory: Any
    transport: Any
    parseState: str
    _pendingLiteral: Any
    _announced: int | None

    def _literal_size(self, token: bytes, limit: int) -> tuple[int, bool]:
        match = _LITERAL.match(token)
        if not match:
            raise IllegalClientResponse("Malformed literal")
        size, nonsync = int(match.group(1)), bool(match.group(2))
        if size > limit:
            if nonsync:
                # The client sends the octets without waiting: the only safe answer is to hang up.
                self.sendLine(replies.IMAP_LITERAL_TOO_LARGE.line())
                self.transport.loseConnection()
            raise IllegalClientResponse("Literal too large")
        return size, nonsync

    def _read_literal(self, size: int, nonsync: bool, holder: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._announced = None           # this literal is read: nothing to skip if the command fails
        self.parseState = "pending"
        self._pendingLiteral = holder(size, d)
        if not nonsync:
            self.sendLine(replies.IMAP_SEND_LITERAL.line())
        self.setRawMode()
        return d

    def arg_astring(self, line: bytes, final: bool = False) -> Any:
        line = line.lstrip(b" ")
        if line.startswith(b"{"):
            token, _, rest = line.partition(b" ")
            if rest:
                raise IllegalClientResponse("A literal must end the line")
            size, nonsync = self._literal_size(token, MAX_STRING_LITERAL)
            if final and size == 0:
                return (b"", b"")
            return self._read_literal(size, nonsync, imap4.LiteralString)
        if line.startswith(b'"'):
            match = _QUOTED.match(line)
            if not match:
                raise IllegalClientResponse("Unmatched quotes")
            return re.sub(rb"\\(.)", rb"\1", match.group(1)), line[match.end():]
        return IMAP4Server.arg_astring(self, line, final)

    def arg_tokens(self, line: bytes, literal_limit: int = MAX_STRING_LITERAL) -> Any:
        """The rest of the command, every literal in it read (RFC 3501 9, RFC 7888), as `tokenize` gives it.

        Commands whose string arguments may come anywhere (SEARCH, SORT, THREAD, ID, LIST) use this:
        a literal ends a line, and the command goes on in the line after its octets. All of it is
        read before anything is parsed, so a refused command leaves no octet behind to be taken
        for a command. Bounded: MAX_LITERALS literals of at most `literal_limit` octets each,
        MAX_COMMAND octets; a command whose strings are all short names asks for a lower limit.
        """
        segments = self._segments(line, [], MAX_COMMAND, literal_limit)
        return _then(segments, lambda segments: (tokenize(segments), b""))

    def _segments(self, line: bytes, segments: list[bytes], budget: int,
                  literal_limit: int = MAX_STRING_LITERAL) -> Any:
        """The command's line parts and Literals, or a Deferred firing with them once all are read."""
        budget -= len(line)
        match = _LITERAL_AT_END.search(line)
        if match is None:
            segments.append(line)
            return segments
        literals = sum(1 for segment in segments if isinstance(segment, Literal))
        # One literal too many is refused as too large: BAD, or a hang-up when its octets are on their way.
        limit = min(literal_limit, budget) if literals < MAX_LITERALS else -1
        size, nonsync = self._literal_size(match.group(0), limit)
        segments.append(line[:match.start()])
        d = self._read_literal(size, nonsync, imap4.LiteralString)
        d.addCallback(self._literal_read, segments, budget - size, literal_limit)
        return d

    def _literal_read(self, result: tuple[bytes, bytes], segments: list[bytes], budget: int,
                      literal_limit: int) -> Any:
        data, rest = result
        segments.append(Literal(data))
        return self._segments(rest, segments, budget, literal_limit)

    def arg_finalastring(self, line: bytes) -> Any:
        return self.arg_astring(line, final=True)

    def arg_literal(self, line: bytes) -> Any:
        size, nonsync = self._literal_size(line.strip(), self.factory.max_message_size)
        return self._read_literal(size, nonsync, imap4.LiteralFile)

    def arg_seqset(self, line: bytes) -> tuple[list, bytes]:
        token, _, rest = line.partition(b" ")
        try:
            return parse_set(token), rest
        except SequenceError as exc:
            raise IllegalClientResponse(str(exc)) from None

    def arg_fetchatt(self, line: bytes) -> Any:
        """FETCH's attributes; header names in HEADER.FIELDS lists may be quoted or literal (astring)."""
        return _then(self._segments(line, [], MAX_COMMAND), lambda segments: _fetch_atts(_as_words(segments)))

    def arg_flaglist(self, line: bytes) -> tuple[list, bytes]:
        if not line.strip():
            raise IllegalClientResponse("Missing flag list")     # `()` is a list; nothing is not
        flags, rest = IMAP4Server.arg_flaglist(self, line)
        return [flag.decode("ascii", "replace") for flag in flags], rest

    def opt_flags_date(self, line: bytes) -> tuple[tuple, bytes]:
        """APPEND's optional `(flags)` and `"date-time"`."""
        flags: list[str] = []
        line = line.lstrip(b" ")           # after a literal mailbox name, the line goes on with a blank
        if line.startswith(b"("):
            end = line.find(b")")
            if end < 0:
                raise IllegalClientResponse("Mismatched parenthesis")
            flags = [f.decode("ascii", "replace") for f in line[1:end].split()]
            line = line[end + 1:].lstrip(b" ")
        date = None
        if line.startswith(b'"'):
            end = line.find(b'"', 1)
            date = parse_date(line[1:end]) if end > 0 else None
            if date is None:
                raise IllegalClientResponse("Invalid date-time")
            line = line[end + 1:].lstrip(b" ")
        return (flags, date), line

    def arg_plist(self, line: bytes) -> tuple[list, bytes]:
        """A flat parenthesised list (STATUS items); after a literal mailbox name the line starts with a blank."""
        return IMAP4Server.arg_plist(self, line.lstrip(b" "))

    # Stock parsers used as they are, named here so every command table reads from one class.
    arg_atom = IMAP4Server.arg_atom
    arg_line = IMAP4Server.arg_line
    opt_charset = IMAP4Server.opt_charset
