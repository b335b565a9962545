"""The rescan a QRESYNC client's SELECT pays for right after flag changes (issue 14, bench/imap_qresync).

A folder whose stamp is younger than RACY_NS is listed again at every refresh; these tests pin
that such a rescan does only the work a change calls for (no re-parsing of names it has met, no
re-reading of an mbox whose file did not change, no new Snapshot when nothing changed) and that
it still finds what another program changed in the same clock tick.
"""
from __future__ import annotations

import os

from appliance.store import maildir, mbox
from tests.unit.test_store_behaviour import Maildir, Mbox, fmt, path, restart, store  # noqa: F401

FLAGGED = frozenset({"\\Flagged"})


def same_tick(folder_path: str, seen: tuple[int, int]) -> None:
    """Put back the new/ and cur/ mtimes seen before a change: the change happened in the same tick."""
    for sub, stamp in zip(("new", "cur"), seen):
        os.utime(os.path.join(folder_path, sub), ns=(stamp, stamp))


def mtimes(folder_path: str) -> tuple[int, int]:
    return tuple(os.stat(os.path.join(folder_path, sub)).st_mtime_ns for sub in ("new", "cur"))  # type: ignore[return-value]


def test_a_maildir_rescan_does_not_parse_the_names_it_has_met(store, path, monkeypatch):
    Maildir.stored_messages(path, [f"Subject: {n}\n\n".encode() for n in range(20)])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uid = folder.refresh().uids[3]
    folder.store([uid], "+", FLAGGED)
    parsed = []
    real = maildir.split_name
    monkeypatch.setattr(maildir, "split_name", lambda name, keywords=None: parsed.append(name) or real(name, keywords))
    folder._racy = True                       # the young stamp's rescan
    state = folder.refresh()
    assert parsed == [] and state.flags_of(uid) == FLAGGED
    name = os.listdir(os.path.join(path, "new"))[0]
    os.rename(os.path.join(path, "new", name), os.path.join(path, "cur", name + ":2,S"))   # another reader
    state = folder.refresh()
    assert parsed == [name + ":2,S"] and sum(flags == {"\\Seen"} for flags in state.flags) == 1


def test_an_outside_rename_in_the_same_tick_as_our_own_change_is_seen(store, path):
    """Our STORE renames a file; another reader renames another one within the same mtime tick:
    the stamps look as our change left them, the rescan the young stamp forces still finds it."""
    Maildir.stored_messages(path, [b"Subject: a\n\n", b"Subject: b\n\n"])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    first, second = folder.refresh().uids
    folder.store([first], "+", FLAGGED)
    seen = mtimes(path)
    name = os.listdir(os.path.join(path, "new"))[0]
    os.rename(os.path.join(path, "new", name), os.path.join(path, "cur", name + ":2,S"))
    same_tick(path, seen)
    state = folder.refresh()
    assert state.flags_of(first) == FLAGGED and state.flags_of(second) == {"\\Seen"}


def test_a_keyword_named_later_by_another_program_is_read_into_names_already_met(store, path):
    """Names are parsed once, but their letters mean what the keyword list says now."""
    Maildir.stored_messages(path, [])
    os.makedirs(os.path.join(path, "cur"), exist_ok=True)
    with open(os.path.join(path, "cur", "1700000000.M1P1.example:2,a"), "wb") as handle:
        handle.write(b"Subject: a\n\n")
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    assert folder.state.flags_of(uid) == frozenset()
    with open(os.path.join(path, maildir.KEYWORDS_FILE), "w") as handle:
        handle.write("0 $Work\n")            # Dovecot names letter a
    folder._racy = True
    assert folder.refresh().flags_of(uid) == {"$Work"}


def test_a_rescan_that_finds_nothing_new_keeps_the_snapshot_and_records_no_change(fmt, store, path, monkeypatch):
    fmt.stored_messages(path, [b"Subject: a\n\nx\n", b"Subject: b\n\ny\n"])
    folder = store.account(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    state = folder.store([uid], "+", FLAGGED)
    observed = []
    monkeypatch.setattr(folder.modseq, "observe", lambda *args: observed.append(args))
    folder._racy = True
    assert folder.refresh() is state and observed == []
    restart()
    other = store.account(path).folder("INBOX")       # another process changes a flag
    other.refresh()
    other.store([uid], "-", FLAGGED)
    folder._racy = True
    assert folder.refresh().flags_of(uid) == frozenset() and len(observed) == 1


def test_a_flag_change_in_mbox_reads_the_side_file_not_the_mbox(store, path, monkeypatch):
    Mbox.stored_messages(path, [f"Subject: {n}\n\nbody {n}\n".encode() for n in range(5)])
    folder = mbox.MboxAccount(path).folder("INBOX")
    uid = folder.refresh().uids[2]
    restart()
    other = mbox.MboxAccount(path).folder("INBOX")       # another process's view of the same files
    other.refresh()
    reads = []
    real = mbox.read_locked
    monkeypatch.setattr(mbox, "read_locked", lambda where: reads.append(where) or real(where))
    other.store([uid], "+", FLAGGED)
    folder._racy = True
    assert folder.refresh().flags_of(uid) == FLAGGED
    assert reads == []


def test_an_mbox_side_file_rewritten_in_the_same_tick_is_read_again(store, path):
    """After our own flag change the side file's stamp is young; another process writing it again
    within the same tick (its stamp put back) must still be read, not taken from the last scan."""
    Mbox.stored_messages(path, [b"Subject: a\n\nx\n", b"Subject: b\n\ny\n"])
    folder = mbox.MboxAccount(path).folder("INBOX")
    first, second = folder.refresh().uids
    folder.store([first], "+", FLAGGED)
    flags_path = os.path.join(folder._flags_path)
    seen = os.stat(flags_path)
    restart()
    other = mbox.MboxAccount(path).folder("INBOX")
    other.refresh()
    other.store([second], "+", frozenset({"\\Seen"}))
    os.utime(flags_path, ns=(seen.st_mtime_ns, seen.st_mtime_ns))
    state = folder.refresh()
    assert state.flags_of(first) == FLAGGED and state.flags_of(second) == {"\\Seen"}


def test_a_maildir_name_renamed_back_by_another_reader_is_still_read(store, path):
    """The listing matches the last one again, yet our own rename in between moved the file:
    the reused listing brings back where the files are, so reading still works."""
    Maildir.stored_messages(path, [b"Subject: a\n\n"])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    name = os.listdir(os.path.join(path, "new"))[0]
    folder.claim(frozenset({uid}))                       # ours: new/ -> cur/
    moved = os.listdir(os.path.join(path, "cur"))[0]
    os.rename(os.path.join(path, "cur", moved), os.path.join(path, "new", name))   # another program puts it back
    folder._racy = True
    assert folder.refresh().uids == (uid,)
    assert folder.read(uid) == b"Subject: a\r\n\r\n"
