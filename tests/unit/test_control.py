"""The control socket's protocol: one command line in, one OK/ERR line out, then the connection closes."""
from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport

from appliance import control


class FakeQueue:
    def __init__(self, known=("ABC123",)):
        self.known = set(known)
        self.calls: list[tuple[str, str]] = []
        self.pending: Deferred | None = None

    def flush(self) -> int:
        self.calls.append(("flush", ""))
        return 3

    def _act(self, verb: str, qid: str):
        if qid not in self.known:
            raise KeyError(qid)
        self.calls.append((verb, qid))
        return self.pending if self.pending is not None else succeed(None)

    def delete(self, qid):
        if qid not in self.known:
            raise KeyError(qid)
        self.calls.append(("delete", qid))

    def hold(self, qid):
        return self._act("hold", qid)

    def release(self, qid):
        return self._act("release", qid)


def session(queue, line: bytes) -> tuple[bytes, bool]:
    factory = Factory.forProtocol(control.ControlProtocol)
    factory.commands = control.QueueCommands(queue)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(line)
    return transport.value(), transport.disconnecting


def test_each_command_gets_its_answer_and_the_connection_closes():
    queue = FakeQueue()
    for line, reply in ((b"flush\n", b"OK flushing 3 messages\n"), (b"hold ABC123\n", b"OK held ABC123\n"),
                        (b"release ABC123\r\n", b"OK released ABC123\n"), (b"delete ABC123\n", b"OK deleted ABC123\n")):
        assert session(queue, line) == (reply, True)
    assert queue.calls == [("flush", ""), ("hold", "ABC123"), ("release", "ABC123"), ("delete", "ABC123")]


def test_the_answer_waits_until_the_change_is_on_disk():
    queue = FakeQueue()
    queue.pending = Deferred()
    factory = Factory.forProtocol(control.ControlProtocol)
    factory.commands = control.QueueCommands(queue)
    protocol, transport = factory.buildProtocol(None), StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"hold ABC123\n")
    assert transport.value() == b""
    queue.pending.callback(None)
    assert transport.value() == b"OK held ABC123\n"


def test_refusals_are_one_err_line():
    queue = FakeQueue()
    for line, reply in ((b"hold NOPE\n", b"ERR NOPE: no such message in the queue\n"),
                        (b"hold\n", b"ERR hold needs a queue id (as `queue list` shows it)\n"),
                        (b"hold ../../etc\n", b"ERR hold needs a queue id (as `queue list` shows it)\n"),
                        (b"reboot\n", b"ERR unknown command 'reboot'\n"),
                        (b"flush now\n", b"ERR unknown command 'flush now'\n"),
                        (b"\xff\xfe\n", b"ERR unknown command '\xef\xbf\xbd\xef\xbf\xbd'\n"),
                        (b"x" * 600 + b"\n", b"ERR command too long\n")):
        assert session(queue, line) == (reply, True), line
    assert queue.calls == []


def test_an_internal_error_is_reported_without_details():
    class Broken(FakeQueue):
        def flush(self):
            raise RuntimeError("secret internals")
    reply, closed = session(Broken(), b"flush\n")
    assert (reply, closed) == (b"ERR the command failed; the daemon's log says why\n", True)


def test_only_the_first_line_counts():
    queue = FakeQueue()
    reply, _ = session(queue, b"hold ABC123\nflush\n")
    assert reply == b"OK held ABC123\n" and queue.calls == [("hold", "ABC123")]


def test_valid_ids():
    assert control.valid_id("6C3N0E4H4WCKXP001")
    assert not any(control.valid_id(q) for q in ("", "../x", "a b", "é", "x" * 65))


# --- the control socket's lock: flock, which dies with its process (defect 13) ----------------------

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from twisted.internet import reactor as global_reactor  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402


def unreaped_dead_child() -> subprocess.Popen:
    """A child that has exited but is not reaped yet (a zombie still has its pid), as right after kill -9."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return child
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


class ControlLockTests(TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ctl", dir="/tmp")     # short: UNIX socket paths are limited
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, control.SOCKET_NAME)

    def service(self):
        svc = control.ControlService(self.path, FakeQueue(), global_reactor)
        svc.startService()
        self.addCleanup(lambda: svc.running and svc.stopService())
        return svc

    async def test_what_a_killed_unreaped_daemon_left_does_not_block_start(self):
        zombie = unreaped_dead_child()
        self.addCleanup(zombie.wait)
        os.symlink(str(zombie.pid), self.path + ".lock")     # the pid link of the version before
        with open(self.path + ".flock", "w"):                # our lock file, its process gone
            pass
        with open(self.path, "w"):                           # the socket file a crash leaves
            pass
        svc = self.service()
        self.assertEqual(await deferToThread(control.ask, self.path, "flush", 5), (True, "flushing 3 messages"))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        await svc.stopService()

    async def test_a_second_live_instance_is_refused(self):
        first = self.service()
        with self.assertRaises(control.SocketInUse):
            control.ControlService(self.path, FakeQueue(), global_reactor).startService()
        self.assertEqual(await deferToThread(control.ask, self.path, "flush", 5), (True, "flushing 3 messages"))
        await first.stopService()
        second = self.service()                              # the lock went with the first one
        self.assertEqual(await deferToThread(control.ask, self.path, "flush", 5), (True, "flushing 3 messages"))
        await second.stopService()
