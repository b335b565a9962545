"""mbox (mboxrd) delivery: From_ lines, quoting, locking and roll-back, on real temp files."""
from __future__ import annotations

import errno
import mailbox
import os
import re
import stat
import subprocess
import sys
import time

import pytest
from twisted.trial.unittest import SynchronousTestCase

from appliance.errors import MailboxUnavailable
from appliance.interfaces import UserRecord
from appliance.store import mbox
from appliance.store.mbox import MboxStore
from tests.unit.test_store_maildir import InlinePool, InlineReactor

NOW = 1704067200.0  # Mon Jan  1 00:00:00 2024 UTC
FIRST = b"Return-Path: <a@example.org>\r\nSubject: one\r\n\r\nFrom the start\r\n>From quoted\r\nbye\r\n"
SECOND = b"Return-Path: <>\r\nSubject: two\r\n\r\n>>From deep\r\nsaid From here\r\n From indented\r\n"


def unquote_mboxrd(data: bytes) -> bytes:
    """What an mboxrd reader does; Python's mailbox module itself does not unquote."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- the entry format -----------------------------------------------------------------------------

def test_entry_starts_with_a_from_line_in_utc_asctime():
    assert mbox.entry(b"x\r\n", "a@example.org", NOW).startswith(b"From a@example.org Mon Jan  1 00:00:00 2024\n")


def test_null_sender_is_mailer_daemon():
    assert mbox.entry(b"x\r\n", "", NOW).startswith(b"From MAILER-DAEMON Mon Jan  1 00:00:00 2024\n")


def test_whitespace_in_the_sender_cannot_break_the_from_line():
    line = mbox.entry(b"x\r\n", '"a b"\r\n@example.org', NOW).split(b"\n")[0]
    assert line == b'From "a_b"_@example.org Mon Jan  1 00:00:00 2024'


def test_from_lines_get_one_more_quote_mboxrd():
    body = mbox.entry(FIRST + SECOND, "a@example.org", NOW).split(b"\n")[1:]
    assert b">From the start" in body
    assert b">>From quoted" in body
    assert b">>>From deep" in body
    assert b"said From here" in body and b" From indented" in body


def test_entry_uses_lf_and_ends_with_a_blank_line():
    data = mbox.entry(FIRST, "a@example.org", NOW)
    assert b"\r" not in data
    assert data.endswith(b"bye\n\n")


@pytest.mark.parametrize("message, ending", [(b"", b"2024\n\n"), (b"Subject: x\r\n\r\nno newline", b"no newline\n\n")])
def test_empty_or_unterminated_message_still_ends_cleanly(message, ending):
    assert mbox.entry(message, "a@example.org", NOW).endswith(ending)


# --- append ---------------------------------------------------------------------------------------

def test_two_messages_parse_back_to_the_same_bodies(tmp_path):
    path = str(tmp_path / "alice")
    assert mbox.append(path, FIRST, "a@example.org", NOW) == path
    mbox.append(path, SECOND, "", NOW)
    box = mailbox.mbox(path, create=False)
    try:
        keys = box.keys()
        assert [unquote_mboxrd(box.get_bytes(k)) for k in keys] == \
            [FIRST.replace(b"\r\n", b"\n"), SECOND.replace(b"\r\n", b"\n")]
        assert [box.get_message(k).get_from() for k in keys] == \
            ["a@example.org Mon Jan  1 00:00:00 2024", "MAILER-DAEMON Mon Jan  1 00:00:00 2024"]
    finally:
        box.close()


def test_empty_and_unterminated_messages_parse_back(tmp_path):
    """Each still ends with a blank line, so the message after it is not swallowed."""
    path = str(tmp_path / "alice")
    for message in (b"", b"Subject: x\r\n\r\nno newline", FIRST):
        mbox.append(path, message, "a@example.org", NOW)
    box = mailbox.mbox(path, create=False)
    try:
        assert [unquote_mboxrd(box.get_bytes(k)) for k in box.keys()] == \
            [b"", b"Subject: x\n\nno newline\n", FIRST.replace(b"\r\n", b"\n")]
    finally:
        box.close()


def test_new_file_is_private_and_parents_are_created(tmp_path):
    path = tmp_path / "example.com" / "alice"
    mbox.append(str(path), FIRST, "a@example.org", NOW)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert not os.path.exists(str(path) + ".lock")


def test_path_that_is_a_directory_is_mailbox_unavailable(tmp_path):
    with pytest.raises(MailboxUnavailable, match="EISDIR"):
        mbox.append(str(tmp_path), FIRST, "", NOW)


def test_failed_write_truncates_back_to_the_old_size(monkeypatch, tmp_path):
    path = str(tmp_path / "alice")
    mbox.append(path, FIRST, "a@example.org", NOW)
    before = read(path)
    real_write, calls = os.write, []

    def disk_fills_halfway(fd, data):
        if len(data) < 32:          # the dot-lock's pid line
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_fills_halfway)
    with pytest.raises(MailboxUnavailable, match="ENOSPC"):
        mbox.append(path, SECOND, "", NOW)
    monkeypatch.undo()
    assert len(calls) == 2          # half of the message really reached the file before the failure
    assert read(path) == before
    assert not os.path.exists(path + ".lock")


def test_failed_fsync_truncates_back(monkeypatch, tmp_path):
    path = str(tmp_path / "alice")
    mbox.append(path, FIRST, "a@example.org", NOW)
    before = read(path)

    def broken_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(MailboxUnavailable, match="EIO"):
        mbox.append(path, SECOND, "", NOW)
    assert read(path) == before


def test_stale_dot_lock_is_stolen(tmp_path):
    path = str(tmp_path / "alice")
    with open(path + ".lock", "w") as f:
        f.write("99999\n")
    old = time.time() - mbox.STALE_LOCK_AGE - 60
    os.utime(path + ".lock", (old, old))
    mbox.append(path, FIRST, "a@example.org", NOW)
    assert read(path).startswith(b"From a@example.org ")
    assert not os.path.exists(path + ".lock")


def test_fresh_dot_lock_is_waited_for(monkeypatch, tmp_path):
    """The delivery sleeps (in its worker thread) and goes ahead once the holder lets go."""
    path = str(tmp_path / "alice")
    open(path + ".lock", "w").close()
    naps = []

    def holder_finishes(seconds):
        naps.append(seconds)
        os.unlink(path + ".lock")

    monkeypatch.setattr(time, "sleep", holder_finishes)
    mbox.append(path, FIRST, "a@example.org", NOW)
    assert naps == [mbox.LOCK_POLL]
    assert read(path).startswith(b"From a@example.org ")


def test_fcntl_lock_held_by_another_process_is_mailbox_unavailable(monkeypatch, tmp_path):
    path = str(tmp_path / "alice")
    mbox.append(path, FIRST, "a@example.org", NOW)
    before = read(path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys; f = open(sys.argv[1], 'ab'); fcntl.lockf(f, fcntl.LOCK_EX);"
         " print('locked', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        monkeypatch.setattr(mbox, "LOCK_TIMEOUT", 0)
        with pytest.raises(MailboxUnavailable, match="locked"):
            mbox.append(path, SECOND, "", NOW)
    finally:
        holder.stdin.close()
        holder.wait()
    assert read(path) == before
    assert not os.path.exists(path + ".lock")


class MboxStoreTests(SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.store = MboxStore(self.root + "/{domain}/{local}", InlineReactor(), InlinePool())
        self.user = UserRecord(address="alice@example.com")
        self.path = self.root + "/example.com/alice"

    def test_deliver_fires_with_the_mbox_path(self):
        self.assertEqual(self.successResultOf(self.store.deliver(self.user, FIRST, "a@example.org")), self.path)
        self.assertTrue(read(self.path).startswith(b"From a@example.org "))

    def test_fresh_dot_lock_makes_deliver_fail_after_the_timeout(self):
        os.makedirs(self.root + "/example.com")
        open(self.path + ".lock", "w").close()
        self.patch(mbox, "LOCK_TIMEOUT", 0)
        failure = self.failureResultOf(self.store.deliver(self.user, FIRST, ""), MailboxUnavailable)
        self.assertIn("locked", str(failure.value))
        self.assertFalse(os.path.exists(self.path))          # nothing written
        self.assertTrue(os.path.exists(self.path + ".lock"))  # and someone else's lock left alone


def test_dot_lock_of_a_dead_process_is_taken_at_once(tmp_path, monkeypatch):
    """After kill -9 the lock file stays behind; the next delivery must not wait for it to age."""
    import subprocess
    child = subprocess.Popen(["true"])
    child.wait()
    path = str(tmp_path / "mbox")
    with open(path + ".lock", "w") as f:
        f.write(f"{child.pid}\n")
    monkeypatch.setattr(mbox, "LOCK_TIMEOUT", 0.5)
    mbox.append(path, b"Subject: x\r\n\r\nbody\r\n", "a@b.test")
    assert not os.path.exists(path + ".lock")
    assert b"body" in open(path, "rb").read()


def test_a_lock_left_empty_by_a_kill_is_taken_after_a_short_wait(tmp_path, monkeypatch):
    path = str(tmp_path / "mbox")
    open(path + ".lock", "w").close()
    old = time.time() - mbox.EMPTY_LOCK_AGE - 1
    os.utime(path + ".lock", (old, old))
    monkeypatch.setattr(mbox, "LOCK_TIMEOUT", 0.5)
    mbox.append(path, b"Subject: x\r\n\r\nbody\r\n", "a@b.test")
    assert not os.path.exists(path + ".lock")


def test_our_dot_lock_always_holds_our_pid(tmp_path):
    lock = str(tmp_path / "mbox.lock")
    assert mbox._try_dot_lock(lock)
    assert open(lock).read() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == ["mbox.lock"]
