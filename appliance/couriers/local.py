"""Local delivery of one queued recipient: directory lookup, trace headers, then the mail store."""
from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from appliance.envelope import Envelope, Recipient
from appliance.errors import NoSuchMailbox
from appliance.interfaces import ICourier, IDirectory, IMailStore, UserRecord


@implementer(ICourier)
class LocalCourier:
    """Delivers to a local mailbox.

    The user is looked up again at delivery time because accounts change while mail waits in
    the queue: a vanished user bounces (5.1.1), while a directory that cannot answer fails with
    DirectoryUnavailable, a temporary failure, so the queue retries instead of bouncing.
    """

    def __init__(self, directory: IDirectory, store: IMailStore):
        self._directory = directory
        self._store = store

    def deliver(self, envelope: Envelope, recipient: Recipient, message: bytes) -> Deferred:
        """Deferred[str]: the path written in the mailbox."""
        d = self._directory.lookup(recipient.address)
        d.addCallback(self._store_for, envelope, recipient, message)
        return d

    def _store_for(self, user: UserRecord | None, envelope: Envelope, recipient: Recipient,
                   message: bytes) -> Deferred:
        if user is None:
            raise NoSuchMailbox("5.1.1 no such user")
        return self._store.deliver(user, trace_headers(envelope, recipient) + message, envelope.sender)


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
    return f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode("utf-8")
