"""One reactor turn's deliveries spread over the disk pool: a real ThreadPool, real temp dirs.

Each test's writes wait at a barrier (or count who is inside at once): a store that wrote the
turn's deliveries one after another would break the barrier instead of passing it.
"""
from __future__ import annotations

import threading
import time

from twisted.internet import task
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from appliance.interfaces import UserRecord
from appliance.store import maildir
from appliance.store.base import FileStore
from appliance.store.maildir import MaildirAccount, MaildirStore

WIRE = b"Subject: hi\r\n\r\nbody\r\n"
USERS = [UserRecord(address=f"user{i}@example.com") for i in range(4)]


class Clock(task.Clock):
    """The turn is advanced by hand; results come back from the worker threads directly."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class SerialStore(FileStore):
    """A format that needs one writer per mailbox (like mbox); `write` is replaced per test."""

    account_class = MaildirAccount      # only asked which folders are open (none)

    def write(self, path: str, message: bytes, sender: str) -> str:
        return self.writer(path, message)


def run_turn(store, users: list[UserRecord], clock: Clock, pool: ThreadPool) -> list:
    """Deliver one message per entry of `users` in one turn; wait for the pool; the outcomes."""
    results = [store.deliver(user, WIRE + b"%d\r\n" % i, "") for i, user in enumerate(users)]
    clock.advance(0)
    pool.stop()                        # joins the workers: every job has finished
    outcomes = []
    for d in results:
        d.addBoth(outcomes.append)
    return outcomes


class SpreadOverThePool(SynchronousTestCase):
    def setUp(self):
        self.pool = ThreadPool(4, 4, name="test-disk")
        self.pool.start()
        self.addCleanup(lambda: self.pool.joined or self.pool.stop())
        self.clock = Clock()

    def test_different_mailboxes_are_written_at_once(self):
        barrier = threading.Barrier(4, timeout=10)
        store = SerialStore(self.mktemp() + "/{local}", self.clock, self.pool)
        store.writer = lambda path, message: (barrier.wait(), path)[1]
        outcomes = run_turn(store, USERS, self.clock, self.pool)
        self.assertEqual(outcomes, [store.path_for(user) for user in USERS])

    def test_one_mailbox_of_a_serial_format_is_written_one_at_a_time(self):
        inside, most = [0], [0]
        lock = threading.Lock()

        def write(path, message):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1
            return path

        store = SerialStore(self.mktemp() + "/{local}", self.clock, self.pool)
        store.writer = write
        outcomes = run_turn(store, [USERS[0]] * 4 + [USERS[1]] * 4, self.clock, self.pool)
        self.assertEqual(len(outcomes), 8)
        self.assertEqual(most[0], 2)          # the two mailboxes in parallel, never one twice

    def test_one_maildir_gets_its_messages_written_at_once(self):
        barrier = threading.Barrier(4, timeout=10)
        real = maildir._write_file
        self.patch(maildir, "_write_file", lambda path, data: (barrier.wait(), real(path, data)))
        root = self.mktemp()
        maildir._create(root + "/user0")      # so every write waits at the barrier exactly once
        store = MaildirStore(root + "/{local}", self.clock, self.pool)
        outcomes = run_turn(store, [USERS[0]] * 8, self.clock, self.pool)
        self.assertEqual(len(set(map(str, outcomes))), 8, outcomes)
        self.assertTrue(all(isinstance(o, str) and "/new/" in o for o in outcomes), outcomes)
        self.assertEqual(sorted(maildir_contents(root + "/user0")), sorted(WIRE.replace(b"\r\n", b"\n") + b"%d\n" % i
                                                                        for i in range(8)))


def maildir_contents(path: str) -> list[bytes]:
    import os
    folder = os.path.join(path, "new")
    found = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            found.append(f.read())
    return found


class FolderNews(SynchronousTestCase):
    """A delivery tells the reactor (to rescan) only about folders some session has open."""

    def test_no_hand_off_for_a_folder_nobody_has_open_and_one_for_an_open_folder(self):
        from appliance.inline import InlinePool
        told = []
        clock = Clock()
        root = self.mktemp()
        store = MaildirStore(root + "/{local}", clock, InlinePool())
        self.patch(store, "_tell_folders", told.append)
        store.deliver(USERS[0], WIRE, "")
        clock.advance(0)
        self.assertEqual(told, [])
        account = store.account(root + "/user0")
        inbox = account.folder("INBOX")                 # a session's open folder
        store.deliver(USERS[0], WIRE, "")
        clock.advance(0)
        self.assertEqual(told, [[root + "/user0"]])
        del inbox


class WaitForAWriter(SynchronousTestCase):
    """Deliveries that arrive while every writer is busy wait, and go together in the next job."""

    def test_deliveries_made_while_the_writers_are_busy_share_the_next_job(self):
        from appliance.jobthreads import JobThreads
        writers = JobThreads("test-delivery", 1)
        self.addCleanup(lambda: [t.join(10) for t in writers.stop()])
        clock = Clock()
        release, started = threading.Event(), threading.Event()
        batches: list[int] = []
        store = SerialStore(self.mktemp() + "/{local}", clock, None, writers)
        store.serial_mailbox = False

        def write_batch(items):
            batches.append(len(items))
            started.set()
            release.wait(10)
            return [path for path, _, _ in items]

        store.write_batch = write_batch
        first = store.deliver(USERS[0], WIRE, "")
        clock.advance(0)                         # the one writer takes the first message, and waits
        self.assertTrue(started.wait(10))
        later = []
        for user in USERS[1:]:                   # three more turns, one delivery each
            later.append(store.deliver(user, WIRE, ""))
            clock.advance(0)                     # no writer free: it waits in the store
        self.assertEqual(batches, [1])
        outcomes: list = []
        for d in [first, *later]:
            d.addBoth(outcomes.append)
        release.set()
        deadline = time.monotonic() + 10
        while len(outcomes) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(batches, [1, 3])        # the three waiting went in one job, not three
        self.assertEqual(outcomes, [store.path_for(user) for user in USERS])
