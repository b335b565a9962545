"""Commands and files named by aliases: real /bin/sh children, exit statuses, time limit, output, environment."""
from __future__ import annotations

import mailbox
import os
import time

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from appliance.couriers.command import CommandCourier, child_credentials, command_environment, run_command
from appliance.envelope import Envelope, Recipient
from appliance.errors import MailboxUnavailable, PermanentFailure, TemporaryFailure
from appliance.inline import InlinePool

MESSAGE = b"Subject: hi\r\n\r\nhello\r\nFrom the start\r\n"
ENV = Envelope(id="Q1", sender="alice@example.org", recipients=[])


def command(cmd: str) -> Recipient:
    return Recipient(address="|" + cmd, original="archive@example.test")


class RunCommandTests(TestCase):
    """run_command itself: what the child sees and what comes back."""

    def run_sh(self, cmd, stdin=b"", **kwargs):
        env = command_environment(ENV, "archive+x@example.test")
        return run_command(reactor, cmd, stdin, env, credentials=child_credentials(), **kwargs)

    async def test_stdin_reaches_the_command_and_its_output_comes_back(self):
        result = await self.run_sh("tr a-z A-Z; echo oops >&2", b"hello\n")
        self.assertEqual((result.status, result.signal, result.timed_out), (0, None, False))
        self.assertEqual(result.output, b"HELLO\noops\n")

    async def test_minimal_environment_and_root_folder(self):
        result = await self.run_sh('env | LC_ALL=C sort; echo "cwd=$(pwd)"')
        self.assertEqual(result.output.decode().splitlines(), [
            "DOMAIN=example.test", "HOME=/", "LOCAL=archive+x", "PATH=/usr/bin:/bin", "PWD=/",
            "RECIPIENT=archive+x@example.test", "SENDER=alice@example.org", "SHELL=/bin/sh", "cwd=/"])

    async def test_output_is_kept_up_to_the_limit_and_the_rest_is_drained(self):
        result = await self.run_sh("head -c 100000 /dev/zero | tr '\\0' x; exit 3", output_limit=4096)
        self.assertEqual((result.status, result.output), (3, b"x" * 4096))

    async def test_time_limit_kills_the_command_and_its_children(self):
        started = time.monotonic()
        result = await self.run_sh("echo started; sleep 30 & sleep 30; echo never", time_limit=0.5)
        self.assertTrue(result.timed_out)
        self.assertEqual(result.output, b"started\n")
        self.assertLess(time.monotonic() - started, 10)

    async def test_runs_unprivileged(self):
        result = await self.run_sh("id -u")
        expected = 65534 if os.geteuid() == 0 else os.geteuid()   # nobody, or our own user
        self.assertEqual(int(result.output), expected)
        self.assertNotEqual(int(result.output), 0)


class CommandCourierTests(TestCase):
    """Exit statuses as the queue sees them: delivered, retried, or bounced with the output."""

    def deliver(self, cmd, **kwargs):
        return CommandCourier(reactor, InlinePool(), **kwargs).deliver(ENV, command(cmd), MESSAGE)

    async def test_exit_0_is_delivered(self):
        self.assertEqual(await self.deliver("cat >/dev/null; exit 0"), "|cat >/dev/null; exit 0")

    async def test_stdin_has_trace_headers_and_lf_line_ends(self):
        # CR shows as ~ and LF as |, so the whole message comes back in the bounce's one line
        with self.assertRaises(PermanentFailure) as caught:
            await self.deliver("tr '\\r\\n' '~|'; exit 1")
        self.assertEqual(str(caught.exception), "5.3.0 command failed with status 1: "
                         "Return-Path: <alice@example.org>|Delivered-To: archive@example.test|"
                         "Subject: hi||hello|From the start|")

    async def test_exit_75_is_temporary(self):
        with self.assertRaises(TemporaryFailure) as caught:
            await self.deliver("echo 'mailbox busy'; exit 75")
        self.assertEqual(str(caught.exception), "4.3.0 command failed with status 75 (try again later): mailbox busy")

    async def test_other_exit_is_permanent_with_the_first_line_of_output(self):
        with self.assertRaises(PermanentFailure) as caught:
            await self.deliver("echo >&2; echo 'no such  folder' >&2; echo second; exit 2")
        self.assertEqual(str(caught.exception), "5.3.0 command failed with status 2: no such folder")
        self.assertFalse(caught.exception.temporary)

    async def test_a_signal_is_permanent(self):
        with self.assertRaises(PermanentFailure) as caught:
            await self.deliver("kill -TERM $$")
        self.assertEqual(str(caught.exception), "5.3.0 command killed by signal 15")

    async def test_timeout_is_temporary(self):
        with self.assertRaises(TemporaryFailure) as caught:
            await self.deliver("sleep 30", time_limit=0.3)
        self.assertEqual(str(caught.exception), "4.3.0 command timed out after 0.3 s")

    async def test_a_missing_program_bounces_with_the_shell_message(self):
        with self.assertRaises(PermanentFailure) as caught:
            await self.deliver("/nonexistent/filter")
        self.assertIn("status 127", str(caught.exception))
        self.assertIn("/nonexistent/filter", str(caught.exception))


class FileTargetTests(TestCase):
    """`/file` targets: an mbox append with the trace headers, by the appliance itself."""

    async def test_appends_in_mbox_format(self):
        path = os.path.join(self.mktemp(), "archive.mbox")
        courier = CommandCourier(reactor, InlinePool())
        recipient = Recipient(address=path, original="archive@example.test")
        self.assertEqual(await courier.deliver(ENV, recipient, MESSAGE), path)
        await courier.deliver(ENV, recipient, b"Subject: two\r\n\r\nsecond\r\n")
        box = mailbox.mbox(path, create=False)
        messages = [box.get_bytes(key) for key in box.iterkeys()]
        box.close()
        self.assertEqual(len(messages), 2)
        self.assertTrue(messages[0].startswith(
            b"Return-Path: <alice@example.org>\nDelivered-To: archive@example.test\n"))
        self.assertIn(b"\n>From the start\n", messages[0])    # quoted by mboxrd, un-quoted by readers: stored form
        with open(path, "rb") as f:
            self.assertTrue(f.read().startswith(b"From alice@example.org "))

    async def test_unwritable_file_is_retried(self):
        folder = self.mktemp()
        os.makedirs(folder)
        courier = CommandCourier(reactor, InlinePool())
        with self.assertRaises(MailboxUnavailable):
            await courier.deliver(ENV, Recipient(address=folder, original="archive@example.test"), MESSAGE)

    async def test_with_a_real_thread_pool(self):
        pool = ThreadPool(minthreads=1, maxthreads=1)
        pool.start()
        self.addCleanup(pool.stop)
        path = os.path.join(self.mktemp(), "box")
        await CommandCourier(reactor, pool).deliver(ENV, Recipient(address=path, original="a@example.test"), MESSAGE)
        self.assertTrue(os.path.getsize(path) > len(MESSAGE))


class OutputCapTests(TestCase):
    """A program's output reaches the bounce as one short line, never at length (defect 9)."""

    async def test_long_output_is_cut_to_a_short_printable_line(self):
        courier = CommandCourier(reactor, InlinePool())
        script = ("printf '\\033[31m'; head -c 20000 /dev/zero | tr '\\0' 'e'; "
                  "printf '\\nsecond line\\n' >&2; exit 1")
        with self.assertRaises(PermanentFailure) as caught:
            await courier.deliver(ENV, command(script), MESSAGE)
        text = str(caught.exception)
        self.assertLessEqual(len(text.encode()), 300)
        self.assertNotIn("\n", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("second line", text)
        self.assertTrue(text.startswith("5.3.0 command failed with status 1: [31meeee"), text)
        self.assertTrue(text.endswith("..."))
