"""The POP3 read side on real Maildir and mbox files: UIDL stability, exact sizes, deletions, the mbox rewrite."""
from __future__ import annotations

import os

import pytest
from twisted.python.failure import Failure

from appliance.maildrop import (MaildirFormat, MaildropLocks, MboxFormat, MessageGone, NoSuchMessage, SIZE_CACHE,
                                open_maildrop, to_wire, wire_size)
from appliance.errors import MailboxUnavailable
from appliance.store import maildir, mbox
from appliance.inline import InlineReactor as SyncReactor, InlinePool as SyncPool

HELLO = b"From: a@example.test\r\nSubject: hello\r\n\r\nHello.\r\n"
TRICKY = b"Subject: quoting\r\n\r\nFrom here on\r\n>From there\r\n.starts with a dot\r\nlast"


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def wire_messages(fmt, path):
    return [fmt.read(path, entry) for entry in fmt.scan(path)]


# ---- wire form -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"a\nb\n", b"a\r\nb\r\n", b"mixed\r\nends\nhere", b"cr\r\r\nx", b"\n\n"])
def test_wire_size_is_the_length_of_the_crlf_form(data):
    assert wire_size(data) == len(to_wire(data))
    assert b"\n" not in to_wire(data).replace(b"\r\n", b"")


# ---- Maildir -----------------------------------------------------------------------------------
@pytest.fixture
def maildir_path(tmp_path):
    path = str(tmp_path / "alice")
    maildir.write(path, HELLO)
    maildir.write(path, TRICKY)
    return path


def test_maildir_messages_come_back_in_delivery_order_with_crlf(maildir_path):
    assert wire_messages(MaildirFormat(), maildir_path) == [HELLO, TRICKY]


def test_maildir_sizes_are_exact_octet_counts_of_what_retr_sends(maildir_path):
    fmt = MaildirFormat()
    for entry in fmt.scan(maildir_path):
        assert entry.size == len(fmt.read(maildir_path, entry))


def test_maildir_uidl_survives_reopen_move_to_cur_and_flags(maildir_path):
    fmt = MaildirFormat()
    before = [entry.uid for entry in fmt.scan(maildir_path)]
    name = os.listdir(os.path.join(maildir_path, "new"))[0]
    os.rename(os.path.join(maildir_path, "new", name), os.path.join(maildir_path, "cur", name + ":2,S"))
    after = [entry.uid for entry in fmt.scan(maildir_path)]
    assert sorted(after) == sorted(before)
    assert len(set(before)) == 2
    for uid in before:
        assert 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)


def test_maildir_long_names_get_a_valid_uid(tmp_path):
    path = tmp_path / "box"
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True)
    (path / "new" / ("1700000000.M1P1Q1." + "h" * 90)).write_bytes(HELLO)
    uid = MaildirFormat().scan(str(path))[0].uid
    assert len(uid) <= 70
    assert MaildirFormat().scan(str(path))[0].uid == uid


def test_maildir_sizes_are_cached_and_stale_entries_dropped(maildir_path):
    fmt = MaildirFormat()
    entries = fmt.scan(maildir_path)
    cache = open(os.path.join(maildir_path, SIZE_CACHE)).read().split("\n")
    assert sorted(line for line in cache if line) == sorted(f"{e.uid} {e.size}" for e in entries)
    fmt.expunge(maildir_path, entries[:1])
    fmt.scan(maildir_path)
    assert entries[0].uid not in open(os.path.join(maildir_path, SIZE_CACHE)).read()


def test_maildir_expunge_unlinks_even_a_file_renamed_since_login(maildir_path):
    fmt = MaildirFormat()
    first, second = fmt.scan(maildir_path)
    sub, name = first.where
    os.rename(os.path.join(maildir_path, sub, name), os.path.join(maildir_path, "cur", name + ":2,S"))
    assert fmt.read(maildir_path, first) == HELLO
    fmt.expunge(maildir_path, [first])
    assert wire_messages(fmt, maildir_path) == [TRICKY]


def test_maildir_message_removed_by_someone_else_is_gone(maildir_path):
    fmt = MaildirFormat()
    first = fmt.scan(maildir_path)[0]
    os.unlink(os.path.join(maildir_path, *first.where))
    with pytest.raises(MessageGone):
        fmt.read(maildir_path, first)
    fmt.expunge(maildir_path, [first])      # already gone: nothing to do, no error


def test_missing_maildir_is_an_empty_maildrop(tmp_path):
    assert MaildirFormat().scan(str(tmp_path / "nobody")) == []


# ---- mbox -----------------------------------------------------------------------------------------
@pytest.fixture
def mbox_path(tmp_path):
    path = str(tmp_path / "alice")
    mbox.append(path, HELLO, "a@example.test", now=1_700_000_000)
    mbox.append(path, TRICKY, "b@example.test", now=1_700_000_001)
    return path


def test_mbox_messages_come_back_unquoted_with_crlf(mbox_path):
    assert wire_messages(MboxFormat(), mbox_path) == [HELLO, TRICKY + b"\r\n"]


def test_mbox_sizes_are_exact_octet_counts_of_what_retr_sends(mbox_path):
    fmt = MboxFormat()
    for entry in fmt.scan(mbox_path):
        assert entry.size == len(fmt.read(mbox_path, entry))


def test_mbox_uidl_stable_across_reopen_and_unique_for_duplicates(tmp_path):
    path = str(tmp_path / "alice")
    for _ in range(2):
        mbox.append(path, HELLO, "a@example.test", now=1_700_000_000)
    fmt = MboxFormat()
    uids = [entry.uid for entry in fmt.scan(path)]
    assert len(set(uids)) == 2
    assert [entry.uid for entry in fmt.scan(path)] == uids
    assert all(len(uid) <= 70 for uid in uids)


def test_mbox_expunge_keeps_mail_appended_during_the_session(mbox_path):
    fmt = MboxFormat()
    first, _ = fmt.scan(mbox_path)
    mbox.append(mbox_path, b"Subject: late\r\n\r\nArrived during the session.\r\n", "c@example.test")
    fmt.expunge(mbox_path, [first])
    remaining = wire_messages(fmt, mbox_path)
    assert remaining == [TRICKY + b"\r\n", b"Subject: late\r\n\r\nArrived during the session.\r\n"]
    assert not os.path.exists(mbox_path + ".lock")
    assert os.stat(mbox_path).st_mode & 0o777 == 0o600


def test_mbox_uids_of_kept_messages_do_not_change_after_a_rewrite(mbox_path):
    fmt = MboxFormat()
    first, second = fmt.scan(mbox_path)
    fmt.expunge(mbox_path, [first])
    assert [entry.uid for entry in fmt.scan(mbox_path)] == [second.uid]


def test_mbox_rewritten_by_another_program_never_serves_the_wrong_message(mbox_path):
    fmt = MboxFormat()
    first, second = fmt.scan(mbox_path)
    fmt.expunge(mbox_path, [first])            # as another session or program would
    with pytest.raises(MessageGone):
        fmt.read(mbox_path, second)


def test_mbox_delete_everything_leaves_an_empty_file(mbox_path):
    fmt = MboxFormat()
    fmt.expunge(mbox_path, fmt.scan(mbox_path))
    assert os.path.getsize(mbox_path) == 0
    assert fmt.scan(mbox_path) == []


def test_missing_mbox_is_an_empty_maildrop(tmp_path):
    assert MboxFormat().scan(str(tmp_path / "nobody")) == []


# ---- the session object ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,write", [(MaildirFormat(), lambda p, m: maildir.write(p, m)),
                                       (MboxFormat(), lambda p, m: mbox.append(p, m, "x@example.test"))])
def test_maildrop_marks_deletions_and_applies_them_only_on_commit(tmp_path, fmt, write):
    path = str(tmp_path / "alice")
    for message in (HELLO, HELLO.replace(b"hello", b"second"), HELLO.replace(b"hello", b"third")):
        write(path, message)
    drop = result_of(open_maildrop(fmt, path, SyncReactor(), SyncPool()))
    total, second_size = drop.octets(), drop.entry(1).size
    drop.delete(1)
    assert drop.count() == 2 and drop.octets() == total - second_size
    with pytest.raises(NoSuchMessage):
        drop.entry(1)
    drop.undelete_all()
    assert drop.count() == 3
    drop.delete(0)
    assert len(fmt.scan(path)) == 3             # nothing happens on disk before commit
    result_of(drop.commit())
    assert [m.split(b"Subject: ")[1][:6] for m in wire_messages(fmt, path)] == [b"second", b"third\r"]


def test_maildrop_numbers_outside_the_snapshot_are_no_such_message(maildir_path):
    drop = result_of(open_maildrop(MaildirFormat(), maildir_path, SyncReactor(), SyncPool()))
    for n in (-1, 2, 99):
        with pytest.raises(NoSuchMessage):
            drop.entry(n)
        with pytest.raises(NoSuchMessage):
            result_of(drop.read(n))


def test_locks_are_exclusive_until_released():
    locks = MaildropLocks()
    assert locks.acquire("/m/alice")
    assert not locks.acquire("/m/alice")
    assert locks.acquire("/m/bob")
    locks.release("/m/alice")
    assert locks.acquire("/m/alice")


def test_mbox_login_waits_for_a_delivery_in_progress(mbox_path, monkeypatch):
    """A half-appended message must never enter the snapshot: the scan takes the writer's dot-lock."""
    monkeypatch.setattr(mbox, "LOCK_TIMEOUT", 0.0)       # give up at once instead of sleeping
    open(mbox_path + ".lock", "w").close()
    with pytest.raises(MailboxUnavailable):
        MboxFormat().scan(mbox_path)
    os.unlink(mbox_path + ".lock")
    assert len(MboxFormat().scan(mbox_path)) == 2
