"""One acceptance path for every message, from SMTP or the pickup folder: recipients, checks, trace, the queue put.

SMTP resolves each RCPT while the client waits (through its listener's policy, with the
resolver below) and hands the whole message over at the end of DATA; the pickup folder hands
over each file with its recipients still to resolve (`resolve_all`), since the sendmail command
cannot be refused. From there one path: the checks, then the Date and Message-ID a submission
lacks, masquerading, the Received line, and the queue, which fires only once the message is
durable, so that SMTP answers 250 only then. Recipients refused after the fact are bounced.
"""
from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from appliance import address, bounce, maillog, replies
from appliance.aliases import AliasBrokenError, is_command_or_file
from appliance.envelope import FAILED, Envelope, Recipient, new_id
from appliance.message import get_all, has, headers, prepend, remove
from appliance.message import field as header_field
from appliance.replies import SMTPReplyError

MAX_DIRECTORY_ALIAS_DEPTH = 5
MAX_HOPS = 50            # Received: fields a message may carry when it reaches us (Postfix's hopcount_limit)
SUBMISSION_REMOVED = ("Bcc", "Resent-Bcc")   # blind copies stay blind (RFC 5322 3.6.3), as Postfix's cleanup does


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

    def resolve(self, rcpt: str, insider: bool = True) -> defer.Deferred:
        """Deferred[list[Recipient]]; fails with SMTPReplyError (550 5.1.1, 5.7.1 or 5.4.6).

        `insider`: the sender is one of ours (authenticated, or on a trusted network), which
        restricted lists require. Plain callbacks, not a generator: this runs for every RCPT.
        """
        try:
            rcpt = self.unmasquerade(rcpt)
            if not address.in_domains(rcpt, self.domains):
                return defer.succeed([Recipient(address=rcpt, local=False)])
            candidates = [(rcpt, "")]
            base, extension = self._split_extension(rcpt)
            if base != rcpt:
                candidates.append((base, extension))
            return self._candidate(candidates, 0, rcpt, insider)
        except Exception:
            return defer.fail()

    def _candidate(self, candidates: list[tuple[str, str]], index: int, rcpt: str, insider: bool) -> defer.Deferred:
        """Try candidates[index] (alias, then user), then the next; the catch-all after the last."""
        if index == len(candidates):
            return self._finals(self._catch_all(rcpt), rcpt)
        candidate, ext = candidates[index]
        if candidate in self.restricted and not insider:
            raise SMTPReplyError(replies.LIST_RESTRICTED)

        def expanded(targets: list[str] | None) -> Any:
            if targets is not None:
                return self._finals(targets, rcpt)
            return self.directory.lookup(candidate).addCallback(found)

        def found(user: Any) -> Any:
            if user is not None:
                return [Recipient(address=_mailbox_address(user.address, rcpt),
                                  original=_unless_same(rcpt, user.address), extension=ext)]
            return self._candidate(candidates, index + 1, rcpt, insider)

        return self.expand(candidate).addCallback(expanded)

    @defer.inlineCallbacks
    def _finals(self, targets: list[str], rcpt: str, depth: int = 0) -> Any:
        """Deferred[list[Recipient]], one per mailbox or address: a user named both in the aliases
        file and in a directory group that the file names still gets one copy."""
        result: list[Recipient] = []
        for target in targets:
            for recipient in (yield self._final(target, rcpt, depth)):
                if all(recipient.address != r.address for r in result):
                    result.append(recipient)
        return result

    def expand(self, addr: str, depth: int = 0) -> defer.Deferred:
        """Deferred[list[str] | None]: the aliases file first, then the directory's own aliases
        (LDAP nisMailAlias, groupOfNames, mailRoutingAddress), whose members may be lists too."""
        if self.aliases is not None:
            try:
                targets = self.aliases.resolve(addr)
            except AliasBrokenError as e:
                maillog.error("alias-broken", rcpt=addr, reason=str(e))
                return defer.fail(SMTPReplyError(replies.ALIAS_BROKEN))
            except Exception as e:  # AliasLoopError, or deeper than the aliases file allows
                maillog.error("alias-loop", rcpt=addr, reason=str(e))
                return defer.fail(SMTPReplyError(replies.ALIAS_LOOP))
            if targets is not None:
                return defer.succeed(targets)
        if getattr(self.directory, "resolve_alias", None) is None:
            return defer.succeed(None)          # a directory without aliases of its own (the users file)
        return self._expand_directory(addr, depth)

    @defer.inlineCallbacks
    def _expand_directory(self, addr: str, depth: int) -> Any:
        """Deferred[list[str] | None]: the directory's own alias, list or forward for `addr`,
        members expanded in turn (`expand`), refused when deeper than MAX_DIRECTORY_ALIAS_DEPTH
        or when a value reads as a command or file."""
        directory_aliases = getattr(self.directory, "resolve_alias", None)
        if directory_aliases is None:
            return None
        targets = yield directory_aliases(addr)
        if targets is None:
            return None
        for target in targets:
            if is_command_or_file(target.strip()):
                # Only the aliases file (root's) may name commands and files: whoever may edit a
                # list or a forward in the directory must not run programs on the server.
                maillog.error("directory-target-refused", rcpt=addr, target=target.strip(),
                              reason="commands and files are allowed in the aliases file only")
                raise SMTPReplyError(replies.DIRECTORY_TARGET_REFUSED)
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
    def _final(self, target: str, rcpt: str, depth: int = 0) -> Any:
        """Deferred[list[Recipient]] for one expanded target: a local user, a remote address to
        forward to, a command (`|cmd`) or file (`/path`) that the aliases file may name when
        allow_commands is on, or a directory list (nisMailAlias, groupOfNames) and its members.

        The aliases file's targets are final for the file, but `sales: staff@...` may name a list
        that lives in the directory: it is expanded as if staff@ had been given at RCPT, through
        the same path (depth limit, no commands or files from the directory). A user is looked
        up first, so a file alias to a user still delivers to the mailbox, as it always has.
        `depth` counts the lists passed on the way here, so a loop through the aliases file and
        the directory (sales -> staff -> sales) ends in 550 5.4.6 too.
        """
        if target.startswith(("|", "/")):
            return [Recipient(address=target, local=True, original=rcpt)]
        if not address.in_domains(target, self.domains):
            return [Recipient(address=address.normalise(target), local=False, original=_unless_same(rcpt, target))]
        user = yield self.directory.lookup(target)
        if user is not None:
            return [Recipient(address=_mailbox_address(user.address, rcpt), local=True,
                              original=_unless_same(rcpt, user.address))]
        members = yield self._expand_directory(target, depth)
        if members is None:
            raise SMTPReplyError(replies.UNKNOWN_USER)
        return (yield self._finals(members, rcpt, depth + 1))


def _mailbox_address(found: str, rcpt: str) -> str:
    """A user's address from the directory, refused when it would read as a command or file.

    The local courier hands `|...` and `/...` recipients to commands and files, so such an
    address must come from the aliases file only, never from a directory entry's mail value.
    """
    if is_command_or_file(found):
        maillog.error("directory-target-refused", rcpt=rcpt, target=found,
                      reason="a directory address may not read as a command or file")
        raise SMTPReplyError(replies.DIRECTORY_TARGET_REFUSED)
    return found


def _unless_same(given: str, final: str) -> str:
    return given if address.normalise(given) != final else ""


@dataclass
class Arrival:
    """One message handed to intake, with the facts its envelope, Received line and log line record."""

    sender: str                        # "" for the null sender
    recipients: list[Recipient]        # resolved and accepted
    message: bytes                     # wire form (CRLF)
    service: str                       # who took it in, for the log: smtp, submission, smtps, pickup
    protocol: str                      # Received "with" (RFC 3848): ESMTP, ESMTPSA, ..., or local
    peer: str = ""                     # the client's IP address; "" for a local program
    helo: str = ""
    tls: str = ""                      # the TLS session, for the Received line
    login: str = ""                    # the authenticated user, or the pickup file's owner
    insider: bool = False              # one of our users or hosts: masqueraded
    submission: bool = False           # RFC 6409 submission: a missing Date and Message-ID are added
    refused: list[Recipient] = field(default_factory=list)   # failed for good after the fact: bounced
    facts: Any = None                  # filters.base.Facts of the SMTP session; None for the pickup
    id: str = field(default_factory=new_id)                  # the queue id, from arrival on
    session: str = ""                  # the SMTP session's id, for the log; "" for the pickup
    given: list[str] = field(default_factory=list)           # the RCPT addresses as the client named them


# A check sees the arrival before anything is added to it. It returns None (or a Deferred firing
# None) to let the message through, and raises SMTPReplyError to refuse it: SMTP answers with that
# reply; the pickup keeps the file for a 4xx and sets it aside for a 5xx. It may add header fields
# to `arrival.message` (a verdict, a score), through message.py.
Check = Callable[[Arrival], Any]


class Intake:
    """The one place a message is accepted: SMTP (smtp/server.py) and the pickup (pickup.py) both call `accept`."""

    def __init__(self, queue: Any, hostname: str, resolver: RecipientResolver, *, clock: Any,
                 masquerader: Any = None, checks: list[Check] | None = None, signer: Any = None) -> None:
        self.queue = queue
        self.hostname = hostname
        self.resolver = resolver
        self.masquerader = masquerader
        # The end-of-DATA checks (filters.pipeline.DataStage: spam, viruses, DKIM, DMARC), run in
        # this order on every message, whichever way it came.
        self.checks: list[Check] = list(checks or [])
        # filters.dkimsign: signs our own users' and hosts' mail once it is complete (after
        # masquerading), or None when DKIM signing is not set up.
        self.signer = signer
        self.clock = clock              # dates in Received and Date: reactor time, so tests can set it

    def accept(self, arrival: Arrival) -> defer.Deferred:
        """Deferred[queue id], firing only once the queue holds the message durably.

        Fails with a check's SMTPReplyError, or with the queue's own failure (QueueWriteError):
        each source answers that its own way (SMTP 451, the pickup keeps its file).
        """
        try:
            self.check_loops(arrival)
            if self.checks or (self.signer is not None and self.ours(arrival)):
                return defer.ensureDeferred(self._checked(arrival))
            # The common case (no end-of-DATA checks, nothing to sign): plain callbacks, no
            # coroutine, on the ingest's hot path.
            return self._queue(arrival, *self.stamp(arrival))
        except Exception:
            return defer.fail()

    async def _checked(self, arrival: Arrival) -> str:
        for check in self.checks:
            await defer.maybeDeferred(check, arrival)
        sender, message = self.stamp(arrival)
        if self.signer is not None and self.ours(arrival):
            message = await self.signer.sign(sender, message)
        return await self._queue(arrival, sender, message)

    def _queue(self, arrival: Arrival, sender: str, message: bytes) -> defer.Deferred:
        """Deferred[queue id]: the message queued (durably) and logged, then the refused recipients bounced."""
        if arrival.recipients:
            envelope = Envelope(id=arrival.id, sender=sender, recipients=list(arrival.recipients), peer=arrival.peer,
                                helo=arrival.helo, protocol=arrival.protocol, login=arrival.login, size=len(message))
            d = self.queue.put(envelope, message).addCallback(self._log_received, arrival, sender, envelope)
        else:
            d = defer.succeed(arrival.id)
        if arrival.refused:       # not the common case: there, one callback logs and answers the id
            d.addCallback(lambda _: defer.ensureDeferred(self._bounce(arrival, sender, message)))
            d.addCallback(lambda _: arrival.id)
        return d

    @staticmethod
    def _log_received(_: object, arrival: Arrival, sender: str, envelope: Envelope) -> str:
        """Log the `received` line; the queue id for the caller's reply."""
        maillog.received(arrival.id, arrival.service, arrival.peer or "local", sender, envelope.size,
                         [r.address for r in envelope.recipients], arrival.protocol, arrival.login,
                         session=arrival.session,
                         given=arrival.given or [r.original or r.address for r in envelope.recipients])
        return arrival.id

    def check_loops(self, arrival: Arrival) -> None:
        """Mail loops, before anything else (RFC 5321 6.3): too many hops, or a forward already made.

        More than MAX_HOPS Received: fields refuses the message (554 5.4.6). A forward (an alias
        target, `original` set) whose alias or target already appears in a Delivered-To: field
        went round once already: that recipient bounces with 5.4.6, or the whole message is
        refused when every recipient is such a loop. A local program (the pickup) cannot be
        refused, so there the recipients bounce instead.
        """
        present = headers(arrival.message)
        hops = len(get_all(present, "Received"))
        if hops > MAX_HOPS:
            maillog.error("mail-loop", id=arrival.id, reason=f"{hops} Received fields, more than {MAX_HOPS}")
            self._loop(arrival, arrival.recipients, replies.TOO_MANY_HOPS, f"too many hops ({hops})")
            return
        delivered = {_normalised(value.decode("utf-8", "replace")) for value in get_all(present, "Delivered-To")}
        if not delivered:
            return
        looping = [r for r in arrival.recipients
                   if r.original and ({_normalised(r.original), _normalised(r.address)} & delivered)]
        for r in looping:
            maillog.error("mail-loop", id=arrival.id, rcpt=r.address, original=r.original,
                          reason="already in Delivered-To")
        if looping:
            self._loop(arrival, looping, replies.MAIL_LOOP, None)

    @staticmethod
    def _loop(arrival: Arrival, looping: list[Recipient], reply: replies.Reply, text: str | None) -> None:
        if len(looping) == len(arrival.recipients) and arrival.peer:
            raise SMTPReplyError(reply)
        for r in looping:
            what = text or f"mail forwarding loop for {r.original or r.address}"
            arrival.refused.append(_refused(r.original or r.address, reply.enhanced, what))
        arrival.recipients = [r for r in arrival.recipients if r not in looping]

    @staticmethod
    def ours(arrival: Arrival) -> bool:
        """Mail from our own users and hosts: submission, a login, trusted networks, the pickup."""
        return arrival.submission or arrival.insider or bool(arrival.login) or not arrival.peer

    def stamp(self, arrival: Arrival) -> tuple[str, bytes]:
        """(envelope sender, message) as queued: completed, masqueraded, with our Received line on top."""
        sender, message = arrival.sender, arrival.message
        if arrival.submission or arrival.insider or arrival.login:
            # Our own users' and hosts' mail: the other recipients must not learn the blind copies.
            # Mail from outsiders keeps what it came with: not ours to edit, the harm is at its source.
            message = remove(message, *SUBMISSION_REMOVED)
        if arrival.submission:
            message = self.complete(message)
        if arrival.insider and self.masquerader is not None and self.masquerader.enabled:
            sender, message = self.masquerade(arrival.id, sender, message)
        # Trace fields go on top of whatever came, as every hop before us put theirs.
        return sender, header_field("Received", self.received(arrival)) + message

    def complete(self, message: bytes) -> bytes:
        """Add the Date and Message-ID a careless client left out (RFC 6409 8.2, 8.3)."""
        present = headers(message)
        added = []
        if not has(present, "Date"):
            added.append(("Date", rfc5322_date(self.clock.seconds())))
        if not has(present, "Message-ID"):
            added.append(("Message-ID", email.utils.make_msgid(domain=self.hostname)))
        return prepend(message, *added)

    def masquerade(self, qid: str, sender: str, message: bytes) -> tuple[str, bytes]:
        """Hide internal host names on mail our own users and hosts send; log what changed."""
        new_sender = self.masquerader.rewrite_address(sender)
        message, changes = self.masquerader.rewrite_headers(message)
        if new_sender != sender:
            changes.insert(0, (sender, new_sender))
        for old, new in changes:
            maillog.emit("masqueraded", id=qid, original=old, rewritten=new)
        return new_sender, message

    def received(self, arrival: Arrival) -> str:
        """The value of our RFC 5321 4.4 trace field; `for` only with one recipient, so a list's members stay private.

        From the network it names the client (HELO and address) and the TLS session; from a local
        program, the service and the user who ran it.
        """
        if arrival.peer:
            origin, note = f"{_printable(arrival.helo or 'unknown')} ([{arrival.peer}])", arrival.tls
        else:
            origin, note = f"local ({arrival.service})", f"user {_user_name(arrival.login)}"
        lines = [f"from {origin}", f"\tby {self.hostname} (mailappliance) with {arrival.protocol} id {arrival.id}"]
        if note:
            lines.append(f"\t({note})")
        tail = f"; {rfc5322_date(self.clock.seconds())}"
        if len(arrival.recipients) == 1:
            rcpt = arrival.recipients[0]
            lines.append(f"\tfor <{rcpt.original or rcpt.address}>{tail}")
        else:
            lines[-1] += tail
        return "\r\n".join(lines)

    async def resolve_all(self, given: list[str], insider: bool = True) -> tuple[list[Recipient], list[Recipient]]:
        """(recipients, refused) for a source that cannot be refused while it waits (the pickup).

        A recipient the resolver refuses is returned FAILED with its status, to be bounced; a
        directory that cannot tell (DirectoryUnavailable) fails the whole call, to be tried again.
        """
        recipients: list[Recipient] = []
        refused: list[Recipient] = []
        for rcpt in given:
            if not address.is_valid(rcpt):
                refused.append(_refused(rcpt, "5.1.3", "bad recipient address syntax"))
                continue
            try:
                found = await self.resolver.resolve(address.normalise(rcpt), insider=insider)
            except SMTPReplyError as e:
                refused.append(_refused(rcpt, e.reply.enhanced, e.reply.text))
                continue
            recipients += [r for r in found if r.address not in {known.address for known in recipients}]
        return recipients, refused

    async def _bounce(self, arrival: Arrival, sender: str, message: bytes) -> None:
        """Tell the sender about the refused recipients (never the null sender: no bounce of a bounce)."""
        for rcpt in arrival.refused:
            maillog.bounced(arrival.id, rcpt.address, rcpt.last_error, original=rcpt.original)
        if not sender:
            return
        original = Envelope(id=arrival.id, sender=sender, recipients=arrival.refused, protocol=arrival.protocol)
        dsn, data = bounce.make_dsn(original, arrival.refused, self.hostname, bounce.headers_of(message),
                                    is_local=self.resolver.is_local, now=self.clock.seconds())
        await self.queue.put(dsn, data)
        bounce.log_queued(dsn)


_date_second: int | None = None
_date_text = ""


def rfc5322_date(seconds: float) -> str:
    """email.utils.formatdate(seconds, localtime=True), formatted once per second (every Received line has one)."""
    global _date_second, _date_text
    second = int(seconds)
    if second != _date_second:
        _date_text, _date_second = email.utils.formatdate(second, localtime=True), second
    return _date_text


def _normalised(text: str) -> str:
    """An address as compared for loops: `<x@Y>` and `x@y` are the same; anything else as written."""
    text = text.strip().strip("<>").strip()
    return address.normalise(text) if address.is_valid(text) else text.lower()


def _refused(rcpt: str, status: str, text: str) -> Recipient:
    return Recipient(address=rcpt, state=FAILED, status=status, last_error=f"{status} {text}")


def _printable(text: str) -> str:
    """`text` with anything but visible ASCII (33..126) as `?`, at most 255 characters."""
    if text.isascii() and text.isprintable() and " " not in text:
        return text[:255]           # the usual HELO name: no per-character work
    return "".join(c if 32 < ord(c) < 127 else "?" for c in text)[:255]


def _user_name(user: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "?" for c in user)
