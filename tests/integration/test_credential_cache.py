"""The credential cache on a real twistd: a client that logs in again is not hashed again, over
IMAP, POP3 and SMTP AUTH alike; a password change, a wrong password and a reload behave as
docs/auth.md says. What an operator sees is the `cached=yes` field of the auth-ok line, and
which attempts got a full check (`reason="bad credentials"`)."""
from __future__ import annotations

import base64
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.harness import DOMAIN, HOSTNAME, Appliance, wait_for

ALICE = f"alice@{DOMAIN}"
SERVICES = ("smtp", "submission", "pop3", "imap")
# Password logins without TLS from loopback (the bench's setting), and a throttle that bites early.
SETTINGS = {"tls": {"plaintext_auth_networks": "127.0.0.0/8"},
            "logins": {"failures_per_address": "1", "max_delay": "1"}}


class IMAP(imaplib.IMAP4):
    def _create_socket(self, timeout):
        return socket.create_connection(("127.0.0.1", self.port), timeout)


class POP3(poplib.POP3):
    def _create_socket(self, timeout):
        return socket.create_connection(("127.0.0.1", self.port), timeout)


@pytest.fixture
def app(make_appliance) -> Appliance:
    return make_appliance(services=SERVICES, **SETTINGS)


def imap_login(app: Appliance, password: str) -> str:
    """The tagged reply's text: 'OK ...' or the NO's text."""
    client = IMAP(HOSTNAME, app.ports["imap"], timeout=10)
    try:
        typ, data = client.login(ALICE, password)
        client.logout()
        return f"{typ} {data[0].decode()}"
    except imaplib.IMAP4.error as exc:
        return f"NO {exc}"


def pop3_login(app: Appliance, password: str) -> bytes:
    client = POP3(HOSTNAME, app.ports["pop3"], timeout=10)
    client.user(ALICE)
    reply = client.pass_(password)
    client.quit()
    return reply


def smtp_login(app: Appliance, password: str) -> int:
    client = smtplib.SMTP(timeout=10)
    client._host = HOSTNAME
    client.connect("127.0.0.1", app.ports["submission"])
    client.ehlo("client.example")
    code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode())
    client.quit()
    return code


def auth_lines(app: Appliance) -> list[str]:
    return [line for line in app.log().splitlines() if " auth-ok " in line or " auth-failed " in line]


def cached(line: str) -> bool:
    return " cached=yes" in line


def test_a_second_login_is_served_from_the_cache_over_every_protocol(app):
    password = app.users["alice"]
    assert imap_login(app, password).startswith("OK")
    assert imap_login(app, password).startswith("OK")
    assert pop3_login(app, password).startswith(b"+OK")
    assert smtp_login(app, password) == 235
    wait_for(lambda: len(auth_lines(app)) == 4)
    lines = auth_lines(app)
    assert all(" auth-ok " in line for line in lines), lines
    assert [cached(line) for line in lines] == [False, True, True, True], lines
    assert [line.split(" service=")[1].split()[0] for line in lines] == ["imap", "imap", "pop3", "submission"]


def test_a_changed_password_fails_at_once_and_the_new_one_is_checked(app):
    old = app.users["alice"]
    assert imap_login(app, old).startswith("OK")
    app.cli("user", "passwd", ALICE, stdin="a brand new password\n")
    time.sleep(1.1)                    # the users file is looked at once a second
    assert "[AUTHENTICATIONFAILED]" in imap_login(app, old)
    assert imap_login(app, "a brand new password").startswith("OK")
    assert imap_login(app, "a brand new password").startswith("OK")
    wait_for(lambda: len(auth_lines(app)) == 4)
    lines = auth_lines(app)
    assert 'reason="bad credentials"' in lines[1], lines
    assert [cached(line) for line in lines] == [False, False, False, True], lines


def test_wrong_passwords_after_a_cached_success_are_checked_and_throttled(app):
    password = app.users["alice"]
    assert imap_login(app, password).startswith("OK")
    assert imap_login(app, password).startswith("OK")           # cached now
    # 8 guesses at once from one address: 1 failure allowed, then slots 1 s apart up to max_delay.
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: imap_login(app, "guess"), range(8)))
    assert any("[UNAVAILABLE]" in reply for reply in replies), replies             # throttled
    assert not any(reply.startswith("OK") for reply in replies), replies
    refused_by_check = [reply for reply in replies if "[AUTHENTICATIONFAILED]" in reply]
    assert refused_by_check, replies
    wait_for(lambda: any("reason=throttled" in line for line in auth_lines(app)))
    checked = [line for line in auth_lines(app) if 'reason="bad credentials"' in line]
    assert len(checked) == len(refused_by_check)            # every wrong guess answered got the full check
    assert not any(cached(line) for line in auth_lines(app) if " auth-failed " in line)


def test_a_reload_forgets_every_cached_password(app):
    password = app.users["alice"]
    assert imap_login(app, password).startswith("OK")
    assert imap_login(app, password).startswith("OK")
    os.kill(app.pid, signal.SIGHUP)
    wait_for(lambda: " reloaded " in app.log())
    assert imap_login(app, password).startswith("OK")
    assert imap_login(app, password).startswith("OK")
    wait_for(lambda: len(auth_lines(app)) == 4)
    assert [cached(line) for line in auth_lines(app)] == [False, True, False, True], auth_lines(app)


def test_ttl_zero_turns_the_cache_off(make_appliance):
    app = make_appliance(services=("smtp", "imap"), tls={"plaintext_auth_networks": "127.0.0.0/8"},
                         logins={"credential_cache_ttl": "0"})
    for _ in range(2):
        assert imap_login(app, app.users["alice"]).startswith("OK")
    wait_for(lambda: len(auth_lines(app)) == 2)
    assert not any(cached(line) for line in auth_lines(app))
