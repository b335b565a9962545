"""Issue 11 on a real twistd: SPF, DKIM and DMARC at SMTP time, and the Authentication-Results it writes.

A twisted.names server holds the sender's SPF, DKIM key and DMARC records; the appliance asks it
(`[delivery] nameservers`) from its checks thread pool. The client is 127.0.0.1, HELO
client.example.test.
"""
from __future__ import annotations

import smtplib

import pytest

from appliance import message as msg
from tests.integration.dnsserver import DNSServer, a, txt
from tests.integration.harness import CLIENT_NAME, HOSTNAME, wait_for
from tests.integration.test_scanners import IMAPS, imap_subjects
from tests.unit.authrig import SigningKey

ALLOW = "v=spf1 ip4:127.0.0.1 -all"
KEY = SigningKey()
CHECKS_ON = {"spf": "reject", "spf_temperror": "tempfail", "dkim_verify": "yes", "dmarc": "reject", "dns_timeout": "2"}


@pytest.fixture
def auth_dns(tmp_path):
    server = DNSServer(str(tmp_path / "dns"), {"test": [
        txt(CLIENT_NAME, ALLOW), a(CLIENT_NAME, "127.0.0.1"),
        txt("sender.test", ALLOW), KEY.record("sel._domainkey.sender.test"),
        txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
        txt("_dmarc.reject.test", "v=DMARC1; p=reject"),
        txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        txt("fail.test", "v=spf1 -all"),
    ]})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app(make_appliance, auth_dns):
    return make_appliance(services=("smtp", "imaps"), checks=dict(CHECKS_ON),
                          delivery={"nameservers": auth_dns.nameserver})


def message(author: str, subject: str, extra: str = "") -> bytes:
    return (f"{extra}From: {author}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Sat, 5 Dec 2026 08:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\r\n"
            f"Hello Alice.\r\n").encode()


def test_a_signed_spf_passing_message_arrives_with_one_authentication_results(app):
    forged = f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=bank.test\r\n"
    signed = KEY.sign(message("news@sender.test", "signed-news", extra=forged), "sender.test")
    with app.smtp() as client:
        client.sendmail("bounces@sender.test", ["alice@example.test"], signed)
    (delivered,) = wait_for(lambda: [m for m in app.messages("alice") if b"signed-news" in m], timeout=15)
    (value,) = msg.get_all(delivered, "Authentication-Results")
    text = " ".join(value.decode().split())
    assert text.startswith(f"{HOSTNAME}; ")
    assert "spf=pass smtp.mailfrom=bounces@sender.test" in text
    assert f"spf=pass smtp.helo={CLIENT_NAME}" in text
    assert "dkim=pass header.d=sender.test header.s=sel" in text
    assert "dmarc=pass" in text and "header.from=sender.test" in text
    assert b"bank.test" not in delivered                      # the forged field is gone
    assert msg.get_all(delivered, "DKIM-Signature")           # the signature itself stays


def test_a_message_failing_dmarc_p_reject_is_refused_at_the_end_of_data(app):
    with app.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("bounces@sender.test", ["alice@example.test"], message("ceo@reject.test", "fake-ceo"))
    assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1")
    assert b"reject.test" in refused.value.smtp_error
    assert "check=dmarc" in app.log() and "verdict=reject" in app.log()
    assert not any(b"fake-ceo" in m for m in app.messages("alice"))


def test_a_sender_whose_spf_fails_is_refused_at_mail(app):
    with app.smtp() as client:
        client.ehlo(CLIENT_NAME)
        code, text = client.mail("someone@fail.test")
    assert (code, text[:6]) == (550, b"5.7.23")
    assert "check=spf" in app.log()


def test_a_message_failing_dmarc_p_quarantine_lands_in_the_junk_folder(app):
    imap = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    imap.login("alice@example.test", app.users["alice"])          # the first login makes Junk
    with app.smtp() as client:
        client.sendmail("bounces@sender.test", ["alice@example.test"], message("pay@quarantine.test", "invoice"))
        client.sendmail("bounces@sender.test", ["alice@example.test"],
                        KEY.sign(message("news@sender.test", "newsletter"), "sender.test"))
    wait_for(lambda: imap_subjects(imap, "Junk") == ["invoice"], timeout=15)
    wait_for(lambda: imap_subjects(imap, "INBOX") == ["newsletter"], timeout=15)
    imap.logout()
    assert "check=dmarc" in app.log() and "verdict=junk" in app.log()
