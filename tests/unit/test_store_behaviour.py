"""One behaviour suite for the store, run over Maildir and mbox: what POP3 and IMAP see, on real temp files.

Every test here runs once per format through the format-blind API the protocols use
(`store.account(path)` for IMAP, `store.open_maildrop(path)` for POP3). Format-specific details
(file names, side files, the mbox rewrite) are tested at the end of the file.
"""
from __future__ import annotations

import hashlib
import os
import time

import pytest
from twisted.python.failure import Failure

from appliance.errors import MailboxUnavailable
from appliance.interfaces import UserRecord
from appliance.inline import InlinePool, InlineReactor
from appliance.store import MailboxError, folder as folder_module, maildir, mbox
from appliance.store.maildir import MaildirFolder, MaildirStore
from appliance.store.mbox import MboxFolder, MboxStore
from appliance.realm import MaildropLocks
from appliance.store.pop3view import FolderSource, MessageGone, NoSuchMessage, to_wire, wire_size

HELLO = b"From: a@example.test\r\nSubject: hello\r\n\r\nHello.\r\n"
TRICKY = b"Subject: quoting\r\n\r\nFrom here on\r\n>From there\r\n.starts with a dot\r\nlast"
SEEN = frozenset({"\\Seen"})


def message(subject: str, body: str = "text\r\n") -> bytes:
    return f"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n{body}".encode()


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def restart() -> None:
    """Forget every folder object, as a process restart does: only the files remain."""
    folder_module._registry.clear()


class Maildir:
    name = "maildir"
    store_class = MaildirStore

    @staticmethod
    def deliver(path: str, data: bytes, now: float | None = None) -> None:
        maildir.write(path, data)

    @staticmethod
    def by_hand(path: str, stored: bytes, name: str = "1700000000.hand-made.example") -> None:
        """Another program's delivery: a file written straight into new/, named its own way."""
        os.makedirs(os.path.join(path, "new"), exist_ok=True)
        with open(os.path.join(path, "new", name), "wb") as handle:
            handle.write(stored)

    @staticmethod
    def stored_messages(path: str, messages: list[bytes]) -> None:
        for n, stored in enumerate(messages):
            Maildir.by_hand(path, stored, f"1700000000.M{n}P1.example")


class Mbox:
    name = "mbox"
    store_class = MboxStore

    @staticmethod
    def deliver(path: str, data: bytes, now: float | None = None) -> None:
        mbox.append(path, data, "x@example.test", now=now)

    @staticmethod
    def by_hand(path: str, stored: bytes, name: str = "") -> None:
        """Another program's delivery: an entry appended without our writer (nor its quoting)."""
        with open(path, "ab") as handle:
            handle.write(b"From someone@example.net Wed Nov 15 00:00:00 2023\n" + stored + b"\n")

    @staticmethod
    def stored_messages(path: str, messages: list[bytes]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for stored in messages:
            Mbox.by_hand(path, stored)


@pytest.fixture(params=[Maildir, Mbox], ids=["maildir", "mbox"])
def fmt(request):
    restart()
    yield request.param
    restart()


@pytest.fixture
def store(fmt, tmp_path):
    return fmt.store_class(str(tmp_path / "mail" / "{local}"), InlineReactor(), InlinePool())


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "mail" / "alice")


def inbox(store, path):
    return store.account(path).folder("INBOX")


def pop3(store, path):
    return result_of(store.open_maildrop(path))


def pop3_messages(store, path) -> list[bytes]:
    drop = pop3(store, path)
    return [result_of(drop.read(n)) for n, _ in drop.live()]


def imap_messages(store, path) -> list[bytes]:
    folder = inbox(store, path)
    return [folder.read(uid) for uid in folder.refresh().uids]


# ---- deliver, list, read ------------------------------------------------------------------------------
def test_delivered_messages_come_back_in_order_in_crlf_form(fmt, store, path):
    for data in (HELLO, message("m1"), message("m2")):
        fmt.deliver(path, data)
    assert imap_messages(store, path) == [HELLO, message("m1"), message("m2")]
    assert pop3_messages(store, path) == [HELLO, message("m1"), message("m2")]


def test_quoting_is_undone_exactly(fmt, store, path):
    """`From ` and `>From ` body lines come back as sent (mboxrd); an unterminated last line gets its CRLF."""
    fmt.deliver(path, TRICKY)
    expected = TRICKY + b"\r\n" if fmt is Mbox else TRICKY
    assert pop3_messages(store, path) == [expected]
    assert imap_messages(store, path) == [expected]


def test_sizes_are_exact_octet_counts_of_what_is_sent(fmt, store, path):
    for data in (HELLO, TRICKY, b"", message("m", "From x\r\n>From y\r\n>>From z\r\n")):
        fmt.deliver(path, data)
    drop = pop3(store, path)
    for n, entry in drop.live():
        assert entry.size == len(result_of(drop.read(n)))
    folder = inbox(store, path)
    metas = folder.meta(list(folder.state.uids))
    assert [metas[uid].size for uid in folder.state.uids] == [entry.size for _, entry in drop.live()]


def test_pop3_and_imap_see_the_same_messages(fmt, store, path):
    """Same count, same sizes, same order, same octets: one folder object behind both protocols."""
    for n in range(5):
        fmt.deliver(path, message(f"m{n}", "From the start\r\n" * n), now=1_700_000_000 + n)
    fmt.by_hand(path, b"Subject: by hand\n\nhand-made\n")
    drop = pop3(store, path)
    folder = inbox(store, path)
    state = folder.refresh()
    metas = folder.meta(list(state.uids))
    assert drop.count() == len(state.uids) == 6
    assert [entry.size for _, entry in drop.live()] == [metas[uid].size for uid in state.uids]
    assert [result_of(drop.read(n)) for n, _ in drop.live()] == [folder.read(uid) for uid in state.uids]


def test_missing_mailbox_is_empty(store, path):
    drop = pop3(store, path)
    assert (drop.count(), drop.octets()) == (0, 0)
    assert inbox(store, path).refresh().uids == ()


# ---- a foreign From line, a message added by another program --------------------------------------------
def test_an_unquoted_from_line_after_a_text_line_does_not_split_a_message(fmt, store, path):
    """Three messages, the second with an unquoted `From ` line inside a paragraph (mboxo, another
    program): both protocols see three messages, and the line stays in its message."""
    second = b"Subject: two\n\nIt was said\nFrom the top, once more.\nbye\n"
    fmt.stored_messages(path, [b"Subject: one\n\nfirst\n", second, b"Subject: three\n\nthird\n"])
    drop = pop3(store, path)
    assert drop.count() == 3
    assert result_of(drop.read(1)) == to_wire(second)
    folder = inbox(store, path)
    assert len(folder.refresh().uids) == 3
    assert folder.read(folder.state.uids[1]) == to_wire(second)


def test_a_from_line_after_a_blank_line_does_start_a_message_in_mbox(store, path):
    """The other half of the rule: that is what an mbox entry boundary is."""
    Mbox.stored_messages(path, [b"Subject: one\n\nfirst\n"])
    with open(path, "ab") as handle:
        handle.write(b"From b@example.test Wed Nov 15 00:00:01 2023\nSubject: two\n\nsecond\n")
    if isinstance(store, MboxStore):
        assert pop3(store, path).count() == 2
        assert len(inbox(store, path).refresh().uids) == 2


def test_a_message_added_by_another_program_is_found_by_both(fmt, store, path):
    fmt.deliver(path, HELLO)
    folder = inbox(store, path)
    assert folder.refresh().uids == (1,)
    fmt.by_hand(path, b"Subject: by hand\n\nhand-made\n")
    assert folder.changed()
    state = folder.refresh()
    assert state.uids == (1, 2) and state.fresh == {1, 2}
    assert folder.read(2) == b"Subject: by hand\r\n\r\nhand-made\r\n"
    assert pop3_messages(store, path)[1] == b"Subject: by hand\r\n\r\nhand-made\r\n"


# ---- flags, \Recent, expunge, UIDs ------------------------------------------------------------------------
def test_uids_survive_restart_and_are_never_reused(fmt, store, path):
    for n in range(3):
        fmt.deliver(path, message(f"m{n}"))
    first = inbox(store, path).refresh()
    assert first.uids == (1, 2, 3)
    restart()
    inbox(store, path).expunge([3])
    fmt.deliver(path, message("later"))
    restart()
    again = inbox(store, path).refresh()
    assert again.uidvalidity == first.uidvalidity
    assert again.uids == (1, 2, 4)
    assert again.uidnext == 5


def test_flags_survive_restart(fmt, store, path):
    for n in range(3):
        fmt.deliver(path, message(f"m{n}", "From here on\r\n"))
    folder = inbox(store, path)
    folder.refresh()
    folder.store([2], "", frozenset({"\\Seen", "\\Flagged"}))
    folder.store([3], "+", frozenset({"\\Deleted"}))
    restart()
    state = inbox(store, path).refresh()
    assert state.flags_of(2) == {"\\Seen", "\\Flagged"}
    assert state.flags_of(3) == {"\\Deleted"}          # flagged, not expunged: still there
    assert state.flags_of(1) == frozenset()
    assert pop3(store, path).count() == 3


def test_imap_expunge_keeps_the_others_uids_flags_and_octets(fmt, store, path):
    for n in range(3):
        fmt.deliver(path, message(f"m{n}", "From here on\r\n"))
    folder = inbox(store, path)
    assert folder.refresh().uids == (1, 2, 3)
    folder.store([2], "+", SEEN)
    folder.expunge([1])
    assert folder.read(2) == message("m1", "From here on\r\n")
    restart()
    state = inbox(store, path).refresh()
    assert state.uids == (2, 3) and state.flags_of(2) == SEEN
    fmt.deliver(path, message("m3"))
    assert inbox(store, path).refresh().uids == (2, 3, 4)


def test_new_mail_is_found_and_claimed_once(fmt, store, path, monkeypatch):
    # Changes here are microseconds apart: with the racy-stamp window (see the test below) every
    # check would say "maybe changed"; this one is about the stamps themselves.
    monkeypatch.setattr(folder_module, "RACY_NS", 0)
    for n in range(3):
        fmt.deliver(path, message(f"m{n}"))
    folder = inbox(store, path)
    snapshot = folder.refresh()
    assert snapshot.fresh == {1, 2, 3}
    assert folder.claim(snapshot.fresh) == {1, 2, 3}
    assert folder.claim(snapshot.fresh) == frozenset()
    assert not folder.changed()
    fmt.deliver(path, message("new"))
    assert folder.changed()
    assert folder.refresh().fresh == {4}


def test_append_keeps_flags_and_date(fmt, store, path):
    fmt.deliver(path, HELLO)
    folder = inbox(store, path)
    uid = folder.append(message("appended"), SEEN, 1_000_000_000.0)
    assert folder.state.flags_of(uid) == SEEN
    assert folder.meta([uid])[uid].internaldate == 1_000_000_000.0
    assert folder.read(uid) == message("appended")
    assert uid in folder.state.fresh                 # \Recent for the first session to claim it


# ---- the POP3 session ------------------------------------------------------------------------------------------
def test_maildrop_marks_deletions_and_applies_them_only_on_commit(fmt, store, path):
    for data in (HELLO, HELLO.replace(b"hello", b"second"), HELLO.replace(b"hello", b"third")):
        fmt.deliver(path, data)
    drop = pop3(store, path)
    total, second_size = drop.octets(), drop.entry(1).size
    drop.delete(1)
    assert drop.count() == 2 and drop.octets() == total - second_size
    with pytest.raises(NoSuchMessage):
        drop.entry(1)
    drop.undelete_all()
    assert drop.count() == 3
    drop.delete(0)
    assert pop3(store, path).count() == 3             # nothing happens on disk before commit
    result_of(drop.commit())
    assert [m.split(b"Subject: ")[1][:6] for m in pop3_messages(store, path)] == [b"second", b"third\r"]
    assert len(inbox(store, path).refresh().uids) == 2   # and IMAP sees the deletion too


def test_maildrop_numbers_outside_the_snapshot_are_no_such_message(fmt, store, path):
    fmt.deliver(path, HELLO)
    fmt.deliver(path, TRICKY)
    drop = pop3(store, path)
    for n in (-1, 2, 99):
        with pytest.raises(NoSuchMessage):
            drop.entry(n)
        with pytest.raises(NoSuchMessage):
            result_of(drop.read(n))


def test_pop3_snapshot_ignores_mail_arriving_during_the_session(fmt, store, path):
    fmt.deliver(path, HELLO)
    drop = pop3(store, path)
    fmt.deliver(path, TRICKY)
    assert drop.count() == 1
    drop.delete(0)
    result_of(drop.commit())
    assert pop3(store, path).count() == 1                # the late one is kept


def test_uidls_are_stable_unique_and_valid(fmt, store, path):
    for _ in range(2):
        fmt.deliver(path, HELLO, now=1_700_000_000)      # exact duplicates (the same mbox entry twice)
    fmt.deliver(path, TRICKY)
    uids = [entry.uid for _, entry in pop3(store, path).live()]
    assert len(set(uids)) == 3
    restart()
    assert [entry.uid for _, entry in pop3(store, path).live()] == uids
    for uid in uids:
        assert 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)


def test_message_removed_by_another_session_is_gone(fmt, store, path):
    fmt.deliver(path, HELLO)
    fmt.deliver(path, TRICKY)
    drop = pop3(store, path)
    inbox(store, path).expunge([1])                      # an IMAP session, say
    with pytest.raises(MessageGone):
        result_of(drop.read(0))
    assert result_of(drop.read(1)).startswith(b"Subject: quoting")
    drop.delete(0)
    result_of(drop.commit())                             # already gone: nothing to do, no error
    assert pop3(store, path).count() == 1


def test_locks_are_exclusive_until_released():
    locks = MaildropLocks()
    assert locks.acquire("/m/alice")
    assert not locks.acquire("/m/alice")
    assert locks.acquire("/m/bob")
    locks.release("/m/alice")
    assert locks.acquire("/m/alice")


@pytest.mark.parametrize("data", [b"", b"a\nb\n", b"a\r\nb\r\n", b"mixed\r\nends\nhere", b"cr\r\r\nx", b"\n\n"])
def test_wire_size_is_the_length_of_the_crlf_form(data):
    assert wire_size(data) == len(to_wire(data))
    assert b"\n" not in to_wire(data).replace(b"\r\n", b"")


# ---- folders ------------------------------------------------------------------------------------------------------
def test_account_special_folders_and_names(store, path):
    account = store.account(path)
    account.ensure_special()
    assert account.names() == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    assert account.special_use("Sent") == "\\Sent"
    assert account.subscriptions() == {"INBOX", "Drafts", "Junk", "Sent", "Trash"}
    account.create("Lists.Python")
    account.subscribe("Lists.Python")
    account.rename("Lists.Python", "Lists.Twisted")
    assert "Lists.Twisted" in account.names() and "Lists.Python" not in account.names()
    assert "Lists.Twisted" in account.subscriptions()
    for bad in ("../etc", "a/b", ".hidden", "a..b", ""):
        with pytest.raises(MailboxError):
            account.create(bad)
    with pytest.raises(MailboxError):
        account.delete("INBOX")


def test_folder_messages_uids_and_subscriptions_survive_restart(store, path):
    account = store.account(path)
    account.create("Lists.Twisted")
    account.subscribe("Lists.Twisted")
    uid = account.folder("Lists.Twisted").append(message("list"), SEEN, 1_700_000_000.0)
    restart()
    again = store.account(path)
    assert again.names() == ["INBOX", "Lists.Twisted"]
    assert again.subscriptions() == {"Lists.Twisted"}
    folder = again.folder("Lists.Twisted")
    assert folder.refresh().uids == (uid,) and folder.state.flags_of(uid) == SEEN
    assert folder.read(uid) == message("list")
    assert pop3(store, path).count() == 0                # POP3 serves INBOX only
    again.delete("Lists.Twisted")
    # the subscription stays (RFC 3501 6.3.6: the server never removes one on its own)
    assert again.names() == ["INBOX"] and again.subscriptions() == {"Lists.Twisted"}
    with pytest.raises(MailboxError):
        again.folder("Lists.Twisted")


# ---- Maildir details ---------------------------------------------------------------------------------------------
@pytest.fixture
def maildir_path(tmp_path) -> str:
    restart()
    path = str(tmp_path / "alice")
    maildir.write(path, HELLO)
    maildir.write(path, TRICKY)
    return path


def maildir_source(path: str) -> FolderSource:
    return FolderSource(maildir.MaildirAccount(path).folder("INBOX"))


def test_maildir_flags_are_kept_in_the_file_name(maildir_path):
    folder = MaildirFolder(maildir_path)
    folder.refresh()
    folder.store([2], "", frozenset({"\\Seen", "\\Flagged"}))
    assert any(name.endswith(":2,FS") for name in os.listdir(os.path.join(maildir_path, "cur")))
    assert MaildirFolder(maildir_path).refresh().flags_of(2) == {"\\Seen", "\\Flagged"}


def test_maildir_uidl_survives_move_to_cur_and_flags(maildir_path):
    before = [entry.uid for entry in maildir_source(maildir_path).scan()]
    name = os.listdir(os.path.join(maildir_path, "new"))[0]
    os.rename(os.path.join(maildir_path, "new", name), os.path.join(maildir_path, "cur", name + ":2,S"))
    restart()
    after = [entry.uid for entry in maildir_source(maildir_path).scan()]
    assert sorted(after) == sorted(before)
    assert len(set(before)) == 2
    assert all("," not in uid and ":" not in uid for uid in before)


def test_maildir_long_names_get_a_valid_uid(tmp_path):
    path = tmp_path / "box"
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True)
    (path / "new" / ("1700000000.M1P1Q1." + "h" * 90)).write_bytes(HELLO)
    uid = maildir_source(str(path)).scan()[0].uid
    assert len(uid) <= 70
    restart()
    assert maildir_source(str(path)).scan()[0].uid == uid
    assert uid == hashlib.md5(("1700000000.M1P1Q1." + "h" * 90).encode()).hexdigest()


def test_maildir_sizes_are_cached_and_stale_entries_dropped(maildir_path):
    source = maildir_source(maildir_path)
    entries = source.scan()
    cache = open(os.path.join(maildir_path, maildir.SIZE_CACHE)).read().split("\n")
    assert sorted(line for line in cache if line) == sorted(f"{e.uid} {e.size}" for e in entries)
    source.expunge("", entries[:1])
    source.scan()
    assert entries[0].uid not in open(os.path.join(maildir_path, maildir.SIZE_CACHE)).read()


def test_maildir_sizes_come_from_the_cache_without_reading_files(maildir_path):
    entries = maildir_source(maildir_path).scan()
    with open(os.path.join(maildir_path, maildir.SIZE_CACHE), "w") as handle:
        handle.writelines(f"{e.uid} {e.size + 1000}\n" for e in entries)
    restart()
    assert [e.size for e in maildir_source(maildir_path).scan()] == [e.size + 1000 for e in entries]


def test_maildir_expunge_unlinks_even_a_file_renamed_since_login(maildir_path):
    source = maildir_source(maildir_path)
    first, second = source.scan()
    name = [n for n in os.listdir(os.path.join(maildir_path, "new")) if maildir.pop3_uidl(n) == first.uid][0]
    os.rename(os.path.join(maildir_path, "new", name), os.path.join(maildir_path, "cur", name + ":2,S"))
    assert source.read("", first) == HELLO
    source.expunge("", [first])
    assert [source.read("", e) for e in source.scan()] == [TRICKY]


def test_maildir_message_unlinked_by_another_program_is_gone(maildir_path):
    source = maildir_source(maildir_path)
    first = source.scan()[0]
    for name in os.listdir(os.path.join(maildir_path, "new")):
        if maildir.pop3_uidl(name) == first.uid:
            os.unlink(os.path.join(maildir_path, "new", name))
    with pytest.raises(MessageGone):
        source.read("", first)
    source.expunge("", [first])      # already gone: nothing to do, no error


def test_maildir_arrival_order_is_the_one_order(tmp_path):
    names = ["1700000001.M5P1.x", "1700000000.M900000P1.x", "1700000001.M40P1.x", "1700000000.x", "weird"]
    assert sorted(names, key=maildir.arrival_order) == \
        ["1700000000.x", "1700000000.M900000P1.x", "1700000001.M5P1.x", "1700000001.M40P1.x", "weird"]
    path = str(tmp_path / "box")
    for name in names:
        Maildir.by_hand(path, f"Subject: {name}\n\nx\n".encode(), name)
    restart()
    source = maildir_source(path)
    listed = [source.read("", e).split(b"\r\n")[0] for e in source.scan()]
    assert listed == [f"Subject: {n}".encode() for n in sorted(names, key=maildir.arrival_order)]


def test_maildir_dot_files_and_directories_are_not_mail(maildir_path):
    open(os.path.join(maildir_path, "new", ".hidden"), "wb").close()
    os.mkdir(os.path.join(maildir_path, "cur", "subdir"))
    assert len(maildir_source(maildir_path).scan()) == 2
    assert len(MaildirFolder(maildir_path).refresh().uids) == 2


def test_maildir_index_answers_without_reading_the_message_again(tmp_path):
    path = str(tmp_path / "alice")
    for n in range(3):
        maildir.write(path, message(f"m{n}"))
    folder = MaildirFolder(path)
    folder.refresh()
    assert b'"m0"' in folder.meta([1])[1].envelope
    for name in os.listdir(os.path.join(path, "new")):
        with open(os.path.join(path, "new", name), "r+b") as handle:   # same name, other content
            handle.write(message("XX"))
    reopened = MaildirFolder(path)
    reopened.refresh()
    metas = reopened.meta([1, 2])
    assert b'"m0"' in metas[1].envelope          # from the index: the file was not read again
    assert b'"XX"' in metas[2].envelope          # not indexed yet: read now
    assert metas[1].size == len(message("m0"))


def test_pop3_login_builds_no_metadata_index(fmt, store, path):
    """POP3 must stay cheap: no MIME parsing at login (bench/pop3_retr)."""
    for n in range(3):
        fmt.deliver(path, message(f"m{n}"))
    drop = pop3(store, path)
    result_of(drop.read(0))
    meta_dir = path if fmt is Maildir else path + ".imap"
    assert "mailappliance-index" not in os.listdir(meta_dir)


# ---- mbox details --------------------------------------------------------------------------------------------------
@pytest.fixture
def mbox_path(tmp_path) -> str:
    restart()
    path = str(tmp_path / "alice")
    mbox.append(path, HELLO, "a@example.test", now=1_700_000_000)
    mbox.append(path, TRICKY, "b@example.test", now=1_700_000_001)
    return path


def mbox_source(path: str) -> FolderSource:
    return FolderSource(mbox.MboxAccount(path).folder("INBOX"))


def test_mbox_splitter_rule():
    data = (b"From a Mon Jan  1 00:00:00 2024\nSubject: 1\n\ntext\nFrom inside\n\n"
            b"From b Mon Jan  1 00:00:00 2024\nSubject: 2\n\n>From quoted\n\n"
            b"From c Mon Jan  1 00:00:00 2024\nSubject: 3\n\nlast")
    entries = mbox.split(data)
    assert [data[body:end] for _, body, end in entries] == [
        b"Subject: 1\n\ntext\nFrom inside\n\n", b"Subject: 2\n\n>From quoted\n\n", b"Subject: 3\n\nlast"]
    assert [mbox.message_of(data[body:end]) for _, body, end in entries][1] == b"Subject: 2\n\nFrom quoted\n"
    assert mbox.split(b"no From_ line\n\nFrom x\n") == [(15, 22, 22)]
    assert mbox.split(b"") == []


def test_mbox_writer_output_reads_back_unchanged():
    for data in (HELLO, TRICKY, b"", b"From a\r\n>From b\r\n>>From c\r\n"):
        stored = mbox.entry(data, "a@example.test", 0)
        (start, body, end), = mbox.split(stored)
        assert to_wire(mbox.message_of(stored[body:end])) == to_wire(data.replace(b"\r\n", b"\n") + (
            b"\n" if data and not data.endswith(b"\n") else b""))
        assert mbox.wire_size_of(stored[body:end]) == len(to_wire(mbox.message_of(stored[body:end])))


def test_mbox_uidl_is_the_md5_of_the_entry_with_numbers_for_duplicates(tmp_path):
    path = str(tmp_path / "alice")
    for _ in range(2):
        mbox.append(path, HELLO, "a@example.test", now=1_700_000_000)
    digest = hashlib.md5(mbox.entry(HELLO, "a@example.test", 1_700_000_000)).hexdigest()
    assert [entry.uid for entry in mbox_source(path).scan()] == [digest, f"{digest}-2"]


def test_mbox_expunge_keeps_mail_appended_during_the_session(mbox_path):
    source = mbox_source(mbox_path)
    first, _ = source.scan()
    mbox.append(mbox_path, b"Subject: late\r\n\r\nArrived during the session.\r\n", "c@example.test")
    source.expunge("", [first])
    restart()
    source = mbox_source(mbox_path)
    remaining = [source.read("", e) for e in source.scan()]
    assert remaining == [TRICKY + b"\r\n", b"Subject: late\r\n\r\nArrived during the session.\r\n"]
    assert not os.path.exists(mbox_path + ".lock")
    assert os.stat(mbox_path).st_mode & 0o777 == 0o600


def test_mbox_uids_of_kept_messages_do_not_change_after_a_rewrite(mbox_path):
    source = mbox_source(mbox_path)
    first, second = source.scan()
    source.expunge("", [first])
    restart()
    assert [entry.uid for entry in mbox_source(mbox_path).scan()] == [second.uid]


def test_mbox_rewritten_by_another_program_never_serves_the_wrong_message(mbox_path):
    source = mbox_source(mbox_path)
    first, second = source.scan()
    with open(mbox_path, "rb") as handle:
        data = handle.read()
    (_, _, end), _ = mbox.split(data)
    with open(mbox_path, "wb") as handle:          # another program drops the first entry
        handle.write(data[end:])
    with pytest.raises(MessageGone):
        source.read("", first)
    assert source.read("", second) == TRICKY + b"\r\n"   # found again at its new offset


def test_mbox_delete_everything_leaves_an_empty_file(mbox_path):
    source = mbox_source(mbox_path)
    source.expunge("", source.scan())
    assert os.path.getsize(mbox_path) == 0
    assert source.scan() == []


def test_mbox_text_before_the_first_entry_is_kept_by_a_rewrite(mbox_path):
    with open(mbox_path, "rb") as handle:
        data = handle.read()
    with open(mbox_path, "wb") as handle:
        handle.write(b"preamble\n\n" + data)
    source = mbox_source(mbox_path)
    first, _ = source.scan()
    source.expunge("", [first])
    with open(mbox_path, "rb") as handle:
        assert handle.read().startswith(b"preamble\n\nFrom b@example.test ")


def test_mbox_login_waits_for_a_delivery_in_progress(mbox_path, monkeypatch):
    """A half-appended message must never be seen: POP3 and IMAP both read under the writer's dot-lock."""
    monkeypatch.setattr(mbox, "LOCK_TIMEOUT", 0.0)       # give up at once instead of sleeping
    store = MboxStore(os.path.dirname(mbox_path) + "/{local}", InlineReactor(), InlinePool())
    open(mbox_path + ".lock", "w").close()
    with pytest.raises(MailboxUnavailable):
        mbox_source(mbox_path).scan()
    with pytest.raises(MailboxUnavailable):
        result_of(store.open_maildrop(mbox_path))
    with pytest.raises(MailboxUnavailable):
        store.account(mbox_path).folder("INBOX").refresh()
    os.unlink(mbox_path + ".lock")
    assert len(mbox_source(mbox_path).scan()) == 2
    assert len(store.account(mbox_path).folder("INBOX").refresh().uids) == 2


def test_mbox_folder_objects_reopened_directly_agree(mbox_path):
    folder = MboxFolder(mbox_path, mbox_path + ".imap")
    assert folder.refresh().uids == (1, 2)
    assert MboxFolder(mbox_path, mbox_path + ".imap").refresh().uids == (1, 2)


# ---- delivery into a folder (spam into Junk) ---------------------------------------------------------------------
ALICE = UserRecord(address="alice@example.test")
SPAM = message("buy now")
MARKED = b"X-Spam-Flag: YES\r\n" + message("[SPAM] buy now")


def deliver_to(store, folder: str = "", fallback: bytes | None = None, data: bytes = SPAM) -> str:
    d = store.deliver(ALICE, data, "x@example.org", folder=folder, fallback=fallback)
    store.reactor.advance(0)            # the batch is flushed on the next reactor turn
    return result_of(d)


def folder_messages(store, path, name: str) -> list[bytes]:
    folder = store.account(path).folder(name)
    return [folder.read(uid) for uid in folder.refresh().uids]


def test_spam_goes_to_junk_when_the_user_has_it(store, path):
    store.account(path).ensure_special()             # what the first IMAP login does
    where = deliver_to(store, "Junk", MARKED)
    assert "Junk" in where
    assert folder_messages(store, path, "Junk") == [SPAM]
    assert imap_messages(store, path) == [] and pop3_messages(store, path) == []


def test_an_open_junk_folder_sees_new_spam(store, path):
    """An IMAP session that has Junk selected finds the delivery the way it finds INBOX mail."""
    account = store.account(path)
    account.ensure_special()
    junk = account.folder("Junk")
    assert junk.refresh().uids == ()
    deliver_to(store, "Junk")
    assert len(junk.state.uids) == 1                 # the delivery rescanned the open folder
    assert len(junk.refresh().uids) == 1


def test_without_junk_spam_goes_to_inbox_marked(store, path):
    deliver_to(store, "Junk", MARKED)
    assert pop3_messages(store, path) == [MARKED]
    assert imap_messages(store, path) == [MARKED]
    assert store.account(path).names() == ["INBOX"]          # nothing is created behind the user's back


def test_a_deleted_junk_folder_sends_spam_to_inbox_again(store, path):
    account = store.account(path)
    account.ensure_special()
    account.delete("Junk")
    deliver_to(store, "Junk", MARKED)
    assert pop3_messages(store, path) == [MARKED]


def test_folder_and_inbox_deliveries_in_one_batch(store, path):
    store.account(path).ensure_special()
    first = store.deliver(ALICE, message("ham"), "x@example.org")
    second = store.deliver(ALICE, SPAM, "x@example.org", folder="Junk", fallback=MARKED)
    store.reactor.advance(0)
    assert "Junk" not in result_of(first) and "Junk" in result_of(second)
    assert imap_messages(store, path) == [message("ham")]
    assert folder_messages(store, path, "Junk") == [SPAM]


def test_mbox_dot_lock_beside_a_folder_is_not_a_folder(tmp_path):
    account = MboxStore(str(tmp_path / "{local}"), InlineReactor(), InlinePool()).account(str(tmp_path / "alice"))
    account.ensure_special()
    for side in ("Junk.lock", "Junk.lock.123.456"):
        (tmp_path / "alice.folders" / side).write_bytes(b"123\n")
    assert account.names() == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]


# ---- reading many at once (FETCH 1:* BODY[]) ------------------------------------------------------------------------
def test_read_many_is_read_of_each_in_order(fmt, store, path):
    """The batch read FETCH uses gives what read() gives, message by message, None for an unknown UID."""
    for data in (HELLO, TRICKY, message("m2", "x\r\n" * 5000), b"", b"x", b"\r\n", b"x\r\n\r\n"):
        fmt.deliver(path, data)
    if fmt is Mbox:
        old = time.time() - 3600
        os.utime(path, (old, old))    # an old stamp: the mbox reads take the trusted way (no digest)
    folder = inbox(store, path)
    uids = list(folder.refresh().uids)
    assert folder.read_many(uids + [99]) == [folder.read(uid) for uid in uids] + [None]
    assert len(uids) == 7 and folder.read(uids[-1]) == b"x\r\n\r\n"
    assert folder.read_many(uids, budget=1) == [folder.read(uids[0])]      # stops after the one that reaches it
    first = len(folder.read(uids[0]))           # its stored form (LF) is shorter: the second one reaches it
    assert folder.read_many(uids, budget=first) == [folder.read(uid) for uid in uids[:2]]


def test_mbox_read_many_rereads_a_file_rewritten_behind_its_back(tmp_path):
    """Another program (a mail reader deleting the first message) rewrote the mbox after our parse:
    the offsets are stale, and the batch read must notice (the file's stamp changed) and give the
    right octets, not a slice of the wrong place."""
    restart()
    path = str(tmp_path / "mail" / "alice")
    for data in (message("first", "a\r\n" * 100), message("second", "b\r\n" * 100), message("third")):
        Mbox.deliver(path, data)
    old = time.time() - 3600
    os.utime(path, (old, old))        # an old stamp: trusted, reads skip the digest while it holds
    folder = MboxStore(str(tmp_path / "mail" / "{local}"), InlineReactor(), InlinePool()).account(path).folder("INBOX")
    uids = list(folder.refresh().uids)
    expected = [folder.read(uid) for uid in uids]
    assert folder.read_many(uids) == expected
    with open(path, "rb") as handle:
        data = handle.read()
    second = data.index(b"\nFrom ", 1) + 1
    with open(path, "r+b") as handle:          # in place, as mutt does: the first entry gone
        handle.write(data[second:])
        handle.truncate()
    assert folder.read_many(uids) == [None] + expected[1:]


@pytest.mark.parametrize("name_size", [5, 10_000_000, None])
def test_maildir_read_many_trusts_no_size_in_a_name(tmp_path, name_size):
    """A `,S=` that lies (another program's, or a file changed since) never cuts or pads a message."""
    restart()
    path = str(tmp_path / "mail" / "alice")
    data = message("sized", "line\n" * 3000)
    suffix = "" if name_size is None else f",S={name_size}"
    Maildir.by_hand(path, data, f"1700000000.M1P1.example{suffix}")
    folder = MaildirStore(str(tmp_path / "mail" / "{local}"), InlineReactor(), InlinePool()).account(path).folder("INBOX")
    uids = list(folder.refresh().uids)
    assert folder.read_many(uids) == [folder.read(uids[0])] and b"line\r\n" * 3000 in folder.read(uids[0])


def test_maildir_read_many_finds_a_message_renamed_meanwhile(tmp_path):
    """Another program moved a message from new/ to cur/ (with flags) after our scan: still read."""
    restart()
    path = str(tmp_path / "mail" / "alice")
    Maildir.by_hand(path, HELLO, "1700000000.M1P1.example,S=50")
    folder = MaildirStore(str(tmp_path / "mail" / "{local}"), InlineReactor(), InlinePool()).account(path).folder("INBOX")
    uids = list(folder.refresh().uids)
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(path, sub)):
            os.rename(os.path.join(path, sub, name), os.path.join(path, "cur", name.partition(":")[0] + ":2,S"))
    assert folder.read_many(uids) == [HELLO]


def test_mbox_big_batch_reads_trust_a_settled_file_without_digests(tmp_path, monkeypatch):
    """A file parsed while young (just delivered to) is checked by digest on every read; once it
    has settled, a big batch parses it again and the reads after need no digest, same octets."""
    restart()
    path = str(tmp_path / "mail" / "alice")
    messages = [message(f"m{n}", f"line {n}\r\n" * n) for n in range(80)]
    for data in messages:
        Mbox.deliver(path, data)
    folder = MboxStore(str(tmp_path / "mail" / "{local}"), InlineReactor(), InlinePool()).account(path).folder("INBOX")
    uids = list(folder.refresh().uids)
    digests = []
    real = mbox._key_digest
    monkeypatch.setattr(mbox, "_key_digest", lambda stored: digests.append(1) or real(stored))
    assert folder.read_many(uids) == messages        # young: every entry checked
    assert len(digests) >= len(messages)
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert folder.read_many(uids) == messages        # settled: parsed once more (a digest each) ...
    digests.clear()
    assert folder.read_many(uids) == messages        # ... and trusted from then on
    assert digests == []
