"""IMAP against a real `twistd mailappliance`: Python's imaplib over STARTTLS and IMAPS, and mbsync.

Every client verifies the appliance's generated certificate. Each test runs over Maildir and mbox.
"""
from __future__ import annotations

import imaplib
import os
import re
import socket
import subprocess
import time

import pytest

from tests.integration.harness import DOMAIN, HOSTNAME, Appliance, make_message, require_program, wait_for

SERVICES = ("smtp", "imap", "imaps")
ALICE = f"alice@{DOMAIN}"


class IMAP(imaplib.IMAP4):
    """imaplib on 127.0.0.1 that still checks the certificate name HOSTNAME after STARTTLS."""

    def _create_socket(self, timeout):
        return socket.create_connection(("127.0.0.1", self.port), timeout)


class IMAPS(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


@pytest.fixture
def app(make_appliance, storage) -> Appliance:
    return make_appliance(storage=storage, services=SERVICES)


def deliver(app: Appliance, subject: str, body: str = "Hello.\r\n", extra: str = "") -> None:
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message(subject, body, extra_headers=extra))


def imaps(app: Appliance, login: bool = True) -> IMAPS:
    client = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    if login:
        client.login(ALICE, app.users["alice"])
    return client


def test_starttls_policy_and_capabilities(app):
    client = IMAP(HOSTNAME, app.ports["imap"], timeout=10)
    assert "STARTTLS" in client.capabilities and "LOGINDISABLED" in client.capabilities
    assert not any(cap.startswith("AUTH=") for cap in client.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(ALICE, app.users["alice"])
    client.starttls(ssl_context=app.tls_context())
    assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
    assert "STARTTLS" not in client.capabilities
    typ, data = client.login(ALICE, app.users["alice"])
    assert typ == "OK"
    client.logout()


def test_wrong_password_is_authenticationfailed(app):
    client = imaps(app, login=False)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        client.login(ALICE, "wrong")
    client.logout()


def test_authenticate_plain(app):
    client = imaps(app, login=False)
    secret = app.users["alice"]
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{secret}".encode())
    assert typ == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_read_and_manage_mail(app):
    deliver(app, "first")
    wait_for(lambda: len(app.messages(ALICE)) == 1)     # two queued messages may be stored in either order
    deliver(app, "second", body="line one\r\nline two\r\n")
    wait_for(lambda: len(app.messages(ALICE)) == 2)
    client = imaps(app)
    typ, data = client.select("INBOX")
    assert data == [b"2"]
    validity = client.response("UIDVALIDITY")[1][0]
    typ, data = client.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)")
    assert typ == "OK" and b'"first"' in data[0] and b'"second"' in data[1]
    size = int(re.search(rb"RFC822.SIZE (\d+)", data[1]).group(1))
    typ, data = client.uid("FETCH", "2", "(BODY.PEEK[])")
    assert len(data[0][1]) == size and data[0][1].endswith(b"line one\r\nline two\r\n")
    typ, data = client.fetch("2", "(BODY[TEXT]<5.3>)")
    assert data[0][1] == b"one"
    assert b"\\Seen" in client.fetch("2", "(FLAGS)")[1][0]
    assert client.search(None, "SUBJECT", "second") == ("OK", [b"2"])
    assert client.uid("SEARCH", None, "UNSEEN") == ("OK", [b"1"])
    assert client.uid("COPY", "1", "Trash")[0] == "OK"
    assert client.response("COPYUID")[1][0].split()[1:] == [b"1", b"1"]
    assert client.uid("MOVE", "2", "Junk")[0] == "OK"
    assert client.response("EXPUNGE")[1] == [b"2"]          # MOVE reports the message gone
    assert client.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert client.expunge() == ("OK", [b"1"])
    typ, data = client.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(time.time()),
                              make_message("sent by me"))
    assert typ == "OK" and b"APPENDUID" in data[0]
    assert client.create("Projects.Alpha")[0] == "OK"
    assert client.rename("Projects.Alpha", "Projects.Beta")[0] == "OK"
    assert client.subscribe("Projects.Beta")[0] == "OK"
    typ, listing = client.list()
    text = b"\n".join(listing)
    for special in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk"):
        assert special in text
    assert b"Projects.Beta" in text and b"Projects.Alpha" not in text
    assert b"Projects.Beta" in b"\n".join(client.lsub()[1])
    typ, data = client.status("Junk", "(MESSAGES UNSEEN)")
    assert b"MESSAGES 1" in data[0] and b"UNSEEN 0" in data[0]
    assert client.delete("Projects.Beta")[0] == "OK"
    client.logout()

    app.restart()
    client = imaps(app)
    assert client.select("INBOX")[1] == [b"0"]
    assert client.response("UIDVALIDITY")[1][0] == validity
    assert client.response("UIDNEXT")[1][0] == b"3"          # never reused after the expunge
    assert client.select("Trash")[1] == [b"1"]
    assert client.logout()[0] == "BYE"


def test_idle_sees_smtp_delivery(app):
    client = imaps(app)
    client.select("INBOX")
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline().startswith(b"+")
    started = time.monotonic()
    deliver(app, "while idling")
    client.sock.settimeout(5)
    line = client.readline()
    elapsed = time.monotonic() - started
    assert line.strip() == b"* 1 EXISTS"
    assert elapsed < 2.5            # SMTP + queue + our 1 s poll
    client.send(b"DONE\r\n")
    while not (line := client.readline()).startswith(tag):
        pass
    assert b"OK" in line
    client.logout()


def test_concurrent_sessions_see_each_others_changes(app):
    deliver(app, "shared")
    wait_for(lambda: len(app.messages(ALICE)) == 1)
    first, second = imaps(app), imaps(app)
    first.select("INBOX")
    second.select("INBOX")
    first.store("1", "+FLAGS", "(\\Flagged)")
    second.noop()
    assert any(b"\\Flagged" in item for item in second.untagged_responses.get("FETCH", []))
    first.store("1", "+FLAGS", "(\\Deleted)")
    first.expunge()
    typ, data = second.noop()
    assert second.untagged_responses.get("EXPUNGE") == [b"1"]
    first.logout()
    second.logout()


def test_bad_input_gets_bad_not_a_crash(app):
    client = imaps(app)
    client.select("INBOX")
    for command in (b"FETCH 0:x FLAGS", b"FOO BAR", b"SEARCH " + b"(" * 500, b"FETCH 99 FLAGS",
                    b"APPEND INBOX {99999999999}", b"LOGIN {-1}"):
        tag = client._new_tag()
        client.send(tag + b" " + command + b"\r\n")
        line = client.readline()
        assert line.startswith(tag + b" BAD") or line.startswith(tag + b" NO"), line
    assert client.noop()[0] == "OK"
    client.logout()


MBSYNC_CONFIG = """
IMAPAccount appliance
Host 127.0.0.1
Port {port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {cert}

IMAPStore remote
Account appliance

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Remove Both
Expunge Both
SyncState *
"""


def _mbsync(app: Appliance, config: str) -> None:
    program = require_program("mbsync")
    result = subprocess.run([program, "-c", config, "-a"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _local_files(folder: str) -> list[str]:
    return [name for sub in ("cur", "new") for name in os.listdir(os.path.join(folder, sub))]


def test_mbsync_two_way_sync(app, tmp_path):
    deliver(app, "to be synced")
    deliver(app, "to be deleted")
    wait_for(lambda: len(app.messages(ALICE)) == 2)
    local = tmp_path / "local"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(MBSYNC_CONFIG.format(port=app.ports["imaps"], user=ALICE, password=app.users["alice"],
                                           cert=app.cert_path, local=local))
    _mbsync(app, str(config))                        # pull
    inbox = local / "INBOX"
    assert len(_local_files(str(inbox))) == 2
    assert (local / "Sent").is_dir()

    archive = local / "Archive"                      # a new folder with one uploaded message
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True)
    (archive / "cur" / "1700000000.1.local:2,S").write_bytes(b"Subject: uploaded\n\nfrom mbsync\n")
    for name in _local_files(str(inbox)):           # flag one, delete the other
        path = inbox / "cur" / name if (inbox / "cur" / name).exists() else inbox / "new" / name
        content = path.read_bytes()
        target = inbox / "cur" / (name.split(":")[0] + (":2,FS" if b"to be synced" in content else ":2,ST"))
        path.rename(target)
    _mbsync(app, str(config))                        # push changes, expunge
    _mbsync(app, str(config))                        # and once more: nothing may change

    client = imaps(app)
    client.select("INBOX")
    typ, data = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert len([item for item in data if isinstance(item, tuple)]) == 1
    assert b"to be synced" in data[0][1] and b"\\Flagged" in data[0][0]
    assert client.select("Archive")[1] == [b"1"]
    assert b"from mbsync" in client.fetch("1", "(BODY.PEEK[TEXT])")[1][0][1]
    client.logout()
