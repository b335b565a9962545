"""Named SMTP, POP3 and IMAP replies with their RFC references, so wording and codes live in one table.

SMTP codes: RFC 5321 4.2; enhanced status codes: RFC 3463 and RFC 5248; AUTH: RFC 4954 6;
STARTTLS: RFC 3207 4; SIZE: RFC 1870 6.
IMAP status responses: RFC 3501 7.1; response codes: RFC 3501 7.1, RFC 4315 (UIDPLUS),
RFC 5530 (AUTHENTICATIONFAILED, UNAVAILABLE, PRIVACYREQUIRED, SERVERBUG, CANNOT).
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
SERVER_BUSY = Reply(421, "4.7.0", "Too many connections, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
DIRECTORY_UNAVAILABLE = Reply(451, "4.4.3", "Directory temporarily unavailable, try again later")
ALIAS_BROKEN = Reply(451, "4.3.0", "Temporary lookup failure, try again later")   # its aliases line is broken
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")                       # RFC 3463 3.3; temporary: the sender retries
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
# The checks' refusals (appliance/filters): 4.7.1 "delivery not authorized" (RFC 3463 3.8), temporary
GREYLISTED = Reply(451, "4.7.1", "Greylisted, try again later")          # RFC 6647; with_text says when
CLIENT_TOO_FAST = Reply(450, "4.7.1", "Too many messages from your address, try again later")
CLIENT_TOO_MANY_RECIPIENTS = Reply(450, "4.7.1", "Too many recipients from your address, try again later")
USER_DAILY_LIMIT = Reply(450, "4.7.1", "Daily sending limit reached")
HOOK_TEMPFAIL = Reply(451, "4.7.1", "Try again later")                  # an operator's hook; its text replaces this
HOOK_REJECT = Reply(550, "5.7.1", "Refused by local policy")             # an operator's hook; its text replaces this
SPF_TEMPERROR = Reply(451, "4.7.24", "SPF validation error (DNS), try again later")   # RFC 7372 3.2: temperror
# spamd or clamd down or slow with [checks] scanner_failure = tempfail
SCANNER_UNAVAILABLE = Reply(451, "4.7.1", "Content scanner unavailable, try again later")

# 5xx: permanent
PREGREET = Reply(554, "5.5.1", "Protocol error: you talked before the greeting ended")  # postscreen's pregreet test
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
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops: mail loop")
MAIL_LOOP = Reply(554, "5.4.6", "Mail forwarding loop")
DNSBL_LISTED = Reply(554, "5.7.1", "Service unavailable; client blocked using a DNS block list")  # RFC 5782; the text names the lists
DIRECTORY_TARGET_REFUSED = Reply(550, "5.7.1", "Recipient address rejected: delivery target not allowed")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
SPF_FAIL = Reply(550, "5.7.23", "SPF validation failed")          # RFC 7372 3.2; the domain's explanation follows
DMARC_REJECT = Reply(550, "5.7.1", "Rejected by the DMARC policy of the From: domain")   # RFC 7489 6.6.4, 7.3
SPAM_REJECTED = Reply(550, "5.7.1", "Message refused as spam")            # spamd score >= spam_reject_score
VIRUS_FOUND = Reply(554, "5.7.1", "Virus found")                           # clamd; with_text names the signature


class POP3:
    """Named POP3 refusals (RFC 1939; the bracketed response codes are RFC 2449 8 and RFC 3206,
    announced by RESP-CODES and AUTH-RESP-CODE). Words stay generic: details go to the log."""

    # Login (RFC 1939 7, RFC 2595 4, RFC 5034; DESIGN.md's policy table)
    PLAINTEXT_REFUSED = b"-ERR [AUTH] Plaintext authentication is not allowed without TLS; use STLS"
    AUTH_FAILED = b"-ERR [AUTH] Authentication failed"
    DIRECTORY_DOWN = b"-ERR [SYS/TEMP] Directory temporarily unavailable, try again later"
    MAILDROP_DOWN = b"-ERR [SYS/TEMP] Maildrop temporarily unavailable, try again later"
    LOGIN_THROTTLED = b"-ERR [SYS/TEMP] Too many failed logins, try again later"
    IN_USE = b"-ERR [IN-USE] Maildrop is in use by another session"
    USER_FIRST = b"-ERR Send USER first"
    NO_APOP = b"-ERR APOP is not available"
    UNKNOWN_MECHANISM = b"-ERR Unsupported authentication mechanism"
    BAD_BASE64 = b"-ERR Cannot decode the authentication response"
    AUTH_CANCELLED = b"-ERR Authentication cancelled"
    TLS_ACTIVE = b"-ERR TLS is already active"
    TLS_UNAVAILABLE = b"-ERR TLS is not available"
    # Transaction and update (RFC 1939 5, 6)
    NOT_KEPT = b"-ERR [SYS/TEMP] Some deleted messages were not removed"
    READ_FAILED = b"-ERR [SYS/TEMP] Cannot read the message now, try again later"
    LOCAL_ERROR = b"-ERR [SYS/TEMP] Local error, try again later"
    MESSAGE_GONE = b"-ERR Message no longer available"
    NO_SUCH_MESSAGE = b"-ERR No such message"
    BAD_NUMBER = b"-ERR Invalid message number"
    # Any state
    SYNTAX = b"-ERR Syntax error"
    UNKNOWN = b"-ERR Unknown command"
    WRONG_STATE = b"-ERR Command not valid in this state"
    LINE_TOO_LONG = b"-ERR Line too long"
    TOO_MANY_ERRORS = b"-ERR Too many errors, closing connection"
    TIMEOUT = b"-ERR Autologout timer expired, closing connection"
    # Refused at connect (appliance.connlimit): temporary, the client tries again later
    TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections from your address"
    SERVER_BUSY = b"-ERR [SYS/TEMP] Too many connections, try again later"


# ---- IMAP ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IMAPReply:
    """An IMAP status response (RFC 3501 7.1) or continuation request (7.5): status, [code], text.

    Tagged replies name the command in their text ("FETCH completed"): `command` puts it there,
    so one reply serves every command. `data` follows the code inside the brackets.
    """

    status: str          # OK, NO, BAD, BYE, or "+" for a continuation request
    text: str
    code: str = ""       # a response code, sent as `[code data]`

    def message(self, data: bytes = b"", command: bytes = b"", detail: bytes | None = None) -> bytes:
        """What follows `tag STATUS `: `[CODE data] COMMAND text: detail`."""
        parts = []
        if self.code:
            parts.append(b"[" + self.code.encode("ascii") + (b" " + data if data else b"") + b"]")
        if command:
            parts.append(command)
        text = self.text.encode("ascii")
        if detail is not None:
            text += b": " + detail
        if text:
            parts.append(text)
        return b" ".join(parts)

    def line(self, tag: bytes = b"*", **kwargs: bytes) -> bytes:
        """The whole line without CRLF: `tag STATUS message`, or `+ text` for a continuation."""
        if self.status == "+":
            return b"+ " + self.message(**kwargs)
        return tag + b" " + self.status.encode("ascii") + b" " + self.message(**kwargs)


# OK (RFC 3501 7.1.1); "completed" takes the command's name.
IMAP_GREETING = IMAPReply("OK", "mailappliance IMAP4rev1 ready", "CAPABILITY")          # 7.1.1, 7.2.1
IMAP_COMPLETED = IMAPReply("OK", "completed")
IMAP_BEGIN_TLS = IMAPReply("OK", "Begin TLS negotiation now")                          # 6.2.1
IMAP_LOGGED_IN = IMAPReply("OK", "Logged in", "CAPABILITY")                            # 6.2.3, 7.1
IMAP_SELECTED = IMAPReply("OK", "completed", "READ-WRITE")                             # 6.3.1
IMAP_EXAMINED = IMAPReply("OK", "completed", "READ-ONLY")                              # 6.3.2
IMAP_PERMANENT_FLAGS = IMAPReply("OK", "Flags permitted", "PERMANENTFLAGS")            # 6.3.1
IMAP_FIRST_UNSEEN = IMAPReply("OK", "First unseen", "UNSEEN")                          # 6.3.1
IMAP_UIDVALIDITY = IMAPReply("OK", "UIDs valid", "UIDVALIDITY")                        # 6.3.1
IMAP_UIDNEXT = IMAPReply("OK", "Predicted next UID", "UIDNEXT")                        # 6.3.1
IMAP_APPENDED = IMAPReply("OK", "APPEND completed", "APPENDUID")                       # RFC 4315 3
IMAP_COPIED = IMAPReply("OK", "COPY completed", "COPYUID")                             # RFC 4315 3
IMAP_MOVED_UIDS = IMAPReply("OK", "", "COPYUID")                                       # RFC 6851 3.3 (untagged)
IMAP_IDLE_DONE = IMAPReply("OK", "IDLE terminated")                                    # RFC 2177 3
IMAP_COMPRESSING = IMAPReply("OK", "DEFLATE active")                                   # RFC 4978 3

# NO (RFC 3501 7.1.2): the command was understood and refused.
IMAP_LOGIN_DISABLED = IMAPReply("NO", "LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")    # 6.2.3, RFC 5530
IMAP_AUTHENTICATE_DISABLED = IMAPReply("NO", "Authentication is disabled before STARTTLS", "PRIVACYREQUIRED")
IMAP_UNKNOWN_MECHANISM = IMAPReply("NO", "Unsupported authentication mechanism")                # 6.2.2
IMAP_AUTH_FAILED = IMAPReply("NO", "Authentication failed", "AUTHENTICATIONFAILED")             # RFC 5530 3
IMAP_AUTH_UNAVAILABLE = IMAPReply("NO", "Temporary authentication failure, try again later", "UNAVAILABLE")
IMAP_READ_ONLY = IMAPReply("NO", "Mailbox is read-only", "READ-ONLY")                            # 6.4.6, 6.4.3
IMAP_BAD_CHARSET = IMAPReply("NO", "Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")        # 6.4.4, 7.1
IMAP_NO_MAILBOX = IMAPReply("NO", "Mailbox does not exist", "TRYCREATE")                        # 6.3.11, 6.4.7
IMAP_NAME_ENCODING = IMAPReply("NO", "Invalid mailbox name encoding", "CANNOT")                 # 5.1.3, RFC 5530
IMAP_SERVER_BUG = IMAPReply("NO", "Internal error; the log has the details", "SERVERBUG")       # RFC 5530 3
IMAP_OVER_QUOTA = IMAPReply("NO", "Quota exceeded", "OVERQUOTA")                                 # RFC 9208 4.3, 5530
IMAP_QUOTA_SET_REFUSED = IMAPReply("NO", "Quotas are set by the administrator", "NOPERM")        # RFC 9208 4.1.3
IMAP_NO_QUOTA_ROOT = IMAPReply("NO", "No such quota root", "NONEXISTENT")                        # RFC 9208 4.1.1
IMAP_COMPRESSION_ACTIVE = IMAPReply("NO", "Compression is already active", "COMPRESSIONACTIVE")  # RFC 4978 3

# BAD (RFC 3501 7.1.3): not understood, or not valid in this state.
IMAP_UNSUPPORTED = IMAPReply("BAD", "Unsupported command")
IMAP_EMPTY_LINE = IMAPReply("BAD", "Empty command line")
IMAP_MISSING_COMMAND = IMAPReply("BAD", "Missing command")
IMAP_ILLEGAL_SYNTAX = IMAPReply("BAD", "Illegal syntax")
IMAP_INVALID_ARGUMENTS = IMAPReply("BAD", "Invalid arguments")
IMAP_BAD_NAME_ENCODING = IMAPReply("BAD", "Invalid mailbox name encoding")
IMAP_INTERNAL_ERROR = IMAPReply("BAD", "Internal error")
IMAP_TLS_UNAVAILABLE = IMAPReply("BAD", "TLS not available")             # 6.2.1: STARTTLS answers OK or BAD only
IMAP_TLS_ACTIVE = IMAPReply("BAD", "TLS already active")
IMAP_AUTH_CANCELLED = IMAPReply("BAD", "Authentication cancelled")       # 6.2.2: "*" cancels with BAD
IMAP_BAD_PLAIN = IMAPReply("BAD", "Malformed PLAIN response")            # RFC 4616 2
IMAP_BAD_STATUS_ITEMS = IMAPReply("BAD", "Invalid STATUS items")         # 6.3.10
IMAP_BAD_STORE_ITEM = IMAPReply("BAD", "Invalid STORE item")             # 6.4.6
IMAP_EXPECTED_DONE = IMAPReply("BAD", "Expected DONE")                   # RFC 2177 3
IMAP_UNKNOWN_COMPRESSION = IMAPReply("BAD", "Unknown compression mechanism")   # RFC 4978 3: DEFLATE only

# BYE (RFC 3501 7.1.5): the server is closing the connection.
IMAP_LOGGING_OUT = IMAPReply("BYE", "Logging out")                       # 6.1.3
IMAP_LINE_TOO_LONG = IMAPReply("BYE", "Command line too long")
IMAP_TOO_MANY_ERRORS = IMAPReply("BYE", "Too many errors")
IMAP_TOO_MANY_CONNECTIONS = IMAPReply("BYE", "Too many connections from your address")   # instead of a greeting
IMAP_SERVER_BUSY = IMAPReply("BYE", "Too many connections, try again later")            # RFC 3501 7.1.5
IMAP_LITERAL_TOO_LARGE = IMAPReply("BYE", "Literal too large")           # RFC 7888 4: a literal we will not read

# Continuation requests (RFC 3501 7.5).
IMAP_SEND_LITERAL = IMAPReply("+", "Ready for literal data")
IMAP_SEND_AUTH_RESPONSE = IMAPReply("+", "")                             # 6.2.2: empty challenge for PLAIN
IMAP_IDLING = IMAPReply("+", "idling")                                   # RFC 2177 3
