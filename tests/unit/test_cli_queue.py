"""`mailappliance queue` and `mailappliance sendmail` as an operator and a cron job meet them (no daemon here)."""
from __future__ import annotations

import io
import os
import pwd
import sys

import pytest

from appliance import cli, pickup
from appliance.envelope import Envelope, Recipient
from appliance.queue import Spool
from appliance.inline import InlineReactor, InlinePool

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test, example.org

[listen]
smtp = tcp:2525

[limits]
max_message_size = 2000
"""
ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def conf(tmp_path) -> str:
    path = tmp_path / "mailappliance.conf"
    path.write_text(CONF)
    return str(path)


def run(capsys, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        code = cli.main(list(argv))
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def queue_one(tmp_path, qid: str = "ABC123", error: str = "") -> None:
    """A message in the spool of the config's state_dir (var/queue), as a stopped daemon leaves it."""
    reactor = InlineReactor()
    spool = Spool(str(tmp_path / "var" / "queue"), reactor, InlinePool())
    spool.recover()
    envelope = Envelope(qid, "alice@example.test", [Recipient("zed@elsewhere.test", local=False, last_error=error)],
                        received_at=1000.0, size=1234)
    spool.put(envelope, b"Subject: x\r\n\r\ny\r\n")
    reactor.advance(0)
    spool.close()


# ---------------------------------------------------------------- queue

def test_listing_shows_each_message_and_each_recipient_error():
    envelopes = [Envelope("B2", "", [Recipient("a@x.test", last_error="4.2.0 mx said: 450\n busy")],
                          received_at=1000.0 - 7200, size=99, held=True),
                 Envelope("A1", "alice@example.test", [Recipient("b@y.test"), Recipient("c@y.test", state="delivered")],
                          received_at=1000.0 - 42, size=1234)]
    assert cli.queue_listing(envelopes, 1000.0) == [
        "QUEUE ID             AGE      SIZE  SENDER",
        "B2                    2h        99  <>  (held)",
        "    a@x.test  (4.2.0 mx said: 450 busy)",
        "A1                   42s      1234  <alice@example.test>",
        "    b@y.test  (not tried yet)",
        "2 messages, 1 held",
    ]
    assert cli.queue_listing([], 0) == ["the queue is empty"]


def test_list_reads_the_spool_with_the_daemon_stopped(capsys, conf, tmp_path):
    queue_one(tmp_path, error="4.4.1 connection refused")
    code, out, err = run(capsys, "--config", conf, "queue", "list")
    assert (code, err) == (0, "")
    assert "ABC123" in out and "    zed@elsewhere.test  (4.4.1 connection refused)" in out


def test_hold_release_delete_work_on_the_spool_without_a_daemon(capsys, conf, tmp_path):
    queue_one(tmp_path)
    code, out, _ = run(capsys, "--config", conf, "queue", "hold", "ABC123")
    assert (code, out) == (0, "held ABC123 (the daemon is not running; the change is in the spool)\n")
    assert "(held)" in run(capsys, "--config", conf, "queue", "list")[1]
    assert run(capsys, "--config", conf, "queue", "release", "ABC123")[0] == 0
    assert "(held)" not in run(capsys, "--config", conf, "queue", "list")[1]
    assert run(capsys, "--config", conf, "queue", "delete", "ABC123")[0] == 0
    assert run(capsys, "--config", conf, "queue", "list")[1] == "the queue is empty\n"


@pytest.mark.parametrize("argv, error", [
    (("queue", "hold", "NOPE"), "NOPE: no such message in the queue"),
    (("queue", "delete"), "queue delete needs a queue id, as `queue list` shows it"),
    (("queue", "list", "X"), "queue list takes no queue id"),
    (("queue", "hold", "../etc"), "'../etc' is not a queue id; `queue list` shows them"),
])
def test_queue_mistakes_are_one_line(capsys, conf, argv, error):
    assert run(capsys, "--config", conf, *argv) == (1, "", f"mailappliance: {error}\n")


def test_flush_needs_the_daemon(capsys, conf, tmp_path):
    code, out, err = run(capsys, "--config", conf, "queue", "flush")
    assert (code, out) == (1, "")
    assert err == (f"mailappliance: the daemon is not running (nobody answers on {tmp_path}/var/control.sock); "
                   "flush asks the running daemon to retry now\n")


# ---------------------------------------------------------------- sendmail

def picked_up(tmp_path) -> tuple[str, list[str], bytes]:
    folder = tmp_path / "var" / "pickup"
    [name] = [n for n in os.listdir(folder) if n.endswith(".msg")]
    return pickup.decode((folder / name).read_bytes())


def test_sendmail_leaves_a_complete_message_in_the_pickup_folder(capsys, conf, tmp_path):
    assert run(capsys, "--config", conf, "sendmail", "root", "bob@example.org, carol@else.test",
               stdin=b"Subject: cron\n\nline\n.\nafter the dot\n") == (0, "", "")
    sender, recipients, message = picked_up(tmp_path)
    assert sender == f"{ME}@example.test"
    assert recipients == ["root@example.test", "bob@example.org", "carol@else.test"]
    head, body = message.split(b"\r\n\r\n", 1)
    assert head.startswith(f"From: {ME}@example.test\r\nDate: ".encode())
    assert b"\r\nMessage-ID: <" in head and head.endswith(b"\r\nSubject: cron")
    assert body == b"line\r\n"
    assert oct(os.stat(tmp_path / "var" / "pickup").st_mode & 0o7777) == oct(pickup.FOLDER_MODE)


def test_sendmail_t_reads_recipients_and_drops_bcc(capsys, conf, tmp_path):
    text = (b"From: Alice <alice@example.test>\nTo: Bob <bob@example.org>, carol@example.test\n"
            b"Bcc: secret@example.org,\n  other@example.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
            b"Message-ID: <1@x>\nSubject: s\n\nbody\n")
    assert run(capsys, "--config", conf, "sendmail", "-t", "-i", "-f", "<>", "extra@example.org", stdin=text)[0] == 0
    sender, recipients, message = picked_up(tmp_path)
    assert sender == ""
    assert recipients == ["extra@example.org", "bob@example.org", "carol@example.test", "secret@example.org",
                          "other@example.org"]
    assert message == (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.org>, carol@example.test\r\n"
                       b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\nSubject: s\r\n\r\nbody\r\n")


def test_sendmail_without_headers_gets_them_and_a_blank_line(capsys, conf, tmp_path):
    run(capsys, "--config", conf, "sendmail", "-F", "Backup Job", "-oi", "root", stdin=b"just text\n")
    _, _, message = picked_up(tmp_path)
    head, body = message.split(b"\r\n\r\n", 1)
    assert head.startswith(f"From: Backup Job <{ME}@example.test>".encode()) and body == b"just text\r\n"


@pytest.mark.parametrize("argv, stdin, status, error", [     # sysexits(3): EX_USAGE, EX_DATAERR
    ((), b"Subject: x\n\ny\n", 64, "no recipients: give them as arguments, or use -t to read To, Cc and Bcc"),
    (("-f", "not valid@", "bob"), b"x\n", 64, "'not valid@' is not a mail address"),
    (("bob",), b"x" * 3000, 65, "message too large: "),
])
def test_sendmail_mistakes_are_one_line_and_leave_nothing(capsys, conf, tmp_path, argv, stdin, status, error):
    code, out, err = run(capsys, "--config", conf, "sendmail", *argv, stdin=stdin)
    assert (code, out) == (status, "") and err.startswith(f"mailappliance: {error}") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "var" / "pickup") or \
        [n for n in os.listdir(tmp_path / "var" / "pickup") if n.endswith(".msg")] == []


def test_a_damaged_record_shows_in_queue_list_and_check_without_a_daemon(capsys, conf, tmp_path):
    reactor = InlineReactor()
    spool = Spool(str(tmp_path / "var" / "queue"), reactor, InlinePool())
    spool.recover()
    for qid in ("FIRST1", "MIDDLE2", "THIRD3"):
        spool.put(Envelope(qid, "alice@example.test", [Recipient("zed@elsewhere.test", local=False)],
                           received_at=1000.0, size=20), b"Subject: %s\r\n\r\nbody\r\n" % qid.encode())
    reactor.advance(0)
    spool.close()
    segments = tmp_path / "var" / "queue" / "segments"
    [segment] = [p for p in segments.iterdir() if p.suffix == ".log"]
    data = bytearray(segment.read_bytes())
    data[data.index(b"Subject: MIDDLE2") + 3] ^= 0x20               # one changed byte
    segment.write_bytes(bytes(data))

    code, out, err = run(capsys, "--config", conf, "queue", "list")
    assert (code, err) == (0, "")
    assert "FIRST1" in out and "THIRD3" in out and "3 messages" not in out and "2 messages" in out
    assert "damaged record: " in out and "queue id MIDDLE2?" in out and "1 damaged record kept aside" in out

    assert run(capsys, "--config", conf, "gen-cert")[0] == 0
    code, out, err = run(capsys, "--config", conf, "check")
    assert code == 0, err
    assert "warning: damaged record: " in out and "MIDDLE2" in out
