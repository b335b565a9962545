"""Named SMTP replies with their RFC references, so wording and codes live in one table.

Codes: RFC 5321 4.2; enhanced status codes: RFC 3463 and RFC 5248; AUTH: RFC 4954 6;
STARTTLS: RFC 3207 4; SIZE: RFC 1870 6.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        # The enhanced code's class must agree with the basic code's (RFC 3463 2).
        assert not self.enhanced or self.enhanced[0] == str(self.code)[0], self

    def line(self, detail: str = "") -> bytes:
        text = f"{self.text}: {detail}" if detail else self.text
        body = f"{self.enhanced} {text}" if self.enhanced else text
        return f"{self.code} {body}".encode("utf-8", "replace")

    def with_text(self, text: str) -> "Reply":
        return Reply(self.code, self.enhanced, text)


class SMTPReplyError(Exception):
    """Raised by policy code to answer the current command with `reply`."""

    def __init__(self, reply: Reply, detail: str = ""):
        super().__init__(reply.text)
        self.reply = reply
        self.detail = detail


OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
RESET_OK = Reply(250, "2.0.0", "Reset ok")
QUEUED = Reply(250, "2.0.0", "Ok: queued as")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321; this server speaks ESMTP")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
VRFY_NEVER = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

# 4xx: temporary
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
DIRECTORY_UNAVAILABLE = Reply(451, "4.4.3", "Directory temporarily unavailable, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")

# 5xx: permanent
BAD_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BAD_BYTES = Reply(500, "5.5.2", "Invalid characters in command")
SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
AUTH_ABORTED = Reply(501, "5.0.0", "Authentication aborted")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
EXPN_REFUSED = Reply(502, "5.5.1", "EXPN is not available")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
TLS_ALREADY = Reply(503, "5.5.1", "TLS already active")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: User unknown")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
LIST_RESTRICTED = Reply(550, "5.7.1", "Recipient address rejected: list open to members of the organisation only")
ALIAS_LOOP = Reply(550, "5.4.6", "Recipient address rejected: alias loop")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(553, "5.1.3", "Bad recipient address syntax")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by user")
BAD_MESSAGE = Reply(554, "5.6.0", "Message content rejected")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
