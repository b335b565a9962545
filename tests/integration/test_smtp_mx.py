"""The MX port (25) as the Internet sees it: delivery, refusals, limits, and what EHLO offers."""
from __future__ import annotations

import email
import os
import re
import socket
import subprocess

from tests.integration.harness import (DOMAIN, HOSTNAME, PASSWORDS, Appliance, make_message, require_program,
                                       wait_for)

SENDER = "someone@outside.example"
ALICE = f"alice@{DOMAIN}"


def subjects(appliance: Appliance, user: str) -> list[str]:
    return [email.message_from_bytes(raw)["Subject"] for raw in appliance.messages(user)]


def send_sentinel(appliance: Appliance, user: str = ALICE) -> None:
    """Deliver one good message and wait for it: whatever was refused before it is never coming."""
    with appliance.smtp() as client:
        client.sendmail(SENDER, [user], make_message("sentinel", to=user))
    wait_for(lambda: "sentinel" in subjects(appliance, user), timeout=15)


def accepted_ids(appliance: Appliance) -> list[str]:
    return re.findall(r"\breceived id=(\S+)", appliance.log())


def test_delivers_to_local_mailbox_with_trace_headers(make_appliance, storage):
    appliance = make_appliance(storage=storage)
    with appliance.smtp() as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(make_message("hello mx", body="First line.\r\nSecond line.\r\n"))
    assert code == 250, reply

    delivered = wait_for(lambda: appliance.messages(ALICE), timeout=15)
    assert len(delivered) == 1
    message = email.message_from_bytes(delivered[0])
    assert message["Subject"] == "hello mx"
    assert message["Return-Path"] == f"<{SENDER}>"
    assert message["Delivered-To"] == ALICE
    assert message.get_payload().replace("\r\n", "\n") == "First line.\nSecond line.\n"
    [queue_id] = accepted_ids(appliance)
    received = [" ".join(value.split()) for value in message.get_all("Received", [])]
    assert any(queue_id in value and HOSTNAME in value for value in received), (queue_id, received)


def test_unknown_local_user_is_refused_at_rcpt(appliance):
    with appliance.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        code, reply = client.rcpt(f"nobody@{DOMAIN}")
    assert code == 550
    assert reply.startswith(b"5.1.1"), reply


def test_relay_to_outside_domain_without_auth_is_refused(appliance):
    with appliance.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        code, reply = client.rcpt("victim@elsewhere.example")
    assert code in (550, 554)
    assert reply.startswith(b"5.7.1"), reply
    assert accepted_ids(appliance) == []


def test_declared_size_over_the_limit_is_refused_at_mail(make_appliance):
    appliance = make_appliance(limits={"max_message_size": "10000"})
    with appliance.smtp() as client:
        client.ehlo()
        assert client.esmtp_features.get("size") == "10000"
        code, reply = client.mail(SENDER, ["SIZE=20000"])
    assert code == 552
    assert reply.startswith(b"5.3.4"), reply


def test_message_over_the_limit_is_refused_and_not_stored(make_appliance):
    appliance = make_appliance(limits={"max_message_size": "10000"})
    big = make_message("too big", body="x" * 76 + "\r\n") + b"y" * 76 * 300 + b"\r\n"
    with appliance.smtp() as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, reply = client.data(big)
        assert code == 552, reply
        assert reply.startswith(b"5.3.4"), reply
    send_sentinel(appliance)
    assert subjects(appliance, ALICE) == ["sentinel"]


def test_ehlo_offers_the_mx_extensions_but_not_auth(appliance):
    with appliance.smtp() as client:
        code, _ = client.ehlo()
        assert code == 250
        for extension in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "starttls"):
            assert client.has_extn(extension), (extension, client.esmtp_features)
        assert not client.has_extn("auth"), client.esmtp_features


def test_mx_accepts_mail_after_starttls(appliance):
    with appliance.smtp() as client:
        client.starttls(context=appliance.tls_context())
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail(SENDER, [ALICE], make_message("over tls"))
    wait_for(lambda: "over tls" in subjects(appliance, ALICE), timeout=15)


def test_vrfy_does_not_reveal_users(appliance):
    with appliance.smtp() as client:
        client.ehlo()
        known = client.verify(ALICE)
        unknown = client.verify(f"nobody@{DOMAIN}")
    assert known[0] in (252, 502), known
    assert known[0] == unknown[0]


def test_too_many_errors_gets_421_and_close(appliance):
    with socket.create_connection(("127.0.0.1", appliance.ports["smtp"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        codes = []
        for _ in range(50):
            try:
                sock.sendall(b"BOGUS command\r\n")
            except OSError:
                break
            line = reader.readline()
            if not line:
                break
            while line[3:4] == b"-":
                line = reader.readline()
            codes.append(int(line[:3]))
            if codes[-1] == 421:
                break
        assert codes and codes[-1] == 421, codes
        assert all(500 <= code < 600 for code in codes[:-1]), codes
        assert reader.read() == b"", "the server must close after 421"


def test_swaks_delivers_on_the_mx_port(appliance):
    swaks = require_program("swaks")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{appliance.ports['smtp']}", "--helo", "client.example.test",
         "--from", SENDER, "--to", ALICE, "--header", "Subject: via swaks", "--body", "Sent by swaks."],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: "via swaks" in subjects(appliance, ALICE), timeout=15)


def spool_files(appliance: Appliance) -> list[str]:
    """The daemon's open descriptors on DATA spool files (created unlinked, so they read '(deleted)')."""
    spool = os.path.join(appliance.root, "var", "smtp-data")
    found = []
    for fd in os.listdir(f"/proc/{appliance.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{appliance.pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(spool + "/"):
            found.append(target)
    return found


def test_a_large_message_is_spooled_to_disk_while_it_arrives_and_stored_intact(make_appliance, storage):
    """Issue 10 defect 8: past 256 KiB a transfer in progress is in an unlinked spool file, not in
    memory; nothing is left in var/smtp-data at any time; the stored message is the one sent."""
    appliance = make_appliance(storage=storage)
    line = b"A line of a large message, with a .dot and some more text to fill it: 0123456789\r\n"
    body = b"".join(b"%07d " % number + line for number in range(40000))       # about 3.5 MiB
    message = make_message("large one") + body
    wire = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    with socket.create_connection(("127.0.0.1", appliance.ports["smtp"]), timeout=30) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            text = reader.readline()
            while text[3:4] == b"-":
                text = reader.readline()
            return text

        assert reply().startswith(b"220")
        for command, code in ((b"EHLO client.example.test", b"250"), (b"MAIL FROM:<%s>" % SENDER.encode(), b"250"),
                              (b"RCPT TO:<%s>" % ALICE.encode(), b"250"), (b"DATA", b"354")):
            sock.sendall(command + b"\r\n")
            assert reply().startswith(code)
        half = len(wire) // 2
        sock.sendall(wire[:half])
        held = wait_for(lambda: spool_files(appliance), timeout=15)
        assert all(name.endswith(" (deleted)") for name in held), held
        assert os.listdir(os.path.join(appliance.root, "var", "smtp-data")) == []
        sock.sendall(wire[half:])
        answer = reply()
        assert answer.startswith(b"250"), answer
        assert spool_files(appliance) == []
        sock.sendall(b"QUIT\r\n")
    stored = wait_for(lambda: appliance.messages(ALICE), timeout=30)
    assert len(stored) == 1
    assert stored[0].replace(b"\r\n", b"\n").endswith(message.replace(b"\r\n", b"\n"))


def test_a_transfer_cut_off_leaves_no_spool_file_open(appliance):
    with socket.create_connection(("127.0.0.1", appliance.ports["smtp"]), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"HELO client.example.test\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                     % (SENDER.encode(), ALICE.encode()))
        for _ in range(4):
            reader.readline()
        sock.sendall(b"x" * 78 + b"\r\n" * 1 + (b"y" * 1022 + b"\r\n") * 1024)
        wait_for(lambda: spool_files(appliance), timeout=15)
        reader.close()                     # else the socket stays open behind the makefile
    wait_for(lambda: not spool_files(appliance), timeout=15)
    send_sentinel(appliance)


def test_mbox_user_named_like_bobs_dot_lock_never_gets_bobs_lock_path(tmp_path):
    """Issue 10 defect 7 on a real twistd: mail for `bob.lock` is not written to bob's dot-lock
    path (where a delivery to bob would delete it as stale); it waits in the queue, logged, and
    `check` names the user. bob's own mail arrives as usual."""
    appliance = Appliance(str(tmp_path / "appliance"), storage="mbox", services=("smtp",),
                          users={**PASSWORDS, "bob.lock": "lock-secret-3"})
    try:
        appliance.setup()
        appliance.start()
        lock_user, bob = f"bob.lock@{DOMAIN}", f"bob@{DOMAIN}"
        with appliance.smtp() as client:
            client.sendmail(SENDER, [lock_user], make_message("for bob.lock", to=lock_user))
        wait_for(lambda: re.search(rf"deferred .*rcpt={re.escape(lock_user)}.*unsafe mailbox name", appliance.log()),
                 timeout=15)
        assert not os.path.exists(appliance.mailbox_path(lock_user))
        with appliance.smtp() as client:
            client.sendmail(SENDER, [bob], make_message("for bob", to=bob))
        wait_for(lambda: "for bob" in subjects(appliance, bob), timeout=15)
        wait_for(lambda: not os.path.exists(appliance.mailbox_path(lock_user)), timeout=15)   # bob's lock, released
        assert not re.search(rf"delivered .*rcpt={re.escape(lock_user)}", appliance.log())
        assert f"warning: {lock_user} gets no mbox mailbox" in appliance.cli("check").stdout
    finally:
        appliance.stop()


def test_an_mbox_locked_by_a_mail_client_holds_up_no_other_mailbox(make_appliance):
    """A mail client holding alice's dot-lock (a live process, a fresh lock) makes her delivery wait
    for it (up to mbox.LOCK_TIMEOUT, 10 s), in one delivery writer; bob's mail, sent after hers,
    still arrives at once, and hers follows as soon as the client lets go."""
    appliance = make_appliance(storage="mbox", services=("smtp",))
    alice, bob = ALICE, f"bob@{DOMAIN}"
    send_sentinel(appliance)                                  # alice's mbox exists
    lock = appliance.mailbox_path(alice) + ".lock"
    with open(lock, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    try:
        with appliance.smtp() as client:
            client.sendmail(SENDER, [alice], make_message("while locked", to=alice))
            client.sendmail(SENDER, [bob], make_message("for bob", to=bob))
        wait_for(lambda: "for bob" in subjects(appliance, bob), timeout=5)
        assert "while locked" not in subjects(appliance, alice)
    finally:
        os.unlink(lock)
    wait_for(lambda: "while locked" in subjects(appliance, alice), timeout=8)
