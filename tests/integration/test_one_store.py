"""POP3 and IMAP read one store: a real appliance shows the same messages to poplib and imaplib.

The first release had one reader per protocol, and they disagreed: an mbox written by another
program, with an unquoted `From ` line inside a paragraph, showed 4 messages over POP3 and 3 over
IMAP. Both protocols now read the same folder objects, over Maildir and mbox alike.
"""
from __future__ import annotations

import imaplib
import os
import re
import socket

from tests.integration.harness import DOMAIN, HOSTNAME, SMTP_SERVICES, Appliance, make_message, wait_for
from tests.integration.test_pop3 import POP3_SSL

ALICE = f"alice@{DOMAIN}"
SERVICES = SMTP_SERVICES + ("pop3s", "imaps")

# What another program (an import, an old MDA) may leave: mboxo, where a body line that starts
# with "From " after a text line was never quoted. It is one message, not two.
FOREIGN_MBOX = (
    b"From someone@outside.example Thu Dec  3 10:00:00 2026\n"
    b"From: someone@outside.example\nSubject: first\n\nHello.\n\n"
    b"From someone@outside.example Thu Dec  3 10:01:00 2026\n"
    b"From: someone@outside.example\nSubject: second\n\nI went out.\n"
    b"From the window I saw the sea.\nThat line is not a new message.\n\n"
    b"From someone@outside.example Thu Dec  3 10:02:00 2026\n"
    b"From: someone@outside.example\nSubject: third\n\nBye.\n\n"
)


class IMAPS(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def over_pop3(app: Appliance) -> list[bytes]:
    """Every message as POP3 RETR gives it, in POP3's order."""
    client = POP3_SSL(app.ports["pop3s"], app.tls_context())
    client.user(ALICE)
    client.pass_(app.users["alice"])
    try:
        count = client.stat()[0]
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


def over_imap(app: Appliance) -> list[bytes]:
    """Every message of INBOX as IMAP BODY.PEEK[] gives it, in UID order."""
    client = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    client.login(ALICE, app.users["alice"])
    try:
        typ, data = client.select("INBOX", readonly=True)
        assert typ == "OK"
        if int(data[0]) == 0:
            return []
        typ, fetched = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        return [item[1] for item in fetched if isinstance(item, tuple)]
    finally:
        client.logout()


def subjects(messages: list[bytes]) -> list[str]:
    return [re.search(rb"Subject: (\w+)", m).group(1).decode() for m in messages]


def test_mail_delivered_over_smtp_reads_the_same_over_pop3_and_imap(make_appliance, storage):
    app = make_appliance(storage=storage, services=SERVICES)
    with app.smtp() as client:
        for subject in ("one", "two", "three"):
            client.sendmail("someone@outside.example", [ALICE],
                            make_message(subject, body="From here on\r\n>From there\r\n.dot\r\n"))
    wait_for(lambda: len(app.messages("alice")) == 3)
    pop3, imap = over_pop3(app), over_imap(app)
    assert subjects(pop3) == subjects(imap) == ["one", "two", "three"]
    assert pop3 == imap                          # byte for byte, quoting undone the same way


def test_an_mbox_from_another_program_is_three_messages_for_both(make_appliance):
    app = make_appliance(storage="mbox", services=SERVICES)
    path = app.mailbox_path("alice")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(FOREIGN_MBOX)
    pop3, imap = over_pop3(app), over_imap(app)
    assert subjects(pop3) == subjects(imap) == ["first", "second", "third"]
    assert b"From the window I saw the sea." in pop3[1] and pop3 == imap
