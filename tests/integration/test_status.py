"""`mailappliance status` on a real twistd: what happened shows up in the numbers, and a stopped
appliance gets one clear line."""
from __future__ import annotations

import re
import smtplib
import time

import pytest
from cryptography import x509

from tests.integration.harness import DOMAIN, make_message, wait_for

ALICE = f"alice@{DOMAIN}"


def row(screen: str, label: str) -> list[str]:
    """The numbers of one row of the mail table: [last hour, last day]."""
    lines = screen.splitlines()
    table = lines[next(n for n, line in enumerate(lines) if line.startswith("mail ")):]
    for line in table:
        if line.strip().startswith(label + "  "):
            return line[len(line.rstrip()) - 20:].split()
    raise AssertionError(f"no row {label!r} in:\n{screen}")



def test_status_shows_the_mail_the_queue_the_ports_and_the_certificate(make_appliance, silent_nameserver):
    app = make_appliance(services=("smtp", "submission", "imap"), relay={"trusted_networks": "127.0.0.1/32"},
                         delivery={"nameservers": silent_nameserver})
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message("delivered"))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("someone@outside.example", [f"nobody@{DOMAIN}"], make_message("unknown user"))
        client.sendmail(ALICE, ["someone@nowhere.example"], make_message("to nowhere", sender=ALICE))
    with app.smtp("submission") as client:
        client.starttls(context=app.tls_context())
        client.ehlo()
        client.user, client.password = ALICE, "not-the-password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)     # one attempt (login() would try LOGIN too)
    wait_for(lambda: app.messages("alice"), timeout=10)
    wait_for(lambda: "4.4.3" in app.cli("queue", "list").stdout, timeout=40, interval=0.5)

    result = app.cli("status")
    screen = result.stdout
    assert result.returncode == 0 and result.stderr == ""
    for name in ("smtp", "submission", "imap"):
        assert re.search(rf"^\s+(services\s+)?{name}\s+127\.0\.0\.1:{app.ports[name]}$", screen, re.M), screen
    assert "queue        1 message, 1 deferred; oldest " in screen
    assert re.search(r"^  deferred   1  4\.4\.3 .*nowhere\.example", screen, re.M), screen
    assert row(screen, "received") == ["2", "2"]
    assert row(screen, "delivered") == ["1", "1"]
    assert row(screen, "deferred") == ["1", "1"]
    assert row(screen, "bounced") == ["0", "0"]
    assert row(screen, "rejected") == ["1", "1"]
    assert row(screen, "unknown user 550 5.1.1") == ["1", "1"]
    assert row(screen, "failed logins") == ["1", "1"]
    mailboxes = re.search(r"^disk\s+mailboxes\s+([\d.]+ \w+)\s+(\S+)$", screen, re.M)
    assert mailboxes and mailboxes[1] != "none" and mailboxes[2] == f"{app.root}/var/mail", screen
    assert re.search(rf"^\s+queue\s+[\d.]+ \w+\s+{app.root}/var/queue$", screen, re.M), screen
    with open(app.cert_path, "rb") as handle:
        not_after = x509.load_pem_x509_certificate(handle.read()).not_valid_after_utc
    days = int((not_after.timestamp() - time.time()) // 86400)
    assert f"certificate  expires {not_after.date().isoformat()}, in {days} days" in screen
    assert "command=status" not in app.log()        # a monitor polling status fills no log

    app.stop()
    stopped = app.cli("status", check=False)
    assert stopped.returncode == 3 and stopped.stdout == ""
    assert stopped.stderr == f"mailappliance is not running (no control socket at {app.root}/var/control.sock)\n"


def test_a_checks_refusal_is_counted_under_the_checks_name(make_appliance):
    app = make_appliance(checks={"greylist": "all"})
    with app.smtp() as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("someone@outside.example", [ALICE], make_message("greylisted"))
    assert refused.value.recipients[ALICE][0] == 451
    screen = app.cli("status").stdout
    assert row(screen, "rejected") == ["1", "1"]
    assert row(screen, "greylist 451 4.7.1") == ["1", "1"], screen
