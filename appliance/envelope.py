"""The envelope of a queued message: who sent it, to whom, and each recipient's delivery state.

Stored as JSON beside the message (never pickle), so a restart resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

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
    last_error: str = ""


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
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
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
