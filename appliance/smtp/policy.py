"""What one SMTP listener accepts: the Policy that mx.py (port 25) and submission.py (587, 465) implement."""
from __future__ import annotations

from typing import Any, Protocol


class Policy(Protocol):
    """Asked by smtp/server.py at MAIL and RCPT. Methods return a value or a Deferred, or raise SMTPReplyError."""

    name: str                 # the service name used in logs: smtp, submission, smtps
    offers_auth: bool         # AUTH advertised (when the channel is safe)
    submission: bool          # RFC 6409 submission: intake adds a missing Date and Message-ID

    def insider(self, conn: Any) -> bool:
        """The client is one of ours (authenticated, or on a trusted network): its mail is masqueraded."""

    def check_sender(self, conn: Any, sender: str) -> Any: ...

    def check_recipient(self, conn: Any, rcpt: str) -> Any:
        """Deferred[list[Recipient]]: the envelope recipients RCPT stands for (intake.RecipientResolver)."""
