"""The IMAP side of the mail stores: folders with persistent UIDs and flags, and their metadata index.

Everything in this package is blocking file work, meant to run in a worker thread; the only thing
the reactor reads is a folder's current `Snapshot`, an immutable value replaced whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class MailboxError(Exception):
    """A refusal the client may read (NO); its text never holds paths or exception details."""

    def __init__(self, text: str, code: str = ""):
        super().__init__(text)
        self.code = code            # an RFC 5530 response code such as "NONEXISTENT", or ""


@dataclass(frozen=True)
class Meta:
    """What FETCH needs without opening the message file; cached in the folder's index."""

    size: int                 # RFC822.SIZE: octets in CRLF form
    internaldate: float       # seconds since the epoch
    envelope: bytes           # the ENVELOPE response, ready to send
    bodystructure: bytes      # the extended BODYSTRUCTURE response, ready to send


@dataclass(frozen=True)
class Snapshot:
    """A folder's messages at one moment, in UID order; shared read-only between sessions."""

    uidvalidity: int
    uidnext: int
    uids: tuple[int, ...] = ()
    flags: tuple[frozenset[str], ...] = ()
    fresh: frozenset[int] = frozenset()      # UIDs nobody has claimed as \Recent yet
    position: dict[int, int] = field(default_factory=dict, compare=False)   # uid -> index

    @classmethod
    def build(cls, uidvalidity: int, uidnext: int, messages: list[tuple[int, frozenset[str]]],
              fresh: frozenset[int] = frozenset()) -> "Snapshot":
        messages.sort()
        uids = tuple(uid for uid, _ in messages)
        return cls(uidvalidity, uidnext, uids, tuple(flags for _, flags in messages), fresh,
                   {uid: i for i, uid in enumerate(uids)})

    def flags_of(self, uid: int) -> frozenset[str]:
        return self.flags[self.position[uid]]
