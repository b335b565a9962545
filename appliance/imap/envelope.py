"""Reading back the cached ENVELOPE (store Meta), and decoding header text for SEARCH, SORT and THREAD.

The metadata index keeps every message's ENVELOPE response (RFC 3501 7.4.2) ready to send; it
holds all SORT needs (date, subject, the address lists) and THREAD's In-Reply-To and Message-ID,
so those commands never reopen message files for them. Header text is compared as decoded
Unicode: RFC 2047 encoded words decoded, 8-bit octets read as UTF-8 (RFC 6532), case and
compatibility forms folded the way RFC 5051's i;unicode-casemap does (Dovecot's comparator).
"""
from __future__ import annotations

import binascii
import codecs
import email.utils
import functools
import re
import unicodedata
from dataclasses import dataclass

Address = tuple  # (name, adl, mailbox, host), each bytes or None

_VALUE = re.compile(rb'[ ]*(?:(NIL)|"((?:[^"\\]|\\.)*)"|\{(\d+)\}\r\n|(\()|(\)))', re.S | re.I)
_UNQUOTE = re.compile(rb"\\(.)", re.S)
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?)")
_BLANKS = re.compile(r"[ \t\r\n]+")


@dataclass(frozen=True)
class Envelope:
    date: bytes | None
    subject: bytes | None
    sender: list          # From (the ENVELOPE's third field)
    to: list
    cc: list
    bcc: list
    in_reply_to: bytes | None
    message_id: bytes | None


class EnvelopeError(ValueError):
    """Bytes that are not an ENVELOPE as appliance.mime writes it."""


def read_value(data: bytes, pos: int = 0) -> tuple[object, int]:
    """One IMAP value (NIL, string, literal or list) at `pos`: (value, end). Lists are Python lists."""
    stack: list[list] = []
    while True:
        match = _VALUE.match(data, pos)
        if not match:
            raise EnvelopeError(f"no value at {pos}")
        pos = match.end()
        nil, text, size, opening, closing = match.groups()
        if opening:
            stack.append([])
            continue
        if closing:
            if not stack:
                raise EnvelopeError("unbalanced parenthesis")
            value: object = stack.pop()
        elif nil:
            value = None
        elif text is not None:
            value = _UNQUOTE.sub(rb"\1", text) if b"\\" in text else text
        else:
            end = pos + int(size)
            value, pos = data[pos:end], end
        if not stack:
            return value, pos
        stack[-1].append(value)


@functools.lru_cache(maxsize=65536)
def parse(data: bytes) -> Envelope:
    """The fields of an ENVELOPE response; cached, since SORT asks for the same ones again and again."""
    value, _ = read_value(data)
    if not isinstance(value, list) or len(value) != 10:
        raise EnvelopeError("not an envelope")
    date, subject, sender, _, _, to, cc, bcc, in_reply_to, message_id = value
    return Envelope(date, subject, sender or [], to or [], cc or [], bcc or [], in_reply_to, message_id)


EMPTY = Envelope(None, None, [], [], [], [], None, None)


def safe(data: bytes) -> Envelope:
    """`parse`, with an empty envelope for a damaged cache entry (it sorts first instead of failing)."""
    try:
        return parse(data)
    except (EnvelopeError, ValueError):
        return EMPTY


# ---------------------------------------------------------------- header text

def _charset_decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def text(data: bytes | None) -> str:
    """Octets of a header field or body as Unicode: UTF-8 when valid (RFC 6532), else Latin-1."""
    if not data:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode_word(match: re.Match) -> str:
    charset, encoding, payload = match.groups()
    try:
        codecs.lookup(charset)
    except LookupError:
        return match.group(0)
    try:
        if encoding in "bB":
            octets = binascii.a2b_base64(payload.encode("ascii") + b"===")
        else:
            octets = binascii.a2b_qp(payload.replace("_", " ").encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return _charset_decode(octets, charset)


def decode_header(data: bytes | None) -> str:
    """A header value with its RFC 2047 encoded words decoded; blanks between two such words dropped."""
    value = text(data)
    if "=?" not in value:
        return value
    value = _BETWEEN_WORDS.sub(r"\1\2", value)
    return _ENCODED_WORD.sub(_decode_word, value)


def fold(value: str) -> str:
    """i;unicode-casemap (RFC 5051): case folded and compatibility decomposed, then upper case.

    Upper case last, so ASCII text sorts as i;ascii-casemap sorts it (RFC 5256 SORT: `_` after
    the letters) and both sides of a SEARCH comparison are folded alike.
    """
    if value.isascii():
        return value.upper()
    return unicodedata.normalize("NFKD", value.casefold()).upper()


def address_text(address: Address) -> str:
    """One ENVELOPE address as `Name <mailbox@host>` (a group start as `group:`), names decoded."""
    if not isinstance(address, list) or len(address) != 4:
        return ""
    name, _, mailbox, host = address
    if host is None:
        return text(mailbox) + ":" if mailbox else ""
    spec = text(mailbox) + "@" + text(host)
    return decode_header(name) + " <" + spec + ">" if name else spec


def addresses_text(addresses: list) -> str:
    return ", ".join(filter(None, (address_text(a) for a in addresses)))


def first_mailbox(addresses: list) -> str:
    """RFC 5256 3: the addr-mailbox (local part) of the first address, for SORT FROM/TO/CC."""
    for address in addresses:
        if isinstance(address, list) and len(address) == 4 and address[3] is not None:
            return text(address[2])
    return ""


def display(addresses: list) -> str:
    """RFC 5957: the first address's display name, decoded, or its addr-spec when it has none."""
    for address in addresses:
        if isinstance(address, list) and len(address) == 4 and address[3] is not None:
            name = decode_header(address[0]).strip() if address[0] else ""
            return name or text(address[2]) + "@" + text(address[3])
    return ""


def sent_date(date: bytes | None) -> float | None:
    """RFC 5256 2.2: the Date header as UTC seconds; None when missing or unparsable."""
    if not date:
        return None
    try:
        parsed = email.utils.parsedate_tz(date.decode("latin-1"))
        return float(email.utils.mktime_tz(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def squeeze(value: str) -> str:
    """Runs of blanks (and line breaks) as one space, none at either end: how SEARCH compares text.

    str.split in C: a regular expression over a 100 KiB body costs SEARCH BODY half its time.
    """
    return " ".join(value.split())


def blanks(value: str) -> str:
    """Tabs and line breaks as spaces, runs of blanks as one (RFC 5256 2.1 step 1)."""
    return _BLANKS.sub(" ", value)
