"""`mailappliance queue list|flush|delete|hold|release` on a live queue, and with the daemon stopped.

A message waits on an MX that answers 4xx; retries are set far apart (retry_initial = 300 s), so
anything that happens within the test's bounded waits happened because of the command.
"""
from __future__ import annotations

import os
import re
import stat

from tests.integration.harness import Appliance, wait_for
from tests.integration.test_delivery_e2e import (BUSY, MX1, MX2, dns, net, notices, one_transaction,  # noqa: F401
                                                 sender_appliance, submit)

SLOW_RETRIES = {"retry_initial": "300", "retry_max": "300"}


def queue(appliance: Appliance, *args: str, check: bool = True):
    return appliance.cli("queue", *args, check=check)


def stuck_message(sender_appliance, net, subject: str = "stuck") -> tuple[Appliance, str]:
    """An appliance with one message deferred by a 4xx from both MX hosts; returns it and the queue id."""
    net.sink(MX1, *BUSY)
    net.sink(MX2, *BUSY)
    appliance = sender_appliance(queue=SLOW_RETRIES)
    submit(appliance, "dave@example.org", subject=subject)
    wait_for(lambda: "deferred id=" in appliance.log(), 10)
    [qid] = re.findall(r"deferred id=(\w+)", appliance.log())
    return appliance, qid


def attempts(appliance: Appliance, qid: str) -> int:
    return appliance.log().count(f"deferred id={qid} ")


def test_list_shows_the_stuck_message_with_its_last_error(sender_appliance, net):
    appliance, qid = stuck_message(sender_appliance, net)
    out = queue(appliance, "list").stdout
    lines = out.splitlines()
    [header] = [line for line in lines if line.startswith(qid)]
    assert "<alice@example.test>" in header and "(held)" not in header
    assert f"    dave@example.org  (4.2.0 mx2.example.org[{MX2}]:{net.port} said: 450 4.2.0 mailbox busy)" in lines
    assert lines[-1] == "1 message"


def test_list_of_an_empty_queue(sender_appliance, net):
    appliance = sender_appliance()
    assert queue(appliance, "list").stdout == "the queue is empty\n"


def test_hold_keeps_the_message_from_delivery_and_release_lets_it_go(sender_appliance, net):
    appliance, qid = stuck_message(sender_appliance, net)
    assert queue(appliance, "hold", qid).stdout == f"held {qid}\n"
    assert "(held)" in queue(appliance, "list").stdout

    for sink in list(net.sinks):                          # now the MX would take it ...
        net.stop(sink)
    accepting = net.sink(MX1)
    assert queue(appliance, "flush").stdout == "flushing 0 messages\n"    # ... but a held message waits
    assert not wait_for_quietly(accepting.transactions, 2)

    assert queue(appliance, "release", qid).stdout == f"released {qid}\n"
    assert "Subject: stuck" in one_transaction(accepting)
    wait_for(lambda: queue(appliance, "list").stdout == "the queue is empty\n", 5)


def test_flush_retries_deferred_mail_now(sender_appliance, net):
    appliance, qid = stuck_message(sender_appliance, net)
    for sink in list(net.sinks):
        net.stop(sink)
    accepting = net.sink(MX1)
    assert queue(appliance, "flush").stdout == "flushing 1 message\n"
    assert "Subject: stuck" in one_transaction(accepting)     # long before the 300 s retry


def test_delete_drops_the_message_without_a_bounce(sender_appliance, net):
    appliance, qid = stuck_message(sender_appliance, net)
    assert queue(appliance, "delete", qid).stdout == f"deleted {qid}\n"
    assert queue(appliance, "list").stdout == "the queue is empty\n"
    assert f"removed id={qid} reason=\"deleted by the operator\"" in appliance.log()
    appliance.restart()
    assert queue(appliance, "list").stdout == "the queue is empty\n"       # gone for good
    assert notices(appliance, "failed") == []


def test_unknown_ids_and_missing_ids_are_one_line_errors(sender_appliance, net):
    appliance = sender_appliance()
    for args, error in ((("hold", "NOSUCHID"), "mailappliance: NOSUCHID: no such message in the queue\n"),
                        (("delete",), "mailappliance: queue delete needs a queue id, as `queue list` shows it\n"),
                        (("release", "../x"), "mailappliance: '../x' is not a queue id; `queue list` shows them\n")):
        result = queue(appliance, *args, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", error)


def test_the_control_socket_is_private(sender_appliance, net):
    appliance = sender_appliance()
    mode = os.stat(os.path.join(appliance.root, "var", "control.sock")).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_with_the_daemon_stopped_list_hold_and_delete_work_on_the_spool(sender_appliance, net):
    appliance, qid = stuck_message(sender_appliance, net)
    appliance.stop()

    assert qid in queue(appliance, "list").stdout
    flush = queue(appliance, "flush", check=False)
    assert flush.returncode == 1 and flush.stderr.startswith("mailappliance: the daemon is not running")
    assert queue(appliance, "hold", qid).stdout.startswith(f"held {qid} (the daemon is not running")
    assert "(held)" in queue(appliance, "list").stdout

    for sink in list(net.sinks):
        net.stop(sink)
    accepting = net.sink(MX1)
    appliance.start()                                     # held across the restart: not delivered
    assert not wait_for_quietly(accepting.transactions, 2)
    appliance.stop()
    assert queue(appliance, "delete", qid).stdout.startswith(f"deleted {qid} ")
    assert queue(appliance, "list").stdout == "the queue is empty\n"


def wait_for_quietly(predicate, timeout: float) -> object:
    """Like wait_for, but returns a falsy value at the timeout: for "this must not happen" checks."""
    try:
        return wait_for(predicate, timeout)
    except AssertionError:
        return None


def test_a_damaged_record_hides_nothing_and_is_kept_aside_listed_and_checked(sender_appliance, net):
    net.sink(MX1, *BUSY)
    net.sink(MX2, *BUSY)
    appliance = sender_appliance(queue=SLOW_RETRIES)
    for subject in ("first", "middle", "third"):
        submit(appliance, "dave@example.org", subject=subject)
    wait_for(lambda: appliance.log().count("deferred id=") >= 3, 15)
    ids = re.findall(r"received id=(\w+)", appliance.log())
    appliance.stop()
    segments = os.path.join(appliance.root, "var", "queue", "segments")
    [name] = [n for n in os.listdir(segments) if n.endswith(".log")]
    with open(os.path.join(segments, name), "r+b") as segment:
        data = segment.read()
        segment.seek(data.index(b"Subject: middle") + 9)
        segment.write(b"M")                                   # one damaged byte

    offline = queue(appliance, "list").stdout                   # no daemon
    assert ids[0] in offline and ids[2] in offline and "2 messages" in offline
    assert f"damaged record: {os.path.join(segments, name)} at byte" in offline and f"queue id {ids[1]}?" in offline

    appliance.start()
    wait_for(lambda: "error damaged queue record" in appliance.log(), 10)
    assert re.search(rf"error damaged queue record.* id={ids[1]} kept=corrupt/", appliance.log())
    corrupt = os.path.join(appliance.root, "var", "queue", "corrupt")
    [kept] = wait_for(lambda: os.listdir(corrupt) if os.path.isdir(corrupt) else [], 10)
    listed = queue(appliance, "list").stdout
    assert ids[0] in listed and ids[2] in listed and f"damaged record: {os.path.join(corrupt, kept)}" in listed
    checked = appliance.cli("check").stdout
    assert f"warning: damaged record: {os.path.join(corrupt, kept)}" in checked
