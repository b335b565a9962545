"""DSNs are well-formed RFC 3464 reports that a mail client (Python's email package) reads correctly."""
from __future__ import annotations

import email
from email import policy

from appliance.bounce import headers_of, make_dsn
from appliance.envelope import FAILED, Envelope, Recipient

ORIGINAL = (b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: lunch?\r\n"
            b"Message-ID: <1@example.test>\r\n\r\nSee you at noon.\r\n")


def failed(address: str, error: str, original: str = "", status: str | None = None) -> Recipient:
    """A bounced recipient as the queue records it: the status, and "status text" for the log and DSN."""
    if status is None:
        status = error.split(" ", 1)[0] if error[:1] in "45" else ""
    return Recipient(address=address, original=original, state=FAILED, last_error=error, status=status)


def dsn_for(recipients, **kwargs):
    env = Envelope(id="ABC123", sender="alice@example.test", recipients=recipients, received_at=1_700_000_000)
    return make_dsn(env, recipients, "mail.example.test", headers_of(ORIGINAL),
                    is_local=lambda a: a.endswith("@example.test"), now=1_700_000_100, **kwargs)


def test_dsn_structure_is_a_delivery_status_report():
    rcpts = [failed("bob@example.test", "5.1.1 no such user", original="info@example.test"),
             failed("zed@elsewhere.test", "550 5.7.1 relaying denied\r\nby policy", status="5.7.1")]
    dsn_env, data = dsn_for(rcpts)
    msg = email.message_from_bytes(data, policy=policy.default)

    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
    assert msg["To"].addresses[0].addr_spec == "alice@example.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] and msg["Message-ID"].endswith("@mail.example.test>")

    human, status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert "bob@example.test" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, bob, zed = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert per_message["Arrival-Date"]
    assert bob["Final-Recipient"] == "rfc822; bob@example.test"
    assert bob["Original-Recipient"] == "rfc822; info@example.test"
    assert (bob["Action"], bob["Status"]) == ("failed", "5.1.1")
    assert bob["Diagnostic-Code"] == "X-mailappliance; 5.1.1 no such user"
    assert (zed["Status"], zed["Diagnostic-Code"]) == ("5.7.1", "smtp; 550 5.7.1 relaying denied by policy")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: lunch?" in headers.get_payload(decode=True)
    assert b"See you at noon" not in data                # headers only, never the body


def test_dsn_lines_all_end_in_crlf():
    _, data = dsn_for([failed("bob@example.test", "5.1.1 no such user")])
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_dsn_envelope_has_the_null_sender_and_goes_to_the_original_sender():
    dsn_env, data = dsn_for([failed("bob@example.test", "5.1.1 no such user")])
    assert dsn_env.sender == ""
    assert [(r.address, r.local) for r in dsn_env.recipients] == [("alice@example.test", True)]
    assert dsn_env.size == len(data) and dsn_env.id


def test_status_defaults_to_5_0_0_without_an_enhanced_code():
    _, data = dsn_for([failed("bob@example.test", "mailbox exploded")])
    status = email.message_from_bytes(data, policy=policy.default).get_payload()[1]
    assert status.get_payload()[1]["Status"] == "5.0.0"


def test_delayed_dsn():
    _, data = dsn_for([failed("bob@example.test", "4.2.0 mailbox busy")], delayed=True)
    msg = email.message_from_bytes(data, policy=policy.default)
    rcpt = msg.get_payload()[1].get_payload()[1]
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.2.0")
    assert msg["Subject"].startswith("Delayed Mail")


def test_the_status_reported_is_the_recipients_not_one_read_from_the_text():
    _, data = dsn_for([failed("bob@example.test", "4.4.7 delivery time expired", status="4.4.7"),
                       failed("carol@example.test", "5.1.1 said 5.7.1", status="5.2.2")])
    _, bob, carol = email.message_from_bytes(data, policy=policy.default).get_payload()[1].get_payload()
    assert (bob["Action"], bob["Status"]) == ("failed", "4.4.7")
    assert (carol["Status"], carol["Diagnostic-Code"]) == ("5.2.2", "X-mailappliance; 5.1.1 said 5.7.1")


def test_headers_of():
    assert headers_of(b"A: 1\nB: 2\n\nbody") == b"A: 1\r\nB: 2\r\n"
    assert headers_of(b"A: 1\r\n") == b"A: 1\r\n"


# --- what a DSN returns is bounded (defect 9) ---------------------------------------------------

from appliance import bounce  # noqa: E402


def header_bomb(size: int = 5_000_000) -> bytes:
    """A message of header lines only, as in the report: 5 MB, no body."""
    line = b"X-Filler: " + b"a" * 60 + b"\r\n"
    return b"From: alice@example.test\r\nSubject: big\r\n" + line * (size // len(line))


def returned(data: bytes):
    report = email.message_from_bytes(data, policy=policy.default)
    return report.get_payload()[2]


def test_a_5_mb_header_block_comes_back_capped_at_the_size_limit():
    env = Envelope(id="ABC123", sender="alice@example.test", recipients=[], received_at=1_700_000_000)
    rcpts = [failed("bob@example.test", "5.1.1 no such user")]
    big = header_bomb()
    for kwargs in ({"original": big}, {"original": big, "delayed": True}, {}):
        _, data = make_dsn(env, rcpts, "mail.example.test", big, is_local=lambda a: False, now=1.0, **kwargs)
        assert len(data) < bounce.SIZE_LIMIT + 5_000, kwargs
        part = returned(data)
        assert part.get_content_type() == "text/rfc822-headers"
        content = part.get_payload(decode=True) if not isinstance(part.get_payload(), str) else part.get_payload()
        assert "Subject: big" in str(content)
    assert len(headers_of(big)) <= bounce.SIZE_LIMIT
    assert headers_of(big).endswith(b"a\r\n")                   # whole fields only


def test_a_small_message_comes_back_whole_and_a_large_one_as_headers_only():
    env = Envelope(id="ABC123", sender="alice@example.test", recipients=[], received_at=1_700_000_000)
    rcpts = [failed("bob@example.test", "5.1.1 no such user")]
    _, data = make_dsn(env, rcpts, "mail.example.test", ORIGINAL, is_local=lambda a: False, original=ORIGINAL)
    assert returned(data).get_content_type() == "message/rfc822"
    assert ORIGINAL in data
    large = ORIGINAL + b"x" * 60_000 + b"\r\n"
    _, data = make_dsn(env, rcpts, "mail.example.test", large, is_local=lambda a: False, original=large)
    assert returned(data).get_content_type() == "text/rfc822-headers"
    assert b"x" * 100 not in data and len(data) < 5_000
    _, data = make_dsn(env, rcpts, "mail.example.test", ORIGINAL, is_local=lambda a: False, original=ORIGINAL,
                       delayed=True)
    assert returned(data).get_content_type() == "text/rfc822-headers"   # a delay notice: headers only


def test_a_long_reason_is_cut_to_one_short_line():
    _, data = dsn_for([failed("bob@example.test", "550 5.7.1 " + "blah " * 2000 + "\r\nSubject: injected")])
    assert max(len(line) for line in data.split(b"\r\n")) < 998
    assert b"blah " * 120 not in data and b"\r\nSubject: injected" not in data
