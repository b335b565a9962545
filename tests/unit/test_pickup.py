"""The pickup folder: files written by `sendmail` reach the queue once, are removed only after the put, and
files that cannot be used are set aside, never lost."""
from __future__ import annotations

import os
import stat

from twisted.internet.defer import Deferred, fail, succeed

from appliance import pickup, replies
from appliance.envelope import Recipient
from appliance.errors import DirectoryUnavailable, QueueWriteError
from appliance.intake import Intake
from appliance.replies import SMTPReplyError
from appliance.inline import InlineReactor as FakeReactor, InlinePool as SyncPool


class FakeQueue:
    def __init__(self):
        self.puts = []
        self.next: Deferred | None = None

    def put(self, envelope, message):
        self.puts.append((envelope, message))
        d, self.next = (self.next, None) if self.next is not None else (succeed(None), None)
        return d


class FakeResolver:
    """bob and carol are local users, list@ expands to both, ghost@ is unknown, anything else is remote."""

    def __init__(self):
        self.outage = False

    def is_local(self, addr):
        return addr.endswith("@example.test")

    def resolve(self, rcpt, insider=True):
        assert insider
        if self.outage:
            return fail(DirectoryUnavailable("4.4.3 directory down"))
        if rcpt == "ghost@example.test":
            return fail(SMTPReplyError(replies.UNKNOWN_USER))
        if rcpt == "list@example.test":
            return succeed([Recipient("bob@example.test", original=rcpt), Recipient("carol@example.test", original=rcpt)])
        return succeed([Recipient(rcpt, local=self.is_local(rcpt))])


MESSAGE = b"From: alice@example.test\r\nSubject: cron\r\n\r\nok\r\n"


def service(tmp_path, max_size=10_000):
    folder = str(tmp_path / "pickup")
    reactor, queue, resolver = FakeReactor(), FakeQueue(), FakeResolver()
    intake = Intake(queue, "mail.example.test", resolver, clock=reactor)
    svc = pickup.PickupService(folder, intake, reactor, SyncPool(), max_message_size=max_size)
    svc.startService()
    return svc, folder, reactor, queue, resolver


def names(folder, sub=""):
    return sorted(os.listdir(os.path.join(folder, sub)))


def test_a_message_is_queued_with_its_trace_line_and_its_file_removed(tmp_path):
    svc, folder, reactor, queue, _ = service(tmp_path)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o1733
    pickup.write(folder, "alice@example.test", ["bob@example.test", "zed@elsewhere.test"], MESSAGE)
    reactor.advance(1)
    [(envelope, message)] = queue.puts
    assert envelope.sender == "alice@example.test" and envelope.protocol == "local"
    assert [(r.address, r.local) for r in envelope.recipients] == [("bob@example.test", True),
                                                                   ("zed@elsewhere.test", False)]
    assert message.startswith(b"Received: from local (pickup)\r\n\tby mail.example.test (mailappliance) with local id "
                              + envelope.id.encode())
    assert message.endswith(MESSAGE) and envelope.size == len(message)
    assert names(folder) == ["bad"]


def test_the_file_stays_until_the_put_has_fired(tmp_path):
    svc, folder, reactor, queue, _ = service(tmp_path)
    queue.next = put = Deferred()
    pickup.write(folder, "", ["bob@example.test"], MESSAGE)
    reactor.advance(1)
    assert len(queue.puts) == 1 and len(names(folder)) == 2
    put.callback(None)
    assert names(folder) == ["bad"]


def test_a_failed_put_leaves_the_file_for_the_next_tick(tmp_path):
    svc, folder, reactor, queue, _ = service(tmp_path)
    queue.next = fail(QueueWriteError("disk full"))
    pickup.write(folder, "", ["bob@example.test"], MESSAGE)
    reactor.advance(1)
    assert len(names(folder)) == 2
    reactor.advance(1)
    assert len(queue.puts) == 2 and names(folder) == ["bad"]


def test_a_directory_outage_leaves_the_file(tmp_path):
    svc, folder, reactor, queue, resolver = service(tmp_path)
    resolver.outage = True
    pickup.write(folder, "", ["bob@example.test"], MESSAGE)
    reactor.advance(1)
    assert queue.puts == [] and len(names(folder)) == 2
    resolver.outage = False
    reactor.advance(1)
    assert len(queue.puts) == 1


def test_unknown_local_recipients_bounce_to_the_sender(tmp_path):
    svc, folder, reactor, queue, _ = service(tmp_path)
    pickup.write(folder, "alice@example.test", ["ghost@example.test", "list@example.test"], MESSAGE)
    reactor.advance(1)
    (envelope, _), (dsn, report) = queue.puts
    assert [r.address for r in envelope.recipients] == ["bob@example.test", "carol@example.test"]
    assert dsn.sender == "" and [r.address for r in dsn.recipients] == ["alice@example.test"]
    assert b"Final-Recipient: rfc822; ghost@example.test" in report and b"Status: 5.1.1" in report
    assert names(folder) == ["bad"]


def test_unusable_files_are_set_aside_not_lost(tmp_path):
    svc, folder, reactor, queue, _ = service(tmp_path, max_size=500)
    with open(os.path.join(folder, "1.garbage.msg"), "wb") as f:
        f.write(b"not json\nhello\n")
    pickup.write(folder, "alice@example.test", [], MESSAGE)
    pickup.write(folder, "alice@example.test", ["bob@example.test"], MESSAGE + b"x" * 1000)
    os.symlink("/etc/passwd", os.path.join(folder, "2.link.msg"))
    reactor.advance(1)
    assert queue.puts == []
    assert names(folder) == ["bad"] and len(names(folder, "bad")) == 4
    assert "1.garbage.msg" in names(folder, "bad") and os.path.islink(os.path.join(folder, "bad", "2.link.msg"))


def test_files_being_written_are_left_alone(tmp_path):
    svc, folder, reactor, queue, _ = service(tmp_path)
    with open(os.path.join(folder, ".123.tmp"), "wb") as f:
        f.write(b"half")
    reactor.advance(1)
    assert queue.puts == [] and ".123.tmp" in names(folder)


def test_write_is_atomic_and_the_format_round_trips(tmp_path):
    folder = str(tmp_path)
    path = pickup.write(folder, "alice@example.test", ["bob@example.test"], MESSAGE)
    assert os.listdir(folder) == [os.path.basename(path)] and path.endswith(pickup.SUFFIX)
    assert stat.S_IMODE(os.stat(path).st_mode) == pickup.FILE_MODE
    picked = pickup.read(folder, os.path.basename(path))
    assert pickup.decode(picked.data) == ("alice@example.test", ["bob@example.test"], MESSAGE)


def test_wire_form():
    assert pickup.wire_form(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert pickup.wire_form(b"") == b""
