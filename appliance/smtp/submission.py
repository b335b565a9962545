"""The submission policy (587 with STARTTLS, 465 implicit TLS): RFC 6409 message submission.

AUTH is required before MAIL; a user may send only as an address that is theirs; relaying
is then allowed. Missing Message-ID and Date are added by the intake (RFC 6409 8.2, 8.3).
"""
from __future__ import annotations

from typing import Any

from appliance import replies
from appliance.intake import RecipientResolver
from appliance.replies import SMTPReplyError


class SubmissionPolicy:
    """Authenticated users only; senders they own; any recipient."""

    offers_auth = True
    submission = True

    def __init__(self, name: str, resolver: RecipientResolver, quotas: Any = None) -> None:
        self.name = name
        self.resolver = resolver
        self.quotas = quotas           # store/quota.py Quotas: 452 4.2.2 for a full mailbox

    def check_sender(self, conn: Any, sender: str) -> Any:
        """A user sends as their own addresses (primary, and extra ones an admin granted in the
        directory), or as an alias that points only at them (contact@ for the one person behind it)."""
        user = conn.user
        if user is None:
            raise SMTPReplyError(replies.AUTH_REQUIRED)
        if sender == user.address or sender in user.addresses:
            return None
        if not self.resolver.is_local(sender):
            raise SMTPReplyError(replies.SENDER_NOT_OWNED)
        d = self.resolver.expand(sender)
        d.addCallback(self._alias_of_user, user)
        return d

    @staticmethod
    def _alias_of_user(targets: list[str] | None, user: Any) -> None:
        if targets != [user.address]:
            raise SMTPReplyError(replies.SENDER_NOT_OWNED)

    def check_recipient(self, conn: Any, rcpt: str) -> Any:
        d = self.resolver.resolve(rcpt, insider=True)
        if self.quotas is not None:
            d.addCallback(self.quotas.admit_recipients, self.resolver.directory, getattr(conn, "declared_size", 0))
        return d

    def insider(self, conn: Any) -> bool:
        return conn.user is not None
