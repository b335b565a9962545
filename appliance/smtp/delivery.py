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
MAX_DIRECTORY_ALIAS_DEPTH = 5


class Policy(Protocol):
    """What one listener accepts. Methods return a value or a Deferred, or raise SMTPReplyError."""

    name: str                 # the service name used in logs: smtp, submission, smtps
    offers_auth: bool         # AUTH advertised (when the channel is safe)

    def insider(self, conn: Any) -> bool:
        """The client is one of ours (authenticated, or on a trusted network)."""

    def check_sender(self, conn: Any, sender: str) -> Any: ...

    def check_recipient(self, conn: Any, rcpt: str) -> Any: ...

    def prepare(self, conn: Any, message: bytes) -> bytes: ...


class RecipientResolver:
    """Turns one RCPT address into final envelope recipients: local users, or remote addresses.

    Aliases are expanded here, at acceptance, so an unknown alias target is refused while the
    client is still connected, and one message to a list gets one copy per member. Order of
    lookups, as Postfix does it: the address as given (alias, then user), then without its
    +extension, then the domain's catch-all.
    """

    def __init__(self, directory: Any, aliases: Any, domains: tuple[str, ...], *, delimiter: str = "+",
                 catch_all: dict[str, str] | None = None, restricted: frozenset[str] = frozenset(),
                 masquerader: Any = None) -> None:
        self.directory = directory
        self.aliases = aliases
        self.domains = domains
        self.delimiter = delimiter
        self.catch_all = catch_all or {}
        self.restricted = restricted
        self.masquerader = masquerader

    def is_local(self, addr: str) -> bool:
        return address.in_domains(self.unmasquerade(addr), self.domains)

    def unmasquerade(self, addr: str) -> str:
        """`user@pc12.lan.example.test` arriving at the MX is `user@example.test` (a hidden host)."""
        if self.masquerader is None or not self.masquerader.enabled:
            return addr
        local, domain = address.split(addr)
        if self.masquerader.hides(domain) and self.masquerader.as_domain in self.domains:
            return f"{local}@{self.masquerader.as_domain}"
        return addr

    @defer.inlineCallbacks
    def resolve(self, rcpt: str, insider: bool = True) -> Any:
        """Deferred[list[Recipient]]; fails with SMTPReplyError (550 5.1.1, 5.7.1 or 5.4.6).

        `insider`: the sender is one of ours (authenticated, or on a trusted network), which
        restricted lists require.
        """
        rcpt = self.unmasquerade(rcpt)
        if not address.in_domains(rcpt, self.domains):
            return [Recipient(address=rcpt, local=False)]
        candidates = [(rcpt, "")]
        base, extension = self._split_extension(rcpt)
        if base != rcpt:
            candidates.append((base, extension))
        for candidate, ext in candidates:
            if candidate in self.restricted and not insider:
                raise SMTPReplyError(replies.LIST_RESTRICTED)
            targets = yield self.expand(candidate)
            if targets is not None:
                return (yield self._finals(targets, rcpt))
            user = yield self.directory.lookup(candidate)
            if user is not None:
                return [Recipient(address=user.address, original=_unless_same(rcpt, user.address), extension=ext)]
        return (yield self._finals(self._catch_all(rcpt), rcpt))

    @defer.inlineCallbacks
    def _finals(self, targets: list[str], rcpt: str) -> Any:
        result = []
        for target in targets:
            result.append((yield self._final(target, rcpt)))
        return result

    @defer.inlineCallbacks
    def expand(self, addr: str, depth: int = 0) -> Any:
        """Deferred[list[str] | None]: the aliases file first, then the directory's own aliases
        (LDAP nisMailAlias, groupOfNames, mailRoutingAddress), whose members may be lists too."""
        if self.aliases is not None:
            try:
                targets = self.aliases.resolve(addr)
            except Exception as e:  # AliasLoopError, or deeper than the aliases file allows
                maillog.error("alias-loop", rcpt=addr, reason=str(e))
                raise SMTPReplyError(replies.ALIAS_LOOP)
            if targets is not None:
                return targets
        directory_aliases = getattr(self.directory, "resolve_alias", None)
        if directory_aliases is None:
            return None
        targets = yield directory_aliases(addr)
        if targets is None:
            return None
        if depth >= MAX_DIRECTORY_ALIAS_DEPTH:
            maillog.error("alias-loop", rcpt=addr, reason="directory lists nested too deep")
            raise SMTPReplyError(replies.ALIAS_LOOP)
        final: list[str] = []
        for target in targets:
            nested = None
            if target != addr and address.in_domains(target, self.domains):
                nested = yield self.expand(target, depth + 1)
            for item in nested or [target]:
                if item not in final:
                    final.append(item)
        return final

    def _split_extension(self, addr: str) -> tuple[str, str]:
        """`alice+tag@d` -> (`alice@d`, `+tag`); unchanged when plus-addressing is off or absent."""
        local, domain = address.split(addr)
        if not self.delimiter or self.delimiter not in local[1:]:
            return addr, ""
        cut = local.index(self.delimiter, 1)
        return f"{local[:cut]}@{domain}", local[cut:]

    def _catch_all(self, rcpt: str) -> list[str]:
        target = self.catch_all.get(address.domain_of(rcpt))
        if target is None:
            raise SMTPReplyError(replies.UNKNOWN_USER)
        return [target]

    @defer.inlineCallbacks
    def _final(self, target: str, rcpt: str) -> Any:
        """One expanded target: a local user that must exist, a remote address to forward to, or a
        command (`|cmd`) or file (`/path`) that the aliases file may name when allow_commands is on."""
        if target.startswith(("|", "/")):
            return Recipient(address=target, local=True, original=rcpt)
        if not address.in_domains(target, self.domains):
            return Recipient(address=address.normalise(target), local=False, original=_unless_same(rcpt, target))
        user = yield self.directory.lookup(target)
        if user is None:
            raise SMTPReplyError(replies.UNKNOWN_USER)
        return Recipient(address=user.address, local=True, original=_unless_same(rcpt, user.address))


def _unless_same(given: str, final: str) -> str:
    return given if address.normalise(given) != final else ""


class Acceptor:
    """Builds the envelope and the Received: line, and puts the message in the durable queue."""

    def __init__(self, queue: Any, hostname: str, masquerader: Any = None) -> None:
        self.queue = queue
        self.hostname = hostname
        self.masquerader = masquerader

    def accept(self, conn: Any, session: Any, body: bytes) -> defer.Deferred:
        """Deferred[queue id], firing only once the queue holds the message durably."""
        qid = new_id()
        policy = conn.factory.policy
        message = policy.prepare(conn, body)
        sender = session.sender
        if self.masquerader is not None and self.masquerader.enabled and policy.insider(conn):
            sender, message = self.masquerade(qid, sender, message)
        rcpts = session.recipients
        message = self.received_header(conn, qid, rcpts) + message
        envelope = Envelope(id=qid, sender=sender, recipients=list(rcpts), peer=conn.peer,
                            helo=conn.helo or "", protocol=conn.protocol_name,
                            login=conn.user.address if conn.user is not None else "", size=len(message))
        d = self.queue.put(envelope, message)
        d.addCallback(self._accepted, conn, envelope)
        d.addErrback(self._failed, conn, envelope)
        return d

    def masquerade(self, qid: str, sender: str, message: bytes) -> tuple[str, bytes]:
        """Hide internal host names on mail our own users and hosts send; log what changed."""
        new_sender = self.masquerader.rewrite_address(sender)
        message, changes = self.masquerader.rewrite_headers(message)
        if new_sender != sender:
            changes.insert(0, (sender, new_sender))
        for old, new in changes:
            maillog.emit("masqueraded", id=qid, original=old, rewritten=new)
        return new_sender, message

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
