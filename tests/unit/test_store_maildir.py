"""Maildir delivery, the path template, and make_store: real temp dirs, the pool run inline."""
from __future__ import annotations

import errno
import os
import re
import stat

import pytest
from twisted.internet import task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from appliance.config import StorageSection
from appliance.errors import MailboxUnavailable
from appliance.interfaces import IMailStore, UserRecord
from appliance.store import make_store, mailbox_path, maildir
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore

WIRE = b"Return-Path: <a@example.org>\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"
ALICE = UserRecord(address="Alice@Example.COM")


class InlineReactor:
    """Enough of a reactor for deferToThreadPool: results are delivered at once."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def callLater(self, delay, f, *args, **kwargs):
        f(*args, **kwargs)


class InlinePool:
    """A thread pool that runs the work in the caller, so Deferreds fire synchronously."""

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


def only_file(directory: str) -> str:
    names = os.listdir(directory)
    assert len(names) == 1, names
    return os.path.join(directory, names[0])


# --- mailbox_path ---------------------------------------------------------------------------------

def test_template_is_filled_lower_cased():
    assert mailbox_path("/var/mail/{domain}/{local}/Maildir", "Alice@Example.COM") == \
        "/var/mail/example.com/alice/Maildir"


def test_template_placeholders_are_filled_once_only():
    """A part that itself reads like a placeholder is not expanded again."""
    assert mailbox_path("/m/{local}/{domain}", "{domain}@example.com") == "/m/{domain}/example.com"


@pytest.mark.parametrize("address", [
    "../etc@example.com", "..@example.com", ".hidden@example.com", "a/b@example.com",
    "a\\b@example.com", "a\0b@example.com", "alice@ex/ample.com", "alice@..", "alice@.example.com",
    "alice@ex\\ample.com",
])
def test_template_refuses_parts_that_escape_the_tree(address):
    with pytest.raises(ValueError):
        mailbox_path("/var/mail/{domain}/{local}", address)


# --- maildir.write --------------------------------------------------------------------------------

def test_message_lands_in_new_with_lf_line_ends(tmp_path):
    box = str(tmp_path / "box")
    written = maildir.write(box, WIRE)
    assert os.path.dirname(written) == os.path.join(box, "new")
    with open(written, "rb") as f:
        assert f.read() == WIRE.replace(b"\r\n", b"\n")
    assert os.listdir(os.path.join(box, "tmp")) == []
    assert os.path.isdir(os.path.join(box, "cur"))


def test_size_in_name_is_the_size_on_disk(tmp_path):
    written = maildir.write(str(tmp_path), WIRE)
    size = int(re.search(r",S=(\d+)$", written).group(1))
    assert size == os.path.getsize(written) == len(WIRE) - WIRE.count(b"\r\n")


def test_name_follows_the_maildir_convention(tmp_path):
    name = os.path.basename(maildir.write(str(tmp_path), WIRE))
    assert re.fullmatch(rf"\d+\.M\d+P{os.getpid()}Q\d+\.[^/:]+,S=\d+", name)


def test_hostname_slash_and_colon_are_escaped(monkeypatch, tmp_path):
    monkeypatch.setattr(maildir.socket, "gethostname", lambda: "odd/host:name")
    monkeypatch.setattr(maildir, "_HOST", maildir._hostname())
    name = os.path.basename(maildir.write(str(tmp_path), WIRE))
    assert r".odd\057host\072name,S=" in name


def test_thousand_quick_deliveries_get_distinct_files(tmp_path):
    for n in range(1000):
        maildir.write(str(tmp_path), b"Subject: %d\r\n\r\nx\r\n" % n)
    assert len(os.listdir(tmp_path / "new")) == 1000
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("message", [b"", b"Subject: x\r\n\r\nno newline at the end"])
def test_empty_or_unterminated_message_is_stored_as_is(tmp_path, message):
    written = maildir.write(str(tmp_path), message)
    on_disk = message.replace(b"\r\n", b"\n")
    with open(written, "rb") as f:
        assert f.read() == on_disk
    assert written.endswith(f",S={len(on_disk)}")


def test_missing_directories_are_created_private(tmp_path):
    box = tmp_path / "example.com" / "alice"
    maildir.write(str(box), WIRE)
    for directory in (tmp_path / "example.com", box, box / "cur", box / "new", box / "tmp"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    written = only_file(str(box / "new"))
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600


def test_new_being_a_file_is_mailbox_unavailable(tmp_path):
    (tmp_path / "cur").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").write_bytes(b"")
    with pytest.raises(MailboxUnavailable):
        maildir.write(str(tmp_path), WIRE)
    assert os.listdir(tmp_path / "tmp") == []


def test_mailbox_path_being_a_file_is_mailbox_unavailable(tmp_path):
    (tmp_path / "box").write_bytes(b"not a maildir")
    with pytest.raises(MailboxUnavailable):
        maildir.write(str(tmp_path / "box"), WIRE)
    assert (tmp_path / "box").read_bytes() == b"not a maildir"


@pytest.mark.parametrize("step, code", [("write", errno.EIO), ("rename", errno.ENOSPC)])
def test_failed_step_leaves_nothing_behind(monkeypatch, tmp_path, step, code):
    """A failed synchronous write (with O_DSYNC a disk error shows there) or rename: the message
    is refused, not kept."""
    def broken(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(maildir.os, step, broken)
    with pytest.raises(MailboxUnavailable, match=errno.errorcode[code]):
        maildir.write(str(tmp_path), WIRE)
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


def test_message_data_is_on_disk_before_its_name_appears_in_new(monkeypatch, tmp_path):
    """The tmp file is written with O_DSYNC (each write returns once the data is on disk), and
    only then renamed into new/: a power cut never leaves a name in new/ over missing data."""
    steps = []
    real_open, real_rename = maildir.os.open, maildir.os.rename

    def spy_open(path, flags, *args):
        if os.path.basename(os.path.dirname(path)) == "tmp":
            steps.append(("open", bool(flags & os.O_DSYNC)))
        return real_open(path, flags, *args)

    def spy_rename(src, dst):
        steps.append(("rename", os.path.getsize(src)))
        return real_rename(src, dst)

    maildir.write(str(tmp_path), WIRE)      # the first delivery makes the folders
    monkeypatch.setattr(maildir.os, "open", spy_open)
    monkeypatch.setattr(maildir.os, "rename", spy_rename)
    maildir.write(str(tmp_path), WIRE)
    assert steps == [("open", True), ("rename", len(WIRE.replace(b"\r\n", b"\n")))]


def test_failed_directory_fsync_takes_the_message_back(monkeypatch, tmp_path):
    """A message that may not survive a crash is not kept: the retry would make it a duplicate."""
    def brokenfsync_dir(path):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(maildir, "fsync_dir", brokenfsync_dir)
    with pytest.raises(MailboxUnavailable, match="EIO"):
        maildir.write(str(tmp_path), WIRE)
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []


# --- MaildirStore and make_store ------------------------------------------------------------------

class MaildirStoreTests(SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.store = MaildirStore(self.root + "/{domain}/{local}", InlineReactor(), InlinePool())

    def test_path_for_uses_the_primary_address(self):
        self.assertEqual(self.store.path_for(ALICE), self.root + "/example.com/alice")

    def test_deliver_fires_with_the_file_written(self):
        written = self.successResultOf(self.store.deliver(ALICE, WIRE, "a@example.org"))
        self.assertEqual(only_file(self.root + "/example.com/alice/new"), written)

    def test_deliveries_in_one_turn_share_one_folder_sync(self):
        reactor = task.Clock()
        reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)
        store = MaildirStore(self.root + "/{domain}/{local}", reactor, InlinePool())
        synced = []
        real = maildir.fsync_dir
        self.patch(maildir, "fsync_dir", lambda path: (synced.append(path), real(path)))
        results = [store.deliver(ALICE, WIRE + b"%d\r\n" % i, "") for i in range(5)]
        self.assertEqual(synced, [])
        reactor.advance(0)
        self.assertEqual(len({self.successResultOf(d) for d in results}), 5)
        self.assertEqual(synced, [self.root + "/example.com/alice/new"])

    def test_deliver_failure_is_mailbox_unavailable(self):
        os.makedirs(self.root + "/example.com")
        with open(self.root + "/example.com/alice", "wb"):
            pass
        self.failureResultOf(self.store.deliver(ALICE, WIRE, ""), MailboxUnavailable)

    def test_unsafe_address_is_refused_without_writing(self):
        user = UserRecord(address="../../etc@example.com")
        self.failureResultOf(self.store.deliver(user, WIRE, ""), MailboxUnavailable)
        self.assertFalse(os.path.exists(self.root))


@pytest.mark.parametrize("fmt, cls", [("maildir", MaildirStore), ("mbox", MboxStore)])
def test_make_store_picks_the_format(fmt, cls):
    store = make_store(StorageSection(format=fmt, path="/m/{domain}/{local}"), InlineReactor(), InlinePool())
    assert isinstance(store, cls) and IMailStore.providedBy(store)
    assert store.path_for(ALICE) == "/m/example.com/alice"


def test_make_store_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="mh"):
        make_store(StorageSection(format="mh", path="/m/{local}"), InlineReactor(), InlinePool())
