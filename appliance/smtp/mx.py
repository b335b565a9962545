"""The MX listener's policy (port 25): mail for our domains, relay only for trusted networks.

No AUTH is offered here: users submit on 587/465 (RFC 6409), so a password never crosses the
MX port and a stolen one cannot turn port 25 into a relay.
"""
from __future__ import annotations

from typing import Any

from appliance import address, replies
from appliance.replies import SMTPReplyError
from appliance.intake import RecipientResolver


class MXPolicy:
    """Accepts any syntactically valid sender; recipients must be local users or aliases."""

    name = "smtp"
    offers_auth = False
    submission = False

    def __init__(self, resolver: RecipientResolver, trusted_networks: tuple[Any, ...], quotas: Any = None) -> None:
        self.resolver = resolver
        self.trusted_networks = trusted_networks
        self.quotas = quotas           # store/quota.py Quotas: 452 4.2.2 for a full mailbox

    def check_sender(self, conn: Any, sender: str) -> None:
        return None

    def check_recipient(self, conn: Any, rcpt: str) -> Any:
        if not self.resolver.is_local(rcpt) and not self.may_relay(conn):
            raise SMTPReplyError(replies.RELAY_DENIED)
        d = self.resolver.resolve(rcpt, insider=self.insider(conn))
        if self.quotas is not None:
            d.addCallback(self.quotas.admit_recipients, self.resolver.directory, getattr(conn, "declared_size", 0))
        return d

    def may_relay(self, conn: Any) -> bool:
        return self.insider(conn)

    def insider(self, conn: Any) -> bool:
        """Hosts of our own network: they may relay, use restricted lists, and are masqueraded."""
        return address.in_networks(conn.peer, self.trusted_networks)
