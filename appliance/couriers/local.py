"""Local delivery of one queued recipient: directory lookup, trace headers, then the mail store.

Alias targets that are commands or files go to the courier given as `programs` instead.

Spam (a recipient whose `folder` is Junk, set at end of DATA by filters/pipeline.py DataStage)
goes to the user's Junk folder (IMAP SPECIAL-USE \\Junk), which exists once the user logged in
over IMAP. A user without one (POP3 only) gets it in INBOX instead, marked so that a mail
client's filter can sort it: `X-Spam-Flag: YES` and `[SPAM] ` before the Subject.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from appliance.aliases import is_command_or_file
from appliance.envelope import Envelope, Recipient
from appliance.errors import NoSuchMailbox, PermanentFailure
from appliance.interfaces import ICourier, IDirectory, IMailStore, UserRecord
from appliance.message import field, has, prepend, replace, rewrite

JUNK = "Junk"
SPAM_PREFIX = b"[SPAM] "


@implementer(ICourier)
class LocalCourier:
    """Delivers to a local mailbox.

    The user is looked up again at delivery time because accounts change while mail waits in
    the queue: a vanished user bounces (5.1.1), while a directory that cannot answer fails with
    DirectoryUnavailable, a temporary failure, so the queue retries instead of bouncing.

    `programs` (couriers/command.py's CommandCourier) takes `|command` and `/file` recipients;
    None when `[aliases] allow_commands` is off, and then such a recipient still in the queue
    from before bounces rather than running.
    """

    def __init__(self, directory: IDirectory, store: IMailStore, programs: ICourier | None = None,
                 quotas: Any = None):
        self._directory = directory
        self._store = store
        self._programs = programs
        self._quotas = quotas          # store/quota.py Quotas; None = no quotas

    def deliver(self, envelope: Envelope, recipient: Recipient, message: bytes) -> Deferred:
        """Deferred[str]: the path written in the mailbox (or the command or file delivered to)."""
        if is_command_or_file(recipient.address):
            if self._programs is None:
                return fail(PermanentFailure("5.7.1", "delivery to commands and files is turned off "
                                             "([aliases] allow_commands = no)"))
            return self._programs.deliver(envelope, recipient, message)
        d = self._directory.lookup(recipient.address)
        d.addCallback(self._store_for, envelope, recipient, message)
        return d

    def _store_for(self, user: UserRecord | None, envelope: Envelope, recipient: Recipient,
                   message: bytes) -> Deferred:
        if user is None:
            raise NoSuchMailbox("no such user")
        trace = trace_headers(envelope, recipient)
        if self._quotas is not None:
            # Over quota fails with MailboxFull (4.2.2, temporary): the message stays queued.
            d = self._quotas.admit(user, len(trace) + len(message))
            return d.addCallback(lambda _: self._write(user, trace, envelope, recipient, message))
        return self._write(user, trace, envelope, recipient, message)

    def _write(self, user: UserRecord, trace: bytes, envelope: Envelope, recipient: Recipient,
               message: bytes) -> Deferred:
        if not recipient.folder:
            return self._store.deliver(user, trace + message, envelope.sender)
        fallback = trace + junk_in_inbox(message) if recipient.folder == JUNK else None
        return self._store.deliver(user, trace + message, envelope.sender, folder=recipient.folder,
                                   fallback=fallback)


def _with_extension(recipient: Recipient) -> str:
    """`alice+tag@d` for a plus-addressed recipient, so filters can sort on the tag."""
    if not recipient.extension:
        return recipient.address
    local, _, domain = recipient.address.rpartition("@")
    return f"{local}{recipient.extension}@{domain}"


def trace_headers(envelope: Envelope, recipient: Recipient) -> bytes:
    """Return-Path and Delivered-To (RFC 5321 4.4 / Postfix's loop marker), in wire form."""
    sender = " ".join(envelope.sender.split())
    rcpt = " ".join(_with_extension(recipient).split())
    return field("Return-Path", f"<{sender}>") + field("Delivered-To", rcpt)


def junk_in_inbox(message: bytes) -> bytes:
    """Spam for a mailbox without a Junk folder: `X-Spam-Flag: YES` (set here too: DMARC quarantine
    sets no flag, and a sender's own `NO` must not stay) and the Subject prefixed `[SPAM] ` (once),
    for POP3 users' filters."""
    message = replace(message, "X-Spam-Flag", "YES")
    if not has(message, "Subject"):
        return prepend(message, ("Subject", SPAM_PREFIX.strip()))
    return rewrite(message, ["Subject"], _prefixed)


def _prefixed(text: bytes) -> bytes:
    """`Subject: Hello` -> `Subject: [SPAM] Hello`; a Subject already marked is left alone."""
    name, _, value = text.partition(b":")
    value = value.lstrip(b" \t")
    if value.startswith(SPAM_PREFIX.strip()):
        return text
    return name + b": " + SPAM_PREFIX + value
