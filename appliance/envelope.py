"""The envelope of a queued message: who sent it, to whom, and each recipient's delivery state.

Stored as JSON beside the message (never pickle), so a restart resumes where it stopped: in a
queue segment as the compact record (`to_record`, a JSON array of the fields in a fixed order,
half the size and a third cheaper to write than the object form, on the ingest's hot path);
in a retry state file, and in segments written before the compact record existed, as a JSON
object (`to_json`). `decode` reads both.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from appliance.errors import is_status

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
RECORD_VERSION = 2      # the first element of a compact record; the JSON object form is version 1
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class Recipient:
    address: str                       # final recipient after alias expansion (normalised)
    original: str = ""                 # the address given at RCPT, when aliases changed it
    extension: str = ""                # the +tag of a plus-address, kept for Delivered-To
    local: bool = True                 # True: a local mailbox; False: remote delivery
    state: str = PENDING               # pending | delivered | failed
    attempts: int = 0
    next_attempt: float = 0.0          # unix time of the next try
    last_error: str = ""               # "status text" of the last failure, as logged and listed
    status: str = ""                   # its RFC 3463 status ("4.4.3"), what a DSN reports
    folder: str = ""                   # local: the folder to deliver to ("Junk" for spam); "" = INBOX

    @classmethod
    def from_dict(cls, fields: dict) -> "Recipient":
        """A recipient as stored; envelopes written before `status` was stored get it from `last_error`,
        which that code always began with the status (the one place an old status is read from text)."""
        if "status" not in fields:
            first = fields.get("last_error", "").split(" ", 1)[0]
            fields = {**fields, "status": first if is_status(first) else ""}
        return cls(**fields)


@dataclass
class Envelope:
    id: str
    sender: str                        # "" for the null sender <>
    recipients: list[Recipient]
    received_at: float = field(default_factory=time.time)
    peer: str = ""                     # client IP address
    helo: str = ""
    protocol: str = "ESMTP"            # ESMTP | ESMTPS | ESMTPSA (RFC 3848)
    login: str = ""                    # authenticated user, "" if none
    size: int = 0
    held: bool = False                 # `queue hold`: kept but not tried until released
    delay_notified: bool = False       # the one "delayed" DSN (after [queue] delay_warning) went out
    parent: str = ""                   # a DSN: the queue id of the message it reports on (for the log)

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def done(self) -> bool:
        return not self.pending()

    def to_json(self) -> bytes:
        fields = {**vars(self), "recipients": [vars(r) for r in self.recipients]}
        return json.dumps(fields, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        raw = json.loads(data)
        raw["recipients"] = [Recipient.from_dict(r) for r in raw["recipients"]]
        return cls(**raw)

    def to_record(self) -> bytes:
        """The compact form a queue segment stores: [version, envelope fields..., [[recipient fields...], ...]]."""
        return _encode([RECORD_VERSION, self.id, self.sender, self.received_at, self.peer, self.helo, self.protocol,
                        self.login, self.size, self.held, self.delay_notified, self.parent,
                        [[r.address, r.original, r.extension, r.local, r.state, r.attempts, r.next_attempt,
                          r.last_error, r.status, r.folder] for r in self.recipients]]).encode("ascii")

    @classmethod
    def from_record(cls, data: bytes) -> "Envelope":
        """Read `to_record`'s form back; ValueError for anything else (the bytes come from disk)."""
        raw = _loads(data)
        if not (isinstance(raw, list) and len(raw) == len(_ENVELOPE_TYPES) + 2 and raw[0] == RECORD_VERSION
                and isinstance(raw[-1], list)):
            raise ValueError("not a version 2 envelope record")
        fields = _checked(raw[1:-1], _ENVELOPE_TYPES)
        recipients = []
        for item in raw[-1]:
            if not (isinstance(item, list) and len(item) == len(_RECIPIENT_TYPES)):
                raise ValueError("not a recipient record")
            recipients.append(Recipient(*_checked(item, _RECIPIENT_TYPES)))
        envelope = cls(fields[0], fields[1], recipients, *fields[2:])
        if not envelope.id:
            raise ValueError("an envelope record without a queue id")
        return envelope

    @classmethod
    def decode(cls, data: bytes) -> "Envelope":
        """Either stored form: the compact record, or the JSON object older versions wrote."""
        if data[:1] == b"[":
            return cls.from_record(data)
        return cls.from_json(data)


def _loads(data: bytes) -> object:
    """json.loads, with nesting too deep for it (`[[[[...`) a ValueError like any other bad input."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("an envelope record nested too deep") from None


# The types of the compact record's fields, in order (see to_record); a number may be an int or a float.
_NUMBER = (int, float)
_ENVELOPE_TYPES = (str, str, _NUMBER, str, str, str, str, int, bool, bool, str)
_RECIPIENT_TYPES = (str, str, str, bool, str, int, _NUMBER, str, str, str)


def _checked(values: list, types: tuple) -> list:
    """`values` when each has its type (bool is no number here, as JSON keeps them apart); else ValueError."""
    for value, kind in zip(values, types):
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"an envelope record field has the wrong type: {value!r}")
    return [float(value) if kind is _NUMBER else value for value, kind in zip(values, types)]


_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [high + low for high in _BASE32 for low in _BASE32]   # 10 bits -> two digits
_PAIR_SHIFTS = range(110, -1, -10)
_counter = 0
_pid = os.getpid() & 0xFFFF


def _forked() -> None:
    global _pid
    _pid = os.getpid() & 0xFFFF


os.register_at_fork(after_in_child=_forked)


def base32(value: int) -> str:
    """`value` (0 < value < 2**120) in our base 32 digits, without leading zeros.

    120 bits are 24 digits of 5 bits, most significant first: twelve look-ups of two digits
    (10 bits) each. (base64.b32encode is a Python loop in 3.11, and was 2% of the SMTP
    reactor's time in the ingest profile.)
    """
    return "".join([_PAIRS[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS]).lstrip("0")


def new_id(now: float | None = None) -> str:
    """A sortable, unique queue id: microseconds since the epoch, pid and a counter, in base 32."""
    global _counter
    _counter = (_counter + 1) & 0xFFFF
    return base32((int((now or time.time()) * 1_000_000) << 32) | (_pid << 16) | _counter)
