"""Issue 10, defects 4 and 10 on a real twistd: connection exhaustion, and AUTH forgotten at STARTTLS.

Loopback only: other clients are other 127.0.0.x source addresses. Every loop is bounded.
"""
from __future__ import annotations

import base64
import resource
import smtplib
import socket
import ssl
from contextlib import ExitStack

from tests.integration.harness import DOMAIN, SMTP_SERVICES, make_message, wait_for

ALICE = f"alice@{DOMAIN}"
ACCESS = SMTP_SERVICES + ("pop3", "pop3s", "imap", "imaps")


def idle(port: int, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> tuple[socket.socket, bytes]:
    """A connection that reads the first line the server says and then sits there."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="mail.example.test")
    return sock, sock.recv(512)


def smtp_from(port: int, source: str) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))


def test_idle_pop3_and_imap_from_one_address_are_limited_and_smtp_answers_another(make_appliance):
    appliance = make_appliance(services=ACCESS, limits={"max_connections_per_ip": "20"})
    context = appliance.tls_context()
    answers: dict[str, list[bytes]] = {}
    with ExitStack() as held:
        for service in ("pop3", "pop3s", "imap", "imaps"):
            answers[service] = []
            for _ in range(25):
                sock, first = idle(appliance.ports[service], tls=context if service.endswith("s") else None)
                held.callback(sock.close)
                answers[service].append(first)
        pop3 = answers["pop3"] + answers["pop3s"]           # plain and TLS ports count together
        imap = answers["imap"] + answers["imaps"]
        assert sum(a.startswith(b"+OK") for a in pop3) == 20
        assert all(a.startswith(b"-ERR [SYS/TEMP]") for a in pop3[20:])
        assert sum(a.startswith(b"* OK") for a in imap) == 20
        assert all(a.startswith(b"* BYE") for a in imap[20:])
        with smtp_from(appliance.ports["smtp"], "127.0.0.2") as client:
            client.sendmail("someone@outside.example", [ALICE], make_message("still open"))
    wait_for(lambda: len(appliance.messages("alice")) == 1)
    assert "connection-refused service=pop3s peer=127.0.0.1 reason=per-client" in appliance.log()


def test_300_idle_pop3_under_256_descriptors_do_not_take_smtp_down(make_appliance):
    """The issue's reproduction: before, EMFILE stopped every listener for everybody."""
    appliance = make_appliance(services=ACCESS, limits={"max_connections_per_ip": "1000", "descriptor_reserve": "32"})
    resource.prlimit(appliance.pid, resource.RLIMIT_NOFILE, (256, 256))
    greeted = refused = 0
    with ExitStack() as held:
        for n in range(300):
            sock, first = idle(appliance.ports["pop3"], source=f"127.0.0.{1 + n % 3}")
            held.callback(sock.close)
            greeted += first.startswith(b"+OK")
            refused += first.startswith(b"-ERR [SYS/TEMP]")
        assert greeted + refused == 300 and 0 < greeted < 256 - 32
        for source in ("127.0.0.9", "127.0.0.10"):
            with smtp_from(appliance.ports["smtp"], source) as client:
                client.sendmail("someone@outside.example", [ALICE], make_message(f"from {source}"))
            sock, first = idle(appliance.ports["imap"], source=source)
            held.callback(sock.close)
            assert first.startswith(b"* OK")
    wait_for(lambda: len(appliance.messages("alice")) == 2)
    assert "EMFILE" not in appliance.log() and "Too many open files" not in appliance.log()


def test_auth_before_starttls_is_forgotten(make_appliance):
    """RFC 3207 4.2: a login made in plaintext (allowed from this network) does not survive STARTTLS."""
    appliance = make_appliance(tls={"plaintext_auth_networks": "127.0.0.0/8"})
    password = appliance.users["alice"]
    with appliance.smtp("submission") as client:
        client.ehlo("client.example")
        token = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()
        assert client.docmd("AUTH", "PLAIN " + token)[0] == 235
        client.starttls(context=appliance.tls_context())
        client.ehlo("client.example")
        assert "auth" in client.esmtp_features
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 530
        client.login(ALICE, password)
        client.sendmail(ALICE, [ALICE], make_message("after a new AUTH"))
    wait_for(lambda: len(appliance.messages("alice")) == 1)
