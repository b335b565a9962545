"""RFC 3464 delivery status notifications: tell the sender which recipients failed, and why."""
from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from email.utils import formatdate

from appliance import maillog
from appliance.envelope import Envelope, Recipient, new_id
from appliance.message import split

# A diagnostic that is an SMTP reply ("550 ...") is labelled "smtp" (RFC 3464 2.3.6); ours are not.
_SMTP_REPLY = re.compile(r"^[245]\d\d[ -]")

# What a DSN may carry of the original message, as Postfix's bounce_size_limit: the whole message
# when it fits, else its header block only, itself cut to this size (at a field boundary).
SIZE_LIMIT = 50_000
# One recipient's reason in the DSN: far below the 998-octet line limit, whatever a peer or a
# program said (their full text is in the log).
REASON_LIMIT = 500


def headers_of(message: bytes, limit: int = SIZE_LIMIT) -> bytes:
    """The text/rfc822-headers part: the message's header block, with CRLF line ends, at most `limit` bytes.

    Whole header fields only (a field with its folded lines), as many as fit from the top: the
    trace fields a postmaster needs come first. A 5 MB header block no longer comes back whole.
    """
    head = split(message)[0]
    out: list[bytes] = []
    size = 0
    field: list[bytes] = []
    for line in head[:limit * 2 + 2].replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            continue
        if field and line[:1] not in (b" ", b"\t"):
            size = _take(field, out, size, limit)
            if size < 0:
                return b"".join(out)
            field = []
        field.append(line + b"\r\n")
    if field:
        _take(field, out, size, limit)
    return b"".join(out)


def _take(field: list[bytes], out: list[bytes], size: int, limit: int) -> int:
    """Append one field when it fits; -1 once the limit is reached."""
    length = sum(map(len, field))
    if size + length > limit:
        return -1
    out.extend(field)
    return size + length


def returned_part(message: bytes, limit: int = SIZE_LIMIT) -> tuple[str, bytes]:
    """(content type, bytes) of what a failure DSN returns: the whole message (message/rfc822)
    when it fits in `limit` bytes with CRLF line ends, else its headers (text/rfc822-headers), capped."""
    if len(message) <= limit:
        whole = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if len(whole) <= limit:
            return "message/rfc822", whole
    return "text/rfc822-headers", headers_of(message, limit)


def _clean(text: str, limit: int = REASON_LIMIT) -> str:
    """One header-safe line of at most `limit` characters: remote replies and program output may
    span lines and must neither inject headers nor make the DSN long."""
    line = " ".join(text[:limit * 4].split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def make_dsn(envelope: Envelope, failed: list[Recipient], hostname: str, original_headers: bytes, *,
             is_local: Callable[[str], bool], delayed: bool = False,
             now: float | None = None, original: bytes | None = None) -> tuple[Envelope, bytes]:
    """A multipart/report DSN for `failed` recipients of `envelope`, addressed to its sender.

    The DSN's own envelope has the null sender, so a DSN that cannot be delivered is never
    bounced again (RFC 5321 section 6.1). Callers must not send one when the sender is "".
    With `original` (the message), a failure DSN returns it whole when it fits in SIZE_LIMIT;
    otherwise, and for a delay notice, the headers only, never more than SIZE_LIMIT bytes.
    """
    now = time.time() if now is None else now
    dsn_id = new_id(now)
    boundary = f"=_{dsn_id}.{secrets.token_hex(8)}"
    action, default_status = ("delayed", "4.0.0") if delayed else ("failed", "5.0.0")
    subject = "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    sender = _clean(envelope.sender)

    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(now, localtime=True)}\r\n"
        f"Message-ID: <{dsn_id}@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
    )
    human = _human_part(envelope, failed, hostname, delayed)
    status = _status_part(envelope, failed, hostname, action, default_status)
    if original is not None and not delayed:
        returned_type, returned = returned_part(original)
    else:
        returned_type, returned = "text/rfc822-headers", headers_of(original_headers)
    parts = [
        ("text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit\r\n", human.encode("utf-8")),
        ("message/delivery-status", "", status.encode("utf-8")),
        (returned_type, "", returned),
    ]
    body = [head.encode("utf-8")]
    for content_type, extra, payload in parts:
        body.append(f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode("utf-8"))
        body.append(payload if payload.endswith(b"\r\n") else payload + b"\r\n")
    body.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    data = b"".join(body)
    dsn = Envelope(id=dsn_id, sender="", received_at=now, size=len(data), parent=envelope.id,
                   recipients=[Recipient(address=envelope.sender, local=is_local(envelope.sender))])
    return dsn, data


def log_queued(dsn: Envelope) -> None:
    """The `received` line of a DSN once it is queued: `parent=` names the message it is about."""
    maillog.received(dsn.id, "bounce", "", dsn.sender, dsn.size, [r.address for r in dsn.recipients], "DSN",
                     parent=dsn.parent)


def _human_part(envelope: Envelope, failed: list[Recipient], hostname: str, delayed: bool) -> str:
    if delayed:
        intro = ("This is the mail system at host {host}.\r\n\r\n"
                 "Your message could not be delivered yet to the recipients below.\r\n"
                 "It is still being retried; you do not need to resend it.\r\n")
    else:
        intro = ("This is the mail system at host {host}.\r\n\r\n"
                 "I'm sorry to have to inform you that your message could not\r\n"
                 "be delivered to one or more recipients.\r\n")
    lines = [intro.format(host=hostname), "\r\n"]
    for rcpt in failed:
        reason = _clean(rcpt.last_error) or "no reason recorded"
        lines.append(f"<{_clean(rcpt.address)}>: {reason}\r\n")
    return "".join(lines)


def _status_part(envelope: Envelope, failed: list[Recipient], hostname: str, action: str,
                 default_status: str) -> str:
    lines = [
        f"Reporting-MTA: dns; {hostname}\r\n",
        f"X-Queue-ID: {envelope.id}\r\n",
        f"Arrival-Date: {formatdate(envelope.received_at, localtime=True)}\r\n",
    ]
    for rcpt in failed:
        error = _clean(rcpt.last_error)
        lines.append("\r\n")
        if rcpt.original and rcpt.original != rcpt.address:
            lines.append(f"Original-Recipient: rfc822; {_clean(rcpt.original)}\r\n")
        lines.append(f"Final-Recipient: rfc822; {_clean(rcpt.address)}\r\n")
        lines.append(f"Action: {action}\r\n")
        lines.append(f"Status: {rcpt.status or default_status}\r\n")
        if error:
            kind = "smtp" if _SMTP_REPLY.match(error) else "X-mailappliance"
            lines.append(f"Diagnostic-Code: {kind}; {error}\r\n")
    return "".join(lines)
