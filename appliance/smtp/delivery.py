"""What happens to an accepted SMTP message: recipients resolved, Received: added, queued durably.

The two listeners differ only in their Policy (smtp/mx.py, smtp/submission.py); both hand the
finished message to the same Acceptor, so there is one acceptance rule: 250 is answered only
after the queue has fsynced the message.
"""
from __future__ import annotations

import email.utils
import re
from typing import Any, Protocol

from twisted.internet import defer

from appliance import address, maillog, replies
from appliance.envelope import Envelope, Recipient, new_id
from appliance.replies import SMTPReplyError

_HEADER_END = re.compile(rb"\r\n\r\n")


class Policy(Protocol):
    """What one listener accepts. Methods return a value or a Deferred, or raise SMTPReplyError."""

    name: str                 # the service name used in logs: smtp, submission, smtps
    offers_auth: bool         # AUTH advertised (when the channel is safe)

    def check_sender(self, conn: Any, sender: str) -> Any: ...

    def check_recipient(self, conn: Any, rcpt: str) -> Any: ...

    def prepare(self, conn: Any, message: bytes) -> bytes: ...


class RecipientResolver:
    """Turns one RCPT address into final envelope recipients: local users, or remote addresses.

    Aliases are expanded here, at acceptance, so an unknown alias target is refused while the
    client is still connected, and one message to a list gets one copy per member.
    """

    def __init__(self, directory: Any, aliases: Any, domains: tuple[str, ...]) -> None:
        self.directory = directory
        self.aliases = aliases
        self.domains = domains

    def is_local(self, addr: str) -> bool:
        return address.in_domains(addr, self.domains)

    @defer.inlineCallbacks
    def resolve(self, rcpt: str) -> Any:
        """Deferred[list[Recipient]]; fails with SMTPReplyError(550 5.1.1) for an unknown local user."""
        targets = self.aliases.resolve(rcpt) if self.aliases is not None else None
        if targets is None:
            targets = [rcpt]
        result: list[Recipient] = []
        for target in targets:
            original = rcpt if target != rcpt else ""
            if not self.is_local(target):
                result.append(Recipient(address=address.normalise(target), local=False, original=original))
                continue
            user = yield self.directory.lookup(target)
            if user is None:
                raise SMTPReplyError(replies.UNKNOWN_USER)
            result.append(Recipient(address=user.address, local=True, original=original or
                                    (rcpt if rcpt != user.address else "")))
        return result


class Acceptor:
    """Builds the envelope and the Received: line, and puts the message in the durable queue."""

    def __init__(self, queue: Any, hostname: str) -> None:
        self.queue = queue
        self.hostname = hostname

    def accept(self, conn: Any, session: Any, body: bytes) -> defer.Deferred:
        """Deferred[queue id], firing only once the queue holds the message durably."""
        qid = new_id()
        message = conn.factory.policy.prepare(conn, body)
        rcpts = session.recipients
        message = self.received_header(conn, qid, rcpts) + message
        envelope = Envelope(id=qid, sender=session.sender, recipients=list(rcpts), peer=conn.peer,
                            helo=conn.helo or "", protocol=conn.protocol_name,
                            login=conn.user.address if conn.user is not None else "", size=len(message))
        d = self.queue.put(envelope, message)
        d.addCallback(self._accepted, conn, envelope)
        d.addErrback(self._failed, conn, envelope)
        return d

    def _accepted(self, _: object, conn: Any, envelope: Envelope) -> str:
        maillog.received(envelope.id, conn.factory.policy.name, conn.peer, envelope.sender, envelope.size,
                         [r.address for r in envelope.recipients], envelope.protocol, envelope.login)
        return envelope.id

    def _failed(self, failure: Any, conn: Any, envelope: Envelope) -> None:
        maillog.log.failure("queue write failed id={qid}", failure, qid=envelope.id)
        raise SMTPReplyError(replies.LOCAL_ERROR)

    def received_header(self, conn: Any, qid: str, rcpts: list[Recipient]) -> bytes:
        """RFC 5321 4.4 trace line; `for` only with one recipient, so a list's members stay private."""
        helo = _printable(conn.helo or "unknown")
        tls = conn.tls_description()
        lines = [f"Received: from {helo} ([{conn.peer}])",
                 f"\tby {self.hostname} (mailappliance) with {conn.protocol_name} id {qid}"]
        if tls:
            lines.append(f"\t({tls})")
        tail = f"; {email.utils.formatdate(localtime=True)}"
        if len(rcpts) == 1:
            lines.append(f"\tfor <{rcpts[0].original or rcpts[0].address}>{tail}")
        else:
            lines[-1] += tail
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def header_block(message: bytes) -> bytes:
    """The header section of a message (without the blank line), or b"" when it has none."""
    match = _HEADER_END.search(message)
    head = message[: match.start() + 2] if match else message
    first = head.split(b"\r\n", 1)[0]
    return head if b":" in first and not first.startswith((b" ", b"\t")) else b""


def has_header(head: bytes, name: bytes) -> bool:
    return re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:", head) is not None


def _printable(text: str) -> str:
    return "".join(c if 32 < ord(c) < 127 else "?" for c in text)[:255]
