"""Issue 11 on a real twistd: a client listed on a DNS block list is refused 554 5.7.1 at MAIL.

The list is a zone of a real DNS server (tests/integration/dnsserver.py) reached through
`[delivery] nameservers`; the listed client connects from 127.0.0.2 (Linux routes all of
127.0.0.0/8 to the loopback interface), the unlisted one from 127.0.0.1.
"""
from __future__ import annotations

import re
import smtplib

import pytest

from tests.integration.dnsserver import DNSServer, a
from tests.integration.harness import CLIENT_NAME, DOMAIN, HOSTNAME, SMTP, make_message, wait_for

ALICE = f"alice@{DOMAIN}"


@pytest.fixture
def blocklist(tmp_path):
    server = DNSServer(str(tmp_path / "dns"), {"bl.test": [a("2.0.0.127.bl.test", "127.0.0.2")]})
    server.start()
    yield server
    server.stop()


def client_from(app, source: str) -> smtplib.SMTP:
    return SMTP(HOSTNAME, app.ports["smtp"], local_hostname=CLIENT_NAME, timeout=10,
                source_address=(source, 0))


def test_a_listed_client_is_refused_at_mail_and_an_unlisted_one_delivers(make_appliance, blocklist):
    app = make_appliance(checks={"dnsbl": "bl.test*2"}, delivery={"nameservers": blocklist.nameserver})
    with client_from(app, "127.0.0.2") as client:
        client.ehlo()
        code, text = client.mail("someone@outside.example")
    assert code == 554 and text == b"5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"

    with client_from(app, "127.0.0.1") as client:
        client.sendmail("someone@outside.example", [ALICE], make_message("not-listed"))
    wait_for(lambda: any(b"not-listed" in m for m in app.messages("alice")), timeout=15)

    [line] = [line for line in app.log().splitlines() if " check " in f" {line}" and "check=dnsbl" in line]
    assert re.search(r"session=\S+", line) and "peer=127.0.0.2" in line and "verdict=reject" in line
    assert "bl.test" in line
    assert "DNSDatagramProtocol" not in app.log() and "UDP Port" not in app.log()
