"""The envelope of a queued message: who sent it, to whom, and each recipient's delivery state.

Stored as JSON beside the message (never pickle), so a restart resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from appliance.errors import is_status

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


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


_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_counter = 0


def new_id(now: float | None = None) -> str:
    """A sortable, unique queue id: microseconds since the epoch, pid and a counter, in base 32."""
    global _counter
    _counter = (_counter + 1) & 0xFFFF
    value = (int((now or time.time()) * 1_000_000) << 32) | ((os.getpid() & 0xFFFF) << 16) | _counter
    chars = []
    while value:
        value, digit = divmod(value, 32)
        chars.append(_BASE32[digit])
    return "".join(reversed(chars))
