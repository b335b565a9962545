"""Issue 12 item 7 on a real twistd: a log an admin can follow.

A short start-up, one session id on every line of a session (SMTP, POP3, IMAP), the address the
client gave on the `received` line, a bounce linked to its message, the reason a TLS handshake
failed, and none of Twisted's own chatter at the default level.
"""
from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import socket
import ssl

import pytest

from tests.integration.harness import (ALL_SERVICES, DOMAIN, HOSTNAME, SMTP_SERVICES, Appliance, ApplianceError,
                                       make_message, wait_for)

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
CHATTER = ("Starting factory", "Stopping factory", " starting on ", "Port ", "resolv.conf", "Resolver added")


def mail_lines(app: Appliance) -> list[str]:
    """The log's lines without their timestamp and `[mail#info]` prefix."""
    return [line.split("] ", 1)[1] for line in app.log().splitlines() if "] " in line]


def field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\"[^\"]*\"|\S+)", line)
    return match.group(1).strip('"') if match else ""


def session_lines(app: Appliance, service: str) -> list[str]:
    """The lines of `service`'s sessions, in order (`service=` names them; received lines too)."""
    return [line for line in mail_lines(app) if f"service={service} " in line + " "]


def assert_one_session(lines: list[str], events: tuple[str, ...]) -> str:
    """Every line carries a session id; one session (the one whose line is events[-2]) wrote all of `events`.

    (The harness's start-up probes are sessions of their own: connect and disconnect only.)
    """
    assert all(field(line, "session") for line in lines), "\n".join(lines)
    [sid] = {field(line, "session") for line in lines if line.startswith(events[-2] + " ")}
    seen = [line.split(" ", 1)[0] for line in lines if field(line, "session") == sid]
    assert set(events) <= set(seen) and seen[0] == "connect" and seen[-1] == "disconnect", (events, "\n".join(lines))
    return sid


def ended(app: Appliance, service: str, event: str) -> bool:
    """The session of `service` that wrote an `event` line has written its disconnect line too."""
    lines = session_lines(app, service)
    ids = {field(line, "session") for line in lines if line.startswith(event + " ")}
    return any(line.startswith("disconnect ") and field(line, "session") in ids for line in lines)


@pytest.fixture
def started(request, tmp_path):
    """started(aliases="...", services=..., **overrides): an appliance set up, given an aliases file, then started."""
    made: list[Appliance] = []
    request.node.appliances = made

    def make(aliases: str = "", services=SMTP_SERVICES, deliver_to_self: bool = False, **overrides) -> Appliance:
        app = Appliance(str(tmp_path / f"appliance{len(made)}"), services=services, overrides=overrides)
        if deliver_to_self:       # remote mail goes to our own MX port: it bounces 5.4.6 at once
            app.sections.setdefault("delivery", {})["port"] = str(app.ports["smtp"])
        if aliases:
            app.sections.setdefault("aliases", {})["file"] = "aliases"
        made.append(app)
        try:
            app.setup()
            if aliases:
                with open(os.path.join(app.root, "aliases"), "w", encoding="utf-8") as handle:
                    handle.write(aliases)
            app.start()
        except ApplianceError as problem:
            pytest.fail(str(problem), pytrace=False)
        return app
    yield make
    for app in made:
        app.stop()


def test_start_up_is_a_few_lines_and_twisted_says_nothing_at_the_default_level(started):
    app = started(services=ALL_SERVICES)
    wait_for(lambda: "started" in app.log())
    with app.smtp() as client:
        client.noop()
    app.stop()
    lines = mail_lines(app)
    start = lines[:next(i for i, line in enumerate(lines) if line.startswith("started")) + 1]
    # The config's own warnings (this test config has no postmaster alias) are the operator's to
    # fix, not chatter: what is bounded is everything else.
    start = [line for line in start if not line.startswith("config-warning ")]
    assert len(start) <= 10, "\n".join(start)
    summary = "\n".join(start)
    for name in ALL_SERVICES:
        assert f"{name}=" in summary and str(app.ports[name]) in summary, summary
    assert DOMAIN in summary and "maildir" in summary and "users" in summary, summary
    assert "config setting=" not in app.log()
    for chatter in CHATTER:
        assert chatter not in app.log(), chatter


def test_twisted_chatter_is_written_at_debug_level_when_asked(started, monkeypatch):
    monkeypatch.setenv("MAILAPPLIANCE_LOG_LEVEL", "debug")      # twistd inherits it
    app = started()
    app.stop()
    assert f"starting on {app.ports['smtp']}" in app.log() and f"Port {app.ports['smtp']} Closed" in app.log()


def test_check_verbose_lists_every_setting_and_plain_check_does_not(started):
    app = started()
    plain = app.cli("check").stdout
    verbose = app.cli("check", "--verbose").stdout
    assert "limits.max_message_size = 26214400" in verbose and "checks.greylist = off" in verbose
    assert "limits.max_message_size" not in plain
    assert verbose.startswith(plain)


def test_an_smtp_session_has_one_id_on_every_line_and_received_names_the_given_address(started):
    app = started(aliases="sales: alice, bob\n")
    with app.submit() as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(ALICE, [f"nobody@{DOMAIN}"], make_message("refused", sender=ALICE))
        client.sendmail(ALICE, [f"sales@{DOMAIN}", f"alice+news@{DOMAIN}"],
                        make_message("to-sales", sender=ALICE, to=f"sales@{DOMAIN}"))
    wait_for(lambda: ended(app, "submission", "received"))
    lines = session_lines(app, "submission")
    assert_one_session(lines, ("connect", "tls", "auth-ok", "rejected", "received", "disconnect"))
    [received] = [line for line in lines if line.startswith("received")]
    assert set(field(received, "rcpts").split(",")) == {ALICE, BOB}
    assert set(field(received, "orig_rcpts").split(",")) == {f"sales@{DOMAIN}", f"alice+news@{DOMAIN}"}
    wait_for(lambda: len(app.messages("bob")) == 1)
    delivered = wait_for(lambda: [line for line in mail_lines(app)
                                  if line.startswith("delivered") and f"rcpt={BOB}" in line])
    assert field(delivered[0], "orig_rcpt") == f"sales@{DOMAIN}"


def test_a_failed_login_carries_the_session_id(started):
    app = started()
    client = app.smtp("submission")
    client.starttls(context=app.tls_context())
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.login(ALICE, "wrong password")
    client.quit()
    wait_for(lambda: ended(app, "submission", "auth-failed"))
    assert_one_session(session_lines(app, "submission"), ("connect", "tls", "auth-failed", "disconnect"))


class POP3(poplib.POP3):
    def __init__(self, port: int) -> None:
        super().__init__(HOSTNAME, port, timeout=10)

    def _create_socket(self, timeout):
        return socket.create_connection(("127.0.0.1", self.port), timeout)


class IMAP(imaplib.IMAP4):
    def __init__(self, port: int) -> None:
        super().__init__(HOSTNAME, port, timeout=10)

    def _create_socket(self, timeout):
        return socket.create_connection(("127.0.0.1", self.port), timeout)


def test_pop3_and_imap_sessions_have_one_id_each_and_log_a_refused_certificate(started):
    app = started(services=("smtp", "pop3", "pop3s", "imap", "imaps"))
    pop = POP3(app.ports["pop3"])
    pop.stls(context=app.tls_context())
    pop.user(ALICE)
    pop.pass_(app.users["alice"])
    pop.quit()
    imap = IMAP(app.ports["imap"])
    imap.starttls(ssl_context=app.tls_context())
    imap.login(ALICE, app.users["alice"])
    imap.logout()
    for service in ("pop3", "imap"):
        wait_for(lambda: ended(app, service, "auth-ok"))
        assert_one_session(session_lines(app, service), ("connect", "tls", "auth-ok", "disconnect"))
    for service in ("pop3s", "imaps"):
        with socket.create_connection(("127.0.0.1", app.ports[service]), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(raw, server_hostname=HOSTNAME)
        wait_for(lambda: ended(app, service, "tls-failed"))
        assert_one_session(session_lines(app, service), ("connect", "tls-failed", "disconnect"))


def test_a_bounce_names_the_message_it_is_about(started):
    """A message routed back to ourselves bounces 5.4.6 at once; the DSN goes to alice."""
    app = started(relay={"trusted_networks": "127.0.0.1/32"}, delivery={"allow_address_literals": "yes"},
                  deliver_to_self=True)
    with app.smtp() as client:
        client.sendmail(ALICE, ["bob@[127.0.0.1]"], make_message("to-my-literal", sender=ALICE))
    wait_for(lambda: any(b"to-my-literal" in m for m in app.messages("alice")), timeout=20)
    lines = mail_lines(app)
    [parent] = [field(line, "id") for line in lines if line.startswith("received") and "service=smtp " in line]

    def dsn_lines() -> list[str]:
        found = [line for line in mail_lines(app)
                 if line.startswith(("received", "delivered")) and f"parent={parent}" in line]
        return found if len(found) >= 2 else []
    bounce = wait_for(dsn_lines)
    assert [line.split(" ", 1)[0] for line in bounce] == ["received", "delivered"], bounce
    assert field(bounce[0], "service") == "bounce" and field(bounce[1], "rcpt") == ALICE
    assert field(bounce[0], "id") == field(bounce[1], "id") != parent
    assert any(line.startswith("bounced") and f"id={parent}" in line for line in lines)


def _tls_failed(app: Appliance, service: str) -> list[str]:
    return [line for line in session_lines(app, service) if line.startswith("tls-failed")]


def test_a_client_refusing_our_certificate_leaves_the_reason(started):
    app = started()
    strict = ssl.create_default_context()            # the system's CAs: our self-signed certificate fails
    with socket.create_connection(("127.0.0.1", app.ports["smtps"]), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            strict.wrap_socket(raw, server_hostname=HOSTNAME)
    [line] = wait_for(lambda: _tls_failed(app, "smtps"))
    assert field(line, "peer") == "127.0.0.1" and field(line, "session")
    assert "unknown ca" in field(line, "reason") or "certificate" in field(line, "reason"), line
    wait_for(lambda: ended(app, "smtps", "tls-failed"))
    assert_one_session(session_lines(app, "smtps"), ("connect", "tls-failed", "disconnect"))


def test_starttls_refused_by_the_client_and_plaintext_to_a_tls_port_leave_the_reason(started):
    app = started()
    client = app.smtp("submission")
    with pytest.raises(ssl.SSLCertVerificationError):
        client.starttls(context=ssl.create_default_context())
    client.close()
    [line] = wait_for(lambda: _tls_failed(app, "submission"))
    assert field(line, "reason") and field(line, "session")
    with socket.create_connection(("127.0.0.1", app.ports["smtps"]), timeout=10) as raw:
        raw.sendall(b"EHLO plaintext.example\r\n")
        raw.settimeout(10)
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass
    [line] = wait_for(lambda: _tls_failed(app, "smtps"))
    assert field(line, "reason"), line
