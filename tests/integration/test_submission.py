"""Submission (587 STARTTLS, 465 implicit TLS) as a mail client uses it: TLS, then AUTH, then send."""
from __future__ import annotations

import base64
import email
import email.utils
import smtplib
import socket
import ssl
import subprocess
import threading
import warnings

import pytest

from tests.integration.harness import DOMAIN, HOSTNAME, Appliance, make_message, require_program, wait_for

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def delivered(appliance: Appliance, user: str, subject: str) -> email.message.Message | None:
    for raw in appliance.messages(user):
        message = email.message_from_bytes(raw)
        if message["Subject"] == subject:
            return message
    return None


def wait_delivered(appliance: Appliance, user: str, subject: str) -> email.message.Message:
    return wait_for(lambda: delivered(appliance, user, subject), timeout=15)


def plain_payload(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_then_auth_then_local_delivery(appliance, mechanism):
    with appliance.smtp("submission") as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=appliance.tls_context())
        client.ehlo()
        offered = client.esmtp_features.get("auth", "").upper().split()
        assert "PLAIN" in offered and "LOGIN" in offered, offered
        client.user, client.password = ALICE, appliance.users["alice"]
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, reply = client.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN")
        assert code == 235, reply
        client.sendmail(ALICE, [BOB], make_message(f"via {mechanism}", sender=ALICE, to=BOB))
    wait_delivered(appliance, "bob", f"via {mechanism}")
    assert appliance.users["alice"] not in appliance.log(), "the password must never be logged"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_submits_with_starttls_and_auth(appliance, mechanism):
    swaks = require_program("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{appliance.ports['submission']}", "--helo", "client.example.test",
         "--tls", "--auth", mechanism, "--auth-user", ALICE, "--auth-password", appliance.users["alice"],
         "--from", ALICE, "--to", BOB, "--header", f"Subject: swaks {mechanism}", "--body", "From swaks."],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_delivered(appliance, "bob", f"swaks {mechanism}")


def test_implicit_tls_on_smtps(appliance):
    with appliance.smtps() as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.login(ALICE, appliance.users["alice"])
        client.sendmail(ALICE, [BOB], make_message("via smtps", sender=ALICE, to=BOB))
    wait_delivered(appliance, "bob", "via smtps")


def test_auth_is_neither_offered_nor_accepted_before_tls(appliance):
    with appliance.smtp("submission") as client:
        client.ehlo()
        assert not client.has_extn("auth"), client.esmtp_features
        code, reply = client.docmd("AUTH", "PLAIN " + plain_payload(ALICE, appliance.users["alice"]))
    assert code == 530, reply
    assert reply.startswith(b"5.7.0"), reply


def test_wrong_password_is_535_and_not_logged(appliance):
    with appliance.smtp("submission") as client:
        client.starttls(context=appliance.tls_context())
        client.ehlo()
        client.user, client.password = ALICE, "not-the-password-xyz"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("PLAIN", client.auth_plain)
    assert refused.value.smtp_code == 535
    assert refused.value.smtp_error.startswith(b"5.7.8"), refused.value.smtp_error
    assert "not-the-password-xyz" not in appliance.log()


def test_sender_must_be_the_authenticated_user(appliance):
    with appliance.submit("alice") as client:
        code, reply = client.mail(BOB)
    assert code == 553, reply
    assert reply.startswith(b"5.7.1"), reply


def test_authenticated_user_may_relay_to_outside(appliance):
    with appliance.submit("alice") as client:
        refused = client.sendmail(ALICE, ["friend@elsewhere.example"],
                                  make_message("outbound", sender=ALICE, to="friend@elsewhere.example"))
    assert refused == {}


def test_submission_without_auth_is_refused(appliance):
    with appliance.smtp("submission") as client:
        client.starttls(context=appliance.tls_context())
        client.ehlo()
        code, reply = client.mail(ALICE)
        if code == 250:
            code, reply = client.rcpt(BOB)
    assert code == 530, reply


def test_message_id_and_date_are_added_when_missing(appliance):
    with appliance.submit("alice") as client:
        client.sendmail(ALICE, [BOB], make_message("bare", sender=ALICE, to=BOB))
        client.sendmail(ALICE, [BOB], make_message(
            "dressed", sender=ALICE, to=BOB,
            extra_headers="Message-ID: <kept@client.example.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"))
    bare = wait_delivered(appliance, "bob", "bare")
    assert len(bare.get_all("Message-ID", [])) == 1, bare.get_all("Message-ID")
    assert email.utils.parsedate_to_datetime(bare["Date"]) is not None
    dressed = wait_delivered(appliance, "bob", "dressed")
    assert dressed.get_all("Message-ID") == ["<kept@client.example.test>"]
    assert dressed.get_all("Date") == ["Mon, 1 Jan 2024 10:00:00 +0000"]


def tls11_context(cafile: str) -> ssl.SSLContext:
    """A client that offers only TLS 1.1 (OpenSSL's security level lowered so it really can)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.create_default_context(cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def handshake_with_local_tls11_server(appliance: Appliance, client: ssl.SSLContext) -> str:
    """Prove the client context can speak TLS 1.1, so a refusal below comes from the appliance."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1_1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(appliance.cert_path, appliance.cert_path.replace("cert.pem", "key.pem"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            connection, _ = listener.accept()
            try:
                server.wrap_socket(connection, server_side=True).close()
            except (ssl.SSLError, OSError):
                connection.close()
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
                version = tls.version()
        thread.join(10)
    return version


def test_tls_1_1_is_refused_on_smtps_and_starttls(appliance):
    client = tls11_context(appliance.cert_path)
    assert handshake_with_local_tls11_server(appliance, client) == "TLSv1.1"

    with socket.create_connection(("127.0.0.1", appliance.ports["smtps"]), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client.wrap_socket(raw, server_hostname=HOSTNAME)

    session = appliance.smtp("submission")
    try:
        session.ehlo()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            session.starttls(context=client)
    finally:
        session.close()
