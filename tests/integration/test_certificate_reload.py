"""A renewed certificate is picked up by SIGHUP, and the connections already open keep working.

What an operator does after certbot renews: replace the pair where [tls] points, then
`systemctl reload` (SIGHUP). New connections, STARTTLS (587) and implicit TLS (465, 993), see
the new certificate; a client connected before the reload goes on on its session.
"""
from __future__ import annotations

import hashlib
import imaplib
import os
import signal
import socket
import ssl

from tests.integration.harness import DOMAIN, HOSTNAME, PASSWORDS, SMTP, Appliance, make_message, wait_for

SERVICES = ("smtp", "submission", "smtps", "imaps")


class IMAPS(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return fingerprint(ssl.PEM_cert_to_DER_cert(handle.read()))


def any_certificate() -> ssl.SSLContext:
    """A client that takes whatever certificate it is shown, so the test can look at which one."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def implicit_fingerprint(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with any_certificate().wrap_socket(raw, server_hostname=HOSTNAME) as tls:
            return fingerprint(tls.getpeercert(binary_form=True))


def starttls_fingerprint(port: int) -> str:
    with SMTP(HOSTNAME, port, timeout=10) as client:
        client.starttls(context=any_certificate())
        return fingerprint(client.sock.getpeercert(binary_form=True))


def reload(app: Appliance) -> str:
    before = app.log().count(" reloaded ")
    os.kill(app.pid, signal.SIGHUP)
    wait_for(lambda: app.log().count(" reloaded ") > before or " reload-refused " in app.log())
    return app.log()


def test_renewed_certificate_is_served_after_sighup_and_open_sessions_go_on(make_appliance):
    app = make_appliance(services=SERVICES)
    old = file_fingerprint(app.cert_path)
    assert starttls_fingerprint(app.ports["submission"]) == old
    # Sessions opened before the renewal: IMAP over implicit TLS, and submission after STARTTLS and AUTH.
    imap = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    imap.login(f"alice@{DOMAIN}", PASSWORDS["alice"])
    submission = app.submit("alice")

    app.cli("gen-cert", "--force")                       # the renewal: a new key and certificate
    new = file_fingerprint(app.cert_path)
    assert new != old
    log = reload(app)
    assert " reload-refused " not in log, log

    assert starttls_fingerprint(app.ports["submission"]) == new
    assert starttls_fingerprint(app.ports["smtp"]) == new
    assert implicit_fingerprint(app.ports["smtps"]) == new
    assert implicit_fingerprint(app.ports["imaps"]) == new
    # The new pair verifies for a client that trusts only it.
    with SMTP(HOSTNAME, app.ports["submission"], timeout=10) as client:
        client.starttls(context=app.tls_context())

    # The old sessions were not dropped: still on the old certificate, still answering.
    assert fingerprint(imap.sock.getpeercert(binary_form=True)) == old
    assert imap.noop()[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()
    assert fingerprint(submission.sock.getpeercert(binary_form=True)) == old
    assert submission.noop()[0] == 250
    submission.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], make_message("sent-across-reload",
                                                                            sender=f"alice@{DOMAIN}"))
    submission.quit()
    wait_for(lambda: any(b"sent-across-reload" in m for m in app.messages("bob")))


def test_a_broken_new_pair_is_refused_and_the_old_certificate_stays(make_appliance):
    app = make_appliance(services=SERVICES)
    old = file_fingerprint(app.cert_path)
    with open(app.cert_path, "w", encoding="ascii") as handle:     # a renewal that went wrong half-way
        handle.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    log = reload(app)
    assert any(" reload-refused " in line and "[tls] certificate" in line for line in log.splitlines()), log
    assert implicit_fingerprint(app.ports["smtps"]) == old
    assert starttls_fingerprint(app.ports["submission"]) == old
    assert os.path.exists(app.cert_path)
