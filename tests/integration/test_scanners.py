"""SpamAssassin and ClamAV at the end of DATA on a real `twistd mailappliance`, with a real spamd and clamd.

The daemons are private (tests/integration/scanners.py): spamd with Debian's rules plus one
local rule of a known score (a message between the required and the reject score), clamd with
only the EICAR signature. What a sending client sees (250, 550 5.7.1, 554 5.7.1 naming the
virus, 451 4.7.1), where the mail lands (INBOX, Junk over IMAP, INBOX marked for POP3), and the
log lines when a scanner is down or hangs.
"""
from __future__ import annotations

import base64
import email
import email.utils
import imaplib
import poplib
import socket
import threading
import time

import pytest

from tests.integration.harness import (CHECKS_OFF, DOMAIN, HOSTNAME, SMTP_SERVICES, Appliance,
                                       ApplianceError, free_port, wait_for)
from tests.integration.scanners import EICAR, EICAR_SIGNATURE, GTUBE, Clamd, SilentScanner, Spamd

MID_RULE = "mailappliance-test-mid-score"
RULES = f"body MAILAPPLIANCE_TEST_MID /{MID_RULE}/\nscore MAILAPPLIANCE_TEST_MID 8.0\n"
SERVICES = SMTP_SERVICES + ("imaps", "pop3s")
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


@pytest.fixture(scope="module")
def spamd():
    daemon = Spamd(RULES)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def clamd():
    daemon = Clamd(stream_max_length="1M")
    daemon.start()
    yield daemon
    daemon.stop()


def start_appliance(root: str, storage: str = "maildir", services=SERVICES, **checks: str) -> Appliance:
    appliance = Appliance(root, storage=storage, services=services, overrides={"checks": {**CHECKS_OFF, **checks}})
    try:
        appliance.setup()
        appliance.start()
    except ApplianceError as problem:
        pytest.fail(str(problem), pytrace=False)
    return appliance


@pytest.fixture(scope="module")
def scanning(spamd, clamd, tmp_path_factory):
    """One appliance with both scanners (clamd over TCP), shared by the tests that only send mail."""
    appliance = start_appliance(str(tmp_path_factory.mktemp("scanning")), spamd=spamd.address,
                                clamd=clamd.address, spam_reject_score="15")
    yield appliance
    appliance.stop()


def message(subject: str, body: str = "Hello, see you tomorrow.\r\n", to: str = ALICE,
            extra: str = "") -> bytes:
    """A well-formed message (Date, Message-ID), so Debian's rules give it a low score."""
    return (f"From: Someone <someone@outside.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid(domain='outside.example')}\r\n"
            f"{extra}\r\n{body}").encode()


def with_attachment(data: bytes, subject: str = "the file") -> bytes:
    encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
    body = ("--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nThe file you asked for.\r\n"
            "--BOUNDARY\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=file.com\r\n\r\n{encoded}--BOUNDARY--\r\n")
    return message(subject, body, extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BOUNDARY\r\n")


def send(appliance: Appliance, data: bytes, to: str = ALICE, timeout: float = 30.0) -> tuple[int, bytes]:
    """The reply to the end of DATA: (code, text)."""
    with appliance.smtp(timeout=timeout) as client:
        client.ehlo()
        client.mail("someone@outside.example")
        code, _ = client.rcpt(to)
        assert code == 250
        return client.data(data)


def delivered(appliance: Appliance, user: str, subject: str) -> email.message.Message:
    """The stored message with `subject` in the user's INBOX, waiting for the queue to deliver it."""
    def find() -> email.message.Message | None:
        for raw in appliance.messages(user):
            parsed = email.message_from_bytes(raw)
            if subject in str(parsed["Subject"]):
                return parsed
        return None
    return wait_for(find)


def check_lines(appliance: Appliance, name: str) -> list[str]:
    return [line for line in appliance.log().splitlines() if " check " in line and f"check={name}" in line]


# ---- spamd --------------------------------------------------------------------------------------------
def test_gtube_is_refused_at_the_end_of_data(scanning):
    code, text = send(scanning, message("gtube", f"{GTUBE}\r\n"))
    assert (code, text.split()[0]) == (550, b"5.7.1")
    assert b"spam" in text
    assert any("verdict=reject" in line and "GTUBE" in line for line in check_lines(scanning, "spamd"))


def test_a_plain_message_passes_with_its_score(scanning):
    code, _ = send(scanning, message("plain hello"))
    assert code == 250
    stored = delivered(scanning, "alice", "plain hello")
    status = stored["X-Spam-Status"]
    assert status.startswith("No, score=") and " required=5.0 tests=" in status
    assert stored["X-Spam-Score"] and stored["X-Spam-Flag"] is None


def test_a_mid_score_message_is_delivered_to_junk_flagged(scanning):
    """Between spamd's required score and spam_reject_score: 250, and the Junk folder (INBOX without one)."""
    code, _ = send(scanning, message("mid score", f"Hello {MID_RULE}.\r\n"), to=BOB)
    assert code == 250
    stored = delivered(scanning, "bob", "mid score")     # bob never logged in over IMAP: INBOX, marked
    assert stored["X-Spam-Flag"] == "YES" and stored["Subject"] == "[SPAM] mid score"
    assert "MAILAPPLIANCE_TEST_MID" in stored["X-Spam-Status"]


# ---- clamd --------------------------------------------------------------------------------------------
def test_eicar_in_a_base64_attachment_is_refused_naming_it(scanning):
    code, text = send(scanning, with_attachment(EICAR.encode()))
    assert (code, text.split()[0]) == (554, b"5.7.1")
    assert f"Virus found: {EICAR_SIGNATURE}".encode() in text
    assert any("verdict=reject" in line and EICAR_SIGNATURE in line for line in check_lines(scanning, "clamd"))


def test_a_clean_attachment_passes(scanning):
    code, _ = send(scanning, with_attachment(b"just a text file\n" * 20, subject="clean file"))
    assert code == 250
    assert delivered(scanning, "alice", "clean file").is_multipart()


def test_a_message_over_clamds_stream_limit_is_delivered_unscanned_and_logged(scanning):
    """Our clamd_max_size (25 MB) is above this clamd's StreamMaxLength (1M): clamd says so, we log it."""
    code, _ = send(scanning, message("big one", "x" * 76 + "\r\n") + b"y" * 76 * 15000 + b"\r\n")
    assert code == 250
    delivered(scanning, "alice", "big one")
    assert any("clamd_max_size" in line for line in check_lines(scanning, "clamd"))
    assert any("not scanned" in line and "spamd_max_size" in line for line in check_lines(scanning, "spamd"))


def test_clamd_over_its_unix_socket(clamd, tmp_path):
    appliance = start_appliance(str(tmp_path / "unix"), services=SMTP_SERVICES, clamd=clamd.socket_path)
    try:
        code, text = send(appliance, with_attachment(EICAR.encode()))
        assert code == 554 and EICAR_SIGNATURE.encode() in text
        assert send(appliance, message("clean over unix"))[0] == 250
    finally:
        appliance.stop()


# ---- scanners down or hung --------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["accept", "tempfail"])
def test_scanners_not_listening_follow_scanner_failure(tmp_path, failure):
    appliance = start_appliance(str(tmp_path / failure), services=SMTP_SERVICES, scanner_failure=failure,
                                spamd=f"127.0.0.1:{free_port()}", clamd=f"127.0.0.1:{free_port()}")
    try:
        code, text = send(appliance, message(f"while down {failure}"))
        if failure == "accept":
            assert code == 250
            stored = delivered(appliance, "alice", f"while down {failure}")
            assert stored["X-Spam-Status"] is None            # delivered untagged
            for name in ("clamd", "spamd"):
                (line,) = check_lines(appliance, name)
                assert "connection refused" in line and "delivered unscanned" in line
        else:
            assert (code, text) == (451, b"4.7.1 Content scanner unavailable, try again later")
            assert appliance.messages("alice") == []
    finally:
        appliance.stop()


def test_a_hung_scanner_times_out_without_stalling_other_sessions(tmp_path):
    silent = SilentScanner()
    appliance = start_appliance(str(tmp_path / "hung"), services=SMTP_SERVICES, spamd=silent.address,
                                scanner_timeout="3", scanner_failure="tempfail")
    try:
        outcome: dict[str, object] = {}

        def slow_session() -> None:
            started = time.monotonic()
            outcome["reply"] = send(appliance, message("waits for spamd"))
            outcome["seconds"] = time.monotonic() - started

        waiting = threading.Thread(target=slow_session)
        waiting.start()
        time.sleep(1.0)                        # the first session is now waiting for spamd
        started = time.monotonic()
        with appliance.smtp() as other:
            assert other.ehlo()[0] == 250 and other.noop()[0] == 250
        assert time.monotonic() - started < 1.5            # the reactor is not waiting for spamd
        waiting.join(timeout=30)
        assert outcome["reply"] == (451, b"4.7.1 Content scanner unavailable, try again later")
        assert 3.0 <= outcome["seconds"] < 10.0
        assert any("no answer within 3 s" in line for line in check_lines(appliance, "spamd"))
    finally:
        appliance.stop()
        silent.close()


# ---- Junk over IMAP, INBOX over POP3 -------------------------------------------------------------------------
class IMAPS(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class POP3_SSL(poplib.POP3_SSL):
    def _create_socket(self, timeout):
        return self.context.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout),
                                        server_hostname=self.host)


def imap_subjects(client: imaplib.IMAP4, folder: str) -> list[str]:
    typ, exists = client.select(folder, readonly=True)
    assert typ == "OK"
    if exists == [b"0"]:
        return []
    _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    return [email.message_from_bytes(item[1])["Subject"] for item in data if isinstance(item, tuple)]


@pytest.mark.parametrize("storage", ["maildir", "mbox"])
def test_spam_lands_in_junk_for_imap_users_and_marked_in_inbox_for_pop3_users(spamd, tmp_path, storage):
    appliance = start_appliance(str(tmp_path / storage), storage=storage, spamd=spamd.address)
    try:
        imap = IMAPS(HOSTNAME, appliance.ports["imaps"], ssl_context=appliance.tls_context(), timeout=10)
        imap.login(ALICE, appliance.users["alice"])          # the first login makes Junk
        assert imap_subjects(imap, "Junk") == []
        for to in (ALICE, BOB):
            assert send(appliance, message("cheap offer", f"Buy now {MID_RULE}.\r\n", to=to), to=to)[0] == 250
            assert send(appliance, message("lunch", to=to), to=to)[0] == 250
        wait_for(lambda: imap_subjects(imap, "Junk") == ["cheap offer"])
        wait_for(lambda: imap_subjects(imap, "INBOX") == ["lunch"])
        imap.logout()
        delivered_lines = [line for line in appliance.log().splitlines() if " delivered " in line and ALICE in line]
        assert any("Junk" in line for line in delivered_lines)

        wait_for(lambda: len(appliance.messages("bob")) == 2)
        pop = POP3_SSL(HOSTNAME, appliance.ports["pop3s"], timeout=10, context=appliance.tls_context())
        pop.user(BOB)
        pop.pass_(appliance.users["bob"])
        count, _ = pop.stat()
        seen = [email.message_from_bytes(b"\r\n".join(pop.retr(n + 1)[1])) for n in range(count)]
        pop.quit()
        assert sorted(m["Subject"] for m in seen) == ["[SPAM] cheap offer", "lunch"]
        spam = next(m for m in seen if m["Subject"].startswith("[SPAM]"))
        assert spam["X-Spam-Flag"] == "YES"
    finally:
        appliance.stop()
