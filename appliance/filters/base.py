"""What a check sees (Facts), what it says (Verdict), and when it is asked (Stage).

A check is an object with a `name` and any of the methods `connect`, `helo`, `mail`, `rcpt`,
`data`, each taking the session's Facts and returning None (nothing to say), a Verdict, or a
Deferred firing one of those. The pipeline (pipeline.py) asks the checks in order at each stage.

Facts belong to one SMTP connection; `facts.txn` to one mail transaction (it is replaced at
every MAIL). Checks record what later checks read there: the PTR name, doubts (why the client
looks suspicious, which suspicious greylisting and pregreet read), the SPF results DMARC needs,
and the Authentication-Results entries written at DATA.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from appliance.replies import Reply


class Stage(str, enum.Enum):
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


ACCEPT = "accept"        # pass, and log why (an allow-list hit)
TAG = "tag"              # pass, with header fields added at DATA
JUNK = "junk"            # pass, delivered to the recipients' Junk folder
TEMPFAIL = "tempfail"    # 4xx: try again later
REJECT = "reject"        # 5xx: refused for good (no bounce: the client tells its sender)


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str                                   # for the log line
    reply: Reply | None = None                    # the SMTP reply of a reject or tempfail
    headers: tuple[tuple[str, str], ...] = ()     # fields to add to the message (tag, junk)

    @classmethod
    def accept(cls, reason: str) -> "Verdict":
        return cls(ACCEPT, reason)

    @classmethod
    def tag(cls, reason: str, *headers: tuple[str, str]) -> "Verdict":
        return cls(TAG, reason, headers=headers)

    @classmethod
    def junk(cls, reason: str, *headers: tuple[str, str]) -> "Verdict":
        return cls(JUNK, reason, headers=headers)

    @classmethod
    def reject(cls, reply: Reply, reason: str) -> "Verdict":
        return cls(REJECT, reason, reply=reply)

    @classmethod
    def tempfail(cls, reply: Reply, reason: str) -> "Verdict":
        return cls(TEMPFAIL, reason, reply=reply)

    @property
    def refuses(self) -> bool:
        return self.action in (REJECT, TEMPFAIL)


@dataclass
class AuthResult:
    """One method's result for the Authentication-Results field (RFC 8601 2.2): `spf=pass smtp.mailfrom=x`."""

    method: str                                   # spf | dkim | dmarc | iprev ...
    result: str                                   # pass | fail | softfail | neutral | none | temperror | permerror ...
    properties: tuple[tuple[str, str], ...] = ()  # (ptype.property, value): ("smtp.mailfrom", "a@b")
    reason: str = ""


@dataclass
class Transaction:
    """One mail transaction: from MAIL to the end of DATA."""

    sender: str = ""                              # "" for the null sender
    rcpt: str = ""                                # the RCPT being checked (stage rcpt)
    recipients: list[str] = field(default_factory=list)   # RCPT addresses accepted so far
    message: bytes = b""                          # stage data: the message as received (CRLF)
    results: list[AuthResult] = field(default_factory=list)  # for Authentication-Results
    headers: list[tuple[str, str]] = field(default_factory=list)  # to add at the end of DATA
    junk: bool = False                            # deliver to the recipients' Junk folders
    notes: dict[str, Any] = field(default_factory=dict)  # a check's own per-transaction state


@dataclass
class Facts:
    """What one SMTP session has learnt; every check reads it, some add to it."""

    session: str                                  # the session id on every log line
    service: str                                  # smtp, submission, smtps; pickup
    peer: str                                     # the client's IP address; "" for a local program
    mx: bool = True                               # port 25: the inbound checks apply
    trusted: bool = False                         # [relay] trusted_networks, or logged in
    helo: str = ""
    login: str = ""                               # the authenticated user
    ptr: str | None = None                        # forward-confirmed reverse name; "" none; None unknown
    doubts: list[str] = field(default_factory=list)   # why the client looks doubtful
    scores: dict[str, float] = field(default_factory=dict)   # e.g. "dnsbl": 2.0
    txn: Transaction = field(default_factory=Transaction)
    notes: dict[str, Any] = field(default_factory=dict)   # a check's own per-session state
    bad_recipients: int = 0                       # RCPTs refused as unknown so far

    @property
    def inbound(self) -> bool:
        """The inbound checks apply: mail from outside on the MX (not our users, not trusted hosts)."""
        return self.mx and not self.trusted and bool(self.peer)

    @property
    def doubtful(self) -> bool:
        return bool(self.doubts)

    def new_transaction(self, sender: str) -> None:
        self.txn = Transaction(sender=sender)


class Check:
    """A base with nothing to say at any stage; a check overrides the stages it acts at.

    `inbound` checks are asked only for `facts.inbound` sessions; the others (rate limits,
    operator hooks) see every session and decide for themselves.
    """

    name = "check"
    inbound = True

    def connect(self, facts: Facts) -> Any:
        return None

    def helo(self, facts: Facts) -> Any:
        return None

    def mail(self, facts: Facts) -> Any:
        return None

    def rcpt(self, facts: Facts) -> Any:
        return None

    def data(self, facts: Facts) -> Any:
        return None
