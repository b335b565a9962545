"""`mailappliance sendmail` for cron jobs: injected with the daemon up, and kept until it starts when it is down."""
from __future__ import annotations

import os
import pwd

from tests.integration.harness import Appliance, wait_for
from tests.integration.test_delivery_e2e import MX1, dns, net, notices, one_transaction, sender_appliance  # noqa: F401

BOB = "bob@example.test"


def sendmail(appliance: Appliance, *args: str, stdin: str, check: bool = True):
    return appliance.cli("sendmail", *args, stdin=stdin, check=check)


def pickup_files(appliance: Appliance, sub: str = "") -> list[str]:
    folder = os.path.join(appliance.root, "var", "pickup", sub)
    return sorted(n for n in os.listdir(folder) if n.endswith(".msg"))


def one_message(appliance: Appliance, user: str) -> str:
    [message] = wait_for(lambda: appliance.messages(user), 10)
    return message.decode("utf-8", "replace").replace("\r\n", "\n")     # Maildir keeps LF line ends


def test_a_cron_style_message_is_delivered_with_the_headers_it_lacked(sender_appliance, net):
    appliance = sender_appliance()
    result = sendmail(appliance, "bob", stdin="Subject: nightly backup\n\nall fine\n.\nnot part of it\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    message = one_message(appliance, BOB)
    me = pwd.getpwuid(os.getuid()).pw_name
    assert f"Return-Path: <{me}@example.test>" in message        # the invoking user @ the first domain
    assert f"From: {me}@example.test" in message
    assert "\nDate: " in message and "\nMessage-ID: <" in message
    assert "Received: from local (pickup)" in message and f"(user {me})" in message
    assert "all fine" in message and "not part of it" not in message  # a lone dot ends it, as in sendmail
    assert pickup_files(appliance) == []


def test_minus_i_keeps_lone_dots_and_minus_f_sets_the_sender(sender_appliance, net):
    appliance = sender_appliance()
    sendmail(appliance, "-oi", "-f", "alice@example.test", BOB,
             stdin="From: Alice <alice@example.test>\nSubject: dots\n\nbefore\n.\nafter\n")
    message = one_message(appliance, BOB)
    assert "Return-Path: <alice@example.test>" in message
    assert "before\n.\nafter" in message
    assert message.count("From: ") == 1


def test_minus_t_reads_to_cc_and_bcc_and_removes_bcc(sender_appliance, net):
    sink = net.sink(MX1)
    appliance = sender_appliance()
    sendmail(appliance, "-t", stdin="To: bob@example.test\nBcc: hidden@example.org,\n  alice@example.test\n"
                                    "Subject: report\n\nnumbers\n")
    for text in (one_message(appliance, BOB), one_message(appliance, "alice@example.test")):
        assert "Subject: report" in text and "Bcc" not in text and "hidden@" not in text
    remote = one_transaction(sink)
    assert "X-Rcpt-Args: <hidden@example.org>" in remote
    assert "Subject: report" in remote and "Bcc" not in remote


def test_with_the_daemon_down_the_message_waits_and_is_delivered_at_start(sender_appliance, net):
    appliance = sender_appliance()
    appliance.stop()
    sendmail(appliance, "-f", "alice@example.test", BOB, stdin="Subject: while you were out\n\nhello\n")
    [waiting] = pickup_files(appliance)
    assert appliance.messages(BOB) == []
    mode = os.stat(os.path.join(appliance.root, "var", "pickup")).st_mode & 0o7777
    assert mode == 0o1733
    appliance.start()
    assert "Subject: while you were out" in one_message(appliance, BOB)
    assert pickup_files(appliance) == []


def test_an_unknown_local_recipient_bounces_to_the_sender(sender_appliance, net):
    appliance = sender_appliance()
    sendmail(appliance, "-f", "alice@example.test", "nobody@example.test", BOB, stdin="Subject: two\n\nx\n")
    assert "Subject: two" in one_message(appliance, BOB)
    [dsn] = wait_for(lambda: notices(appliance, "failed"), 10)
    assert "Final-Recipient: rfc822; nobody@example.test" in dsn and "Status: 5.1.1" in dsn


def test_an_unreadable_pickup_file_is_set_aside_with_a_log_line(sender_appliance, net):
    appliance = sender_appliance()
    appliance.stop()
    with open(os.path.join(appliance.root, "var", "pickup", "1.garbage.msg"), "wb") as f:
        f.write(b"this is not a pickup file\n")
    appliance.start()
    wait_for(lambda: pickup_files(appliance, "bad") == ["1.garbage.msg"], 10)
    assert pickup_files(appliance) == []
    assert "pickup file set aside file=1.garbage.msg" in appliance.log()


def test_mistakes_are_one_line_errors(sender_appliance, net):
    appliance = sender_appliance()
    for args, error in ((("-t",), "mailappliance: no recipients: give them as arguments, or use -t to read To, "
                                  "Cc and Bcc\n"),
                        (("bad address@",), "mailappliance: 'bad address@' is not a mail address\n")):
        result = sendmail(appliance, *args, stdin="Subject: x\n\ny\n", check=False)
        assert (result.returncode, result.stdout, result.stderr) == (64, "", error)   # EX_USAGE
    assert pickup_files(appliance) == []
