"""The daemon's status report (appliance/status.py), the control socket's `status` and the screen."""
from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from appliance import control, status, statusview, tls
from appliance.config import TLSSection
from appliance.envelope import Envelope, Recipient

NOW = 1_800_000_000.0


def test_the_queue_summary_counts_messages_held_deferred_and_groups_the_reasons():
    timeout = "4.4.3 MX lookup for nowhere.example failed: timeout"
    envelopes = [
        Envelope("A1", "a@example.test", [Recipient("x@nowhere.example", local=False, last_error=timeout),
                                          Recipient("y@nowhere.example", local=False, last_error=timeout)],
                 received_at=NOW - 7200),
        Envelope("A2", "a@example.test", [Recipient("z@slow.example", local=False, last_error="4.4.1 refused")],
                 received_at=NOW - 60, held=True),
        Envelope("A3", "a@example.test", [Recipient("bob@example.test")], received_at=NOW - 1),
    ]
    summary = status.queue_summary(envelopes, NOW)
    assert summary == {"messages": 3, "held": 1, "deferred": 1, "recipients": 4, "oldest": 7200,
                       "reasons": [{"reason": timeout, "recipients": 2}, {"reason": "4.4.1 refused", "recipients": 1}]}


def test_an_empty_queue_has_no_oldest_message():
    assert status.queue_summary([], NOW)["oldest"] is None


def test_many_reasons_are_cut_to_the_most_common_and_the_rest_summed():
    envelopes = [Envelope(f"B{n}", "", [Recipient(f"r{n}@x.example", local=False, last_error=f"4.0.0 reason {n}")])
                 for n in range(status.MAX_DEFERRED_REASONS + 3)]
    reasons = status.queue_summary(envelopes, NOW)["reasons"]
    assert len(reasons) == status.MAX_DEFERRED_REASONS + 1
    assert reasons[-1] == {"reason": "other reasons", "recipients": 3}


def test_the_certificate_served_gives_its_names_and_days_left(tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    tls.generate_self_signed("mail.example.test", cert, key)
    served = tls.ServerTLS(TLSSection(certificate=cert, key=key))
    import time
    info = status.certificate(served, cert, time.time())
    assert "mail.example.test" in info["names"]
    assert 3640 <= info["days"] <= 3660            # gen-cert: valid 10 years
    assert info["path"] == cert


def test_no_certificate_configured_gives_none():
    assert status.certificate(tls.ServerTLS(TLSSection(certificate="", key="")), "", NOW) is None


def test_disk_used_counts_every_file_below_without_following_links(tmp_path):
    box = tmp_path / "mail" / "example.test" / "alice" / "new"
    box.mkdir(parents=True)
    (box / "1").write_bytes(b"x" * 100_000)
    outside = tmp_path / "big"
    outside.write_bytes(b"y" * 1_000_000)
    os.symlink(outside, box / "link")
    used = status.disk_used(str(tmp_path / "mail"))
    assert 100_000 <= used < 1_000_000
    assert status.disk_used(str(tmp_path / "absent")) is None


def test_the_mailbox_root_is_the_storage_template_before_its_first_placeholder():
    assert status.mailbox_root("/var/lib/ma/mail/{domain}/{local}") == "/var/lib/ma/mail"
    assert status.mailbox_root("/srv/{domain}-mail/{local}") == "/srv"


class Pool:
    """Runs nothing until the test says so: one measurement in flight at a time."""

    def __init__(self):
        self.calls: list[tuple[Deferred, tuple]] = []

    def __call__(self, function, *args) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((d, args))
        return d


def test_disk_sizes_are_measured_once_a_minute_and_never_waited_for_long():
    reactor, pool = Clock(), Pool()
    disk = status.DiskUsage({"queue": "/q"}, reactor, None, in_pool=pool)
    first = disk.sizes()
    second = disk.sizes()
    assert len(pool.calls) == 1                    # one walk of the store, whoever asks
    reactor.advance(status.DISK_WAIT)
    assert first.result is None and second.result is None     # nothing measured yet: not blocked on it
    pool.calls[0][0].callback({"queue": 4096})
    third = disk.sizes()
    assert third.result == (0.0, {"queue": 4096})    # measured when it started, and fresh for a minute
    reactor.advance(status.DISK_MAX_AGE)
    fourth = disk.sizes()
    assert len(pool.calls) == 2 and not fourth.called
    pool.calls[1][0].callback({"queue": 8192})
    assert fourth.result == (status.DISK_WAIT + status.DISK_MAX_AGE, {"queue": 8192})
    assert not reactor.getDelayedCalls()           # the wait's timer is gone once answered


def test_a_failed_measurement_answers_with_the_previous_one():
    reactor, pool = Clock(), Pool()
    disk = status.DiskUsage({"queue": "/q"}, reactor, None, in_pool=pool)
    answer = disk.sizes()
    pool.calls[0][0].errback(OSError("gone"))
    assert answer.result is None


class Listener:
    def __init__(self, name, host):
        self.name = name
        self._waitingForPort = succeed(Port(host))


class Port:
    def __init__(self, host):
        self.host = host

    def getHost(self):
        return self.host


class Address:
    def __init__(self, host, port):
        self.host, self.port = host, port


def test_listeners_show_the_address_they_bound():
    services = [Listener("listen-smtp", Address("127.0.0.1", 2525)), Listener("queue", None),
                Listener("listen-imaps", Address("::1", 993))]
    assert status.listeners(services, {"smtp": "tcp:2525", "imaps": "tcp:993:interface=::1"}) == [
        {"name": "smtp", "endpoint": "tcp:2525", "address": "127.0.0.1:2525"},
        {"name": "imaps", "endpoint": "tcp:993:interface=::1", "address": "[::1]:993"}]


# --- the control socket's status command ----------------------------------------------------------

class NoQueue:
    pass


def ask(commands, line: bytes) -> bytes:
    from twisted.internet.protocol import Factory
    factory = Factory.forProtocol(control.ControlProtocol)
    factory.commands = commands
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(line)
    return transport.value()


def test_status_answers_one_line_of_json_and_is_not_logged(monkeypatch):
    logged = []
    monkeypatch.setattr(control.maillog, "emit", lambda event, **fields: logged.append(event))
    commands = control.ControlCommands(NoQueue(), status=lambda: succeed({"queue": {"messages": 2}}))
    reply = ask(commands, b"status\n")
    assert reply.startswith(b"OK ") and reply.endswith(b"\n") and reply.count(b"\n") == 1
    assert json.loads(reply[3:]) == {"queue": {"messages": 2}}
    assert logged == []


def test_status_without_a_report_is_refused():
    assert ask(control.ControlCommands(NoQueue()), b"status\n") == b"ERR status is not available\n"


# --- the screen -------------------------------------------------------------------------------------

REPORT = {
    "hostname": "mail.example.test", "version": "0.1.0", "pid": 4242, "uptime": 8000,
    "services": [{"name": "smtp", "endpoint": "tcp:25", "address": "0.0.0.0:25"},
                 {"name": "submission", "endpoint": "tcp:587", "address": "0.0.0.0:587"}],
    "queue": {"messages": 2, "held": 0, "deferred": 1, "recipients": 2, "oldest": 3700,
              "reasons": [{"reason": "4.4.3 MX lookup for nowhere.example failed: timeout", "recipients": 1}]},
    "mail": {"last_hour": {"received": 3, "delivered": 2, "relayed": 1, "deferred": 1, "bounced": 0, "rejected": 5},
             "last_day": {"received": 40, "delivered": 38, "relayed": 7, "deferred": 4, "bounced": 1,
                          "rejected": 60}},
    "rejected": {"last_hour": {"unknown user 550 5.1.1": 3, "greylist 451 4.7.1": 2},
                 "last_day": {"unknown user 550 5.1.1": 40, "greylist 451 4.7.1": 12, "dnsbl 554 5.7.1": 8}},
    "failed_logins": {"last_hour": 1, "last_day": 9},
    "disk": {"age": 12, "folders": [{"name": "mailboxes", "path": "/var/lib/ma/mail", "bytes": 12_900_000},
                                    {"name": "queue", "path": "/var/lib/ma/queue", "bytes": None}]},
    "certificate": {"path": "/etc/ma/cert.pem", "names": ["mail.example.test"], "not_after": "2027-03-01T00:00:00",
                    "days": 86},
}


def test_the_screen_shows_every_part_in_aligned_columns():
    screen = statusview.render(REPORT)
    text = "\n".join(screen)
    assert screen[0] == "mailappliance 0.1.0 on mail.example.test: running 2h 13m, pid 4242"
    assert "services     smtp        0.0.0.0:25" in screen
    assert "             submission  0.0.0.0:587" in screen
    assert "queue        2 messages, 1 deferred; oldest 1h 1m" in screen
    assert "  deferred   1  4.4.3 MX lookup for nowhere.example failed: timeout" in screen
    table = screen[screen.index(next(line for line in screen if line.startswith("mail "))):]
    table = table[:next(n for n, line in enumerate(table) if line.startswith("failed logins")) + 1]
    assert len(table) == 11
    assert len({len(line) for line in table}) == 1     # the numbers' columns line up under their heads
    rows = {line[:30].strip(): line[30:].split() for line in table}
    assert rows["received"] == ["3", "40"] and rows["rejected"] == ["5", "60"]
    assert rows["delivered"] == ["2", "38"] and rows["relayed"] == ["1", "7"]
    assert rows["unknown user 550 5.1.1"] == ["3", "40"]
    assert rows["dnsbl 554 5.7.1"] == ["0", "8"]
    assert rows["failed logins"] == ["1", "9"]
    reasons = [line.split()[0] for line in table if line.startswith("    ")]
    assert reasons == ["unknown", "greylist", "dnsbl"]   # most frequent of the day first
    assert "disk         mailboxes    12.3 MiB  /var/lib/ma/mail" in screen
    assert "             queue            none  /var/lib/ma/queue" in screen
    assert "             (measured 12s ago)" in screen
    assert "certificate  expires 2027-03-01, in 86 days" in text


def test_a_certificate_near_or_past_its_end_says_so():
    soon = statusview.render({**REPORT, "certificate": {**REPORT["certificate"], "days": 3}})
    assert "certificate  expires 2027-03-01, in 3 days; renew it now" in soon
    gone = statusview.render({**REPORT, "certificate": {**REPORT["certificate"], "days": -2}})
    assert "certificate  EXPIRED on 2027-03-01 (2 days ago)" in gone


def test_a_report_missing_parts_still_renders():
    screen = statusview.render({})
    assert "queue        empty" in screen and "disk         being measured; ask again in a moment" in screen
    assert "certificate  none: [tls] certificate is empty" in screen


def test_durations_and_sizes_read_at_a_glance():
    assert [statusview.duration(s) for s in (0, 59, 61, 3700, 90000, None)] == [
        "0s", "59s", "1m 1s", "1h 1m", "1d 1h", "unknown"]
    assert [statusview.size(n) for n in (0, 1023, 2048, 5 * 1024 ** 3, None)] == [
        "0 B", "1023 B", "2.0 KiB", "5.0 GiB", "none"]


# --- the command -------------------------------------------------------------------------------------

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test

[listen]
smtp = tcp:2525
"""


def run_status(tmp_path, capsys) -> tuple[int, str, str]:
    from appliance import cli
    path = tmp_path / "mailappliance.conf"
    path.write_text(CONF)
    code = cli.main(["--config", str(path), "status"])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_of_a_stopped_appliance_is_one_clear_line_and_exit_3(tmp_path, capsys):
    code, out, err = run_status(tmp_path, capsys)
    socket_path = tmp_path / "var" / "control.sock"
    assert (code, out, err) == (3, "", f"mailappliance is not running (no control socket at {socket_path})\n")


def test_a_socket_left_by_a_crash_is_not_running_either(tmp_path, capsys):
    import socket
    (tmp_path / "var").mkdir()
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(tmp_path / "var" / "control.sock"))      # bound, never listening: as after kill -9
    left.close()
    code, out, err = run_status(tmp_path, capsys)
    assert code == 3 and err == f"mailappliance is not running (nobody answers on {tmp_path}/var/control.sock)\n"


def test_status_prints_the_screen_of_the_daemons_answer(tmp_path, capsys):
    import socket
    import threading
    (tmp_path / "var").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "var" / "control.sock"))
    server.listen(1)
    asked = []

    def answer():
        conn, _ = server.accept()
        with conn:
            asked.append(conn.recv(100))
            conn.sendall(b"OK " + json.dumps(REPORT).encode() + b"\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        code, out, err = run_status(tmp_path, capsys)
    finally:
        thread.join(5)
        server.close()
    assert asked == [b"status\n"]
    assert (code, err) == (0, "")
    assert out.splitlines() == statusview.render(REPORT)
