"""`mailappliance backup` on a running twistd while mail keeps arriving, then `restore` on a "new machine".

The new machine is a second appliance: another folder, another configuration file, other ports and a
new, empty state folder. What a user would notice is checked with real clients: imaplib sees the
same folders, UIDVALIDITY, UIDs and flags; poplib sees the same UIDLs; `queue list` still shows
the message that was waiting for a remote domain; and every message acknowledged before the
backup began is there. Over Maildir and mbox (whose file is rewritten by an expunge).
"""
from __future__ import annotations

import imaplib
import os
import re
import threading
import time

from tests.integration.harness import (DOMAIN, HOSTNAME, Appliance, ApplianceError, make_message, render_config,
                                       wait_for)
from tests.integration.test_imap import IMAPS
from tests.integration.test_pop3 import POP3_SSL

SERVICES = ("smtp", "imaps", "pop3s")
ALICE = f"alice@{DOMAIN}"
SLOW_RETRIES = {"retry_initial": "3600", "retry_max": "3600"}
MAX_ARRIVALS = 400      # the arrival loop's bounds: messages, and seconds
ARRIVALS_SECONDS = 60.0



def imap(app: Appliance) -> IMAPS:
    client = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    client.login(ALICE, app.users["alice"])
    return client


def folder_names(client: imaplib.IMAP4) -> list[str]:
    names = []
    for line in client.list()[1]:
        match = re.match(rb'\((.*?)\) (?:"(.)"|NIL) (.*)$', line)
        assert match, line
        if b"\\Noselect" not in match.group(1):        # a level such as "Lists" above "Lists.Twisted"
            names.append(match.group(3).decode().strip('"'))
    return sorted(names)


def folder_state(client: imaplib.IMAP4, name: str) -> tuple[int, dict[int, tuple[frozenset[str], str]]]:
    """UIDVALIDITY and uid -> (flags without \\Recent, subject), read with EXAMINE (changes nothing)."""
    assert client.select(f'"{name}"', readonly=True)[0] == "OK"
    validity = int(client.response("UIDVALIDITY")[1][0])
    uids = [int(u) for u in client.uid("SEARCH", "ALL")[1][0].split()]
    messages: dict[int, tuple[frozenset[str], str]] = {}
    if uids:
        _, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()
            subject = item[1].decode().strip().removeprefix("Subject: ")
            messages[uid] = (frozenset(f for f in flags if f != "\\Recent"), subject)
    return validity, messages


def mailbox_state(app: Appliance) -> dict[str, tuple[int, dict[int, tuple[frozenset[str], str]]]]:
    client = imap(app)
    try:
        return {name: folder_state(client, name) for name in folder_names(client)}
    finally:
        client.logout()


def pop3_uidls(app: Appliance) -> list[str]:
    client = POP3_SSL(app.ports["pop3s"], app.tls_context())
    try:
        client.user(ALICE)
        client.pass_(app.users["alice"])
        return [line.split()[1].decode() for line in client.uidl()[1]]
    finally:
        client.quit()


def deliver(app: Appliance, *subjects: str) -> None:
    before = len(app.messages("alice"))
    with app.smtp() as client:
        for subject in subjects:
            client.sendmail("someone@outside.example", [ALICE], make_message(subject))
    wait_for(lambda: len(app.messages("alice")) == before + len(subjects))


def shape_the_mailbox(app: Appliance) -> None:
    """Flags, an expunge (mbox: the file is rewritten), folders, a copy: what a mail client does."""
    deliver(app, "m1", "m2", "m3", "m4")
    client = imap(app)
    try:
        client.select("INBOX")
        uid = {subject: uid_of(client, subject) for subject in ("m1", "m2", "m3", "m4")}
        client.uid("STORE", uid["m1"], "+FLAGS", r"(\Seen \Flagged)")
        client.uid("STORE", uid["m3"], "+FLAGS", r"(\Answered)")
        client.uid("STORE", uid["m2"], "+FLAGS", r"(\Deleted)")
        client.expunge()
        for name in ("Projects", "Lists.Twisted"):
            assert client.create(name)[0] == "OK"
        assert client.uid("COPY", uid["m4"], "Projects")[0] == "OK"
        client.select("Projects")
        client.uid("STORE", "1", "+FLAGS", r"(\Draft)")
    finally:
        client.logout()


def uid_of(client: imaplib.IMAP4, subject: str) -> str:
    [uid] = client.uid("SEARCH", "SUBJECT", subject)[1][0].split()
    return uid.decode()


class Arrivals(threading.Thread):
    """Sends mail to alice, one message per SMTP session, until stopped or MAX_ARRIVALS; keeps what got 250."""

    def __init__(self, app: Appliance):
        super().__init__(daemon=True)
        self.app = app
        self.acknowledged: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + ARRIVALS_SECONDS
        for number in range(MAX_ARRIVALS):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            subject = f"late-{number}"
            try:
                with self.app.smtp() as client:
                    client.sendmail("someone@outside.example", [ALICE], make_message(subject))
                self.acknowledged.append(subject)
            except (OSError, ApplianceError) as exc:
                self.errors.append(str(exc))
            time.sleep(0.05)


def new_machine(tmp_path, old: Appliance) -> Appliance:
    """An appliance in another folder with its own ports and config file; only its config is written."""
    new = Appliance(str(tmp_path / "new-machine"), storage=old.storage, services=SERVICES,
                    overrides={key: old.sections[key] for key in ("relay", "delivery", "queue")})
    os.makedirs(new.root)
    with open(new.config_path, "w", encoding="utf-8") as handle:
        handle.write(render_config(new.sections))
    return new


def test_a_backup_taken_while_mail_arrives_restores_the_same_mailboxes_and_queue(make_appliance, tmp_path,
                                                                                  storage, silent_nameserver):
    old = make_appliance(storage=storage, services=SERVICES, relay={"trusted_networks": "127.0.0.1/32"},
                         delivery={"nameservers": silent_nameserver}, queue=SLOW_RETRIES)
    shape_the_mailbox(old)
    before = mailbox_state(old)
    uidls = pop3_uidls(old)
    with old.smtp() as client:
        client.sendmail(ALICE, ["someone@nowhere.example"], make_message("to-nowhere", sender=ALICE))
    wait_for(lambda: "4.4.3" in old.cli("queue", "list").stdout, timeout=40, interval=0.5)

    arrivals = Arrivals(old)
    arrivals.start()
    try:
        wait_for(lambda: len(arrivals.acknowledged) >= 3, timeout=20)
        acknowledged_before = list(arrivals.acknowledged)
        archive = str(tmp_path / "backup.tar")
        result = old.cli("backup", archive)
        assert arrivals.is_alive() and len(arrivals.acknowledged) > len(acknowledged_before), \
            "no mail arrived while the backup ran"
    finally:
        arrivals.stop.set()
        arrivals.join(30)
    assert not arrivals.errors
    assert "the daemon was running" in result.stdout

    new = new_machine(tmp_path, old)
    restored = new.cli("restore", archive)
    assert f"{new.config_path} kept (it differs from the backup's" in restored.stdout
    new.start()
    try:
        # Everything acknowledged before the backup began is there (delivered now, if it was queued then).
        wait_for(lambda: set(acknowledged_before) <= {s for _, s in mailbox_state(new)["INBOX"][1].values()},
                 timeout=20, interval=0.5)
        after = mailbox_state(new)
        assert sorted(after) == sorted(before) and "Projects" in after and "Lists.Twisted" in after
        for name, (validity, messages) in before.items():
            new_validity, new_messages = after[name]
            assert new_validity == validity, name
            assert {uid: new_messages.get(uid) for uid in messages} == messages, name
        flags = {subject: flags for flags, subject in after["INBOX"][1].values()}
        assert flags["m1"] == {"\\Seen", "\\Flagged"} and flags["m3"] == {"\\Answered"} and "m2" not in flags
        assert [(f, s) for f, s in after["Projects"][1].values()] == [(frozenset({"\\Draft"}), "m4")]
        assert pop3_uidls(new)[:len(uidls)] == uidls
        listing = new.cli("queue", "list").stdout
        assert "someone@nowhere.example" in listing and "<alice@example.test>" in listing
    finally:
        new.stop()
