"""MODSEQ per message (store/modseq.py) over real Maildir and mbox folders: what bumps it, what it survives."""
from __future__ import annotations

import gc
import os

import pytest

from appliance.store import folder as folder_module, maildir, mbox
from appliance.store.modseq import MODSEQ, ModseqLog, clock_value, first_known, format_ranges, gaps, subtract

MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"


def open_inbox(tmp_path, storage):
    """A fresh Folder object for the INBOX, as a restarted server would make it."""
    gc.collect()
    with folder_module._registry_guard:
        folder_module._registry.clear()
    root = str(tmp_path / "alice")
    account = (maildir.MaildirAccount if storage == "maildir" else mbox.MboxAccount)(root)
    return account.folder("INBOX")


_serial = iter(range(1 << 30))


def deliver(tmp_path, storage, count=1):
    root = str(tmp_path / "alice")
    for _ in range(count):
        data = MESSAGE.replace(b"body", b"body %d" % next(_serial))    # mbox keys identical bodies alike
        if storage == "maildir":
            maildir.write(root, data)
        else:
            mbox.append(root, data, "bob@example.test")


def journal(tmp_path, storage) -> str:
    root = tmp_path / "alice"
    return str(root / MODSEQ if storage == "maildir" else tmp_path / "alice.imap" / MODSEQ)


@pytest.fixture(params=["maildir", "mbox"])
def storage(request):
    return request.param


def test_every_kind_of_change_raises_the_modseq_of_what_changed(tmp_path, storage):
    deliver(tmp_path, storage, 3)
    inbox = open_inbox(tmp_path, storage)
    first = inbox.refresh()
    a, b, c = first.uids
    assert first.highestmodseq > 0 and set(first.modseqs) == {first.highestmodseq}

    after_store = inbox.store([b], "", frozenset({"\\Seen"}))
    assert after_store.modseq_of(b) > first.highestmodseq == after_store.modseq_of(a) == after_store.modseq_of(c)
    assert after_store.highestmodseq == after_store.modseq_of(b)

    new_uid = inbox.append(MESSAGE, frozenset(), None)
    after_append = inbox.state
    assert after_append.modseq_of(new_uid) > after_store.highestmodseq == after_append.modseq_of(b)

    deliver(tmp_path, storage)
    after_delivery = inbox.refresh()
    delivered = after_delivery.uids[-1]
    assert after_delivery.modseq_of(delivered) > after_append.highestmodseq

    after_expunge = inbox.expunge([a])
    assert after_expunge.highestmodseq > after_delivery.highestmodseq
    gone = inbox.modseq.vanished(after_delivery.highestmodseq, after_expunge.uids, after_expunge.uidnext)
    assert gone == [(a, a)]
    assert inbox.modseq.vanished(after_expunge.highestmodseq, after_expunge.uids, after_expunge.uidnext) == []


def test_setting_a_flag_that_is_already_set_changes_nothing(tmp_path, storage):
    deliver(tmp_path, storage, 1)
    inbox = open_inbox(tmp_path, storage)
    uid = inbox.refresh().uids[0]
    seen = inbox.store([uid], "", frozenset({"\\Seen"}))
    again = inbox.store([uid], "", frozenset({"\\Seen"}))
    assert again.highestmodseq == seen.highestmodseq           # RFC 7162 3.1.11


def test_modseqs_survive_a_restart_and_never_go_back(tmp_path, storage):
    deliver(tmp_path, storage, 5)
    inbox = open_inbox(tmp_path, storage)
    uids = inbox.refresh().uids
    for uid in uids[:3]:
        inbox.store([uid], "", frozenset({"\\Flagged"}))
    inbox.expunge([uids[4]])
    before = inbox.state
    del inbox

    restarted = open_inbox(tmp_path, storage).refresh()
    assert restarted.modseqs == before.modseqs and restarted.highestmodseq == before.highestmodseq
    later = open_inbox(tmp_path, storage)
    later.refresh()
    changed = later.store([uids[0]], "", frozenset())
    assert changed.highestmodseq > before.highestmodseq
    assert later.modseq.vanished(before.highestmodseq, changed.uids, changed.uidnext) == []
    assert later.modseq.vanished(before.highestmodseq - 1, changed.uids, changed.uidnext) == [(uids[4], uids[4])]


def test_a_flag_change_by_another_program_is_seen(tmp_path):
    deliver(tmp_path, "maildir", 2)
    inbox = open_inbox(tmp_path, "maildir")
    before = inbox.refresh()
    cur = tmp_path / "alice" / "cur"
    new = tmp_path / "alice" / "new"
    name = min(os.listdir(new), key=maildir.arrival_order)   # UID 1 (names sort as text: M99999 > M100000)
    os.rename(new / name, cur / (name + ":2,S"))          # what mutt does to mark a message read
    after = inbox.refresh()
    assert after.flags[0] == {"\\Seen"} and after.modseqs[0] > before.highestmodseq
    assert after.modseqs[1] == before.modseqs[1]


@pytest.mark.parametrize("damage", ["delete", "garbage", "cut"])
def test_a_lost_or_damaged_journal_restarts_above_every_value_given_out(tmp_path, storage, damage):
    deliver(tmp_path, storage, 4)
    inbox = open_inbox(tmp_path, storage)
    uids = inbox.refresh().uids
    inbox.store([uids[1]], "", frozenset({"\\Seen"}))
    inbox.expunge([uids[0]])
    before = inbox.state
    del inbox
    path = journal(tmp_path, storage)
    if damage == "delete":
        os.unlink(path)
    elif damage == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"\x00\xffnot a journal\n7 x y\n")
    else:
        with open(path, "ab") as handle:
            handle.write(b"12 34")                          # a record cut short by a crash
    after = open_inbox(tmp_path, storage).refresh()
    assert after.uidvalidity == before.uidvalidity         # the messages did not change
    assert after.highestmodseq >= before.highestmodseq
    if damage != "cut":
        # Nothing is known any more: every message counts as changed, the expunged UID as gone.
        assert min(after.modseqs) > before.highestmodseq
        fresh = open_inbox(tmp_path, storage)
        fresh.refresh()
        assert fresh.modseq.vanished(before.highestmodseq, after.uids, after.uidnext) == [(uids[0], uids[0])]
    else:
        assert after.modseqs == before.modseqs


def test_a_second_process_sees_appended_records(tmp_path):
    deliver(tmp_path, "maildir", 3)
    inbox = open_inbox(tmp_path, "maildir")
    state = inbox.refresh()
    other = ModseqLog(journal(tmp_path, "maildir"))
    other.observe(state.uidvalidity, state.uidnext, list(zip(state.uids, state.flags)))
    assert other.modseq == dict(zip(state.uids, state.modseqs))
    changed = inbox.store([state.uids[2]], "", frozenset({"\\Answered"}))
    other.observe(changed.uidvalidity, changed.uidnext, list(zip(changed.uids, changed.flags)))
    assert other.modseq[state.uids[2]] == changed.highestmodseq == other.highest


def test_a_store_appends_a_line_instead_of_rewriting(tmp_path):
    deliver(tmp_path, "maildir", 50)
    inbox = open_inbox(tmp_path, "maildir")
    uids = inbox.refresh().uids
    path = journal(tmp_path, "maildir")
    inode, size = os.stat(path).st_ino, os.path.getsize(path)
    inbox.store([uids[7]], "", frozenset({"\\Seen"}))
    assert os.stat(path).st_ino == inode and 0 < os.path.getsize(path) - size < 60


def test_conditional_store_refuses_what_changed_since(tmp_path, storage):
    deliver(tmp_path, storage, 2)
    inbox = open_inbox(tmp_path, storage)
    state = inbox.refresh()
    a, b = state.uids
    known = state.highestmodseq
    inbox.store([a], "", frozenset({"\\Flagged"}))
    after, refused = inbox.store_unchanged_since([a, b], "+", frozenset({"\\Seen"}), known)
    assert refused == {a}
    assert after.flags_of(a) == {"\\Flagged"} and after.flags_of(b) == {"\\Seen"}
    again, refused = inbox.store_unchanged_since([b], "-", frozenset({"\\Seen"}), after.highestmodseq)
    assert not refused and again.flags_of(b) == set()


def test_range_helpers():
    assert gaps([2, 3, 7], 10) == [(1, 1), (4, 6), (8, 9)]
    assert subtract([(1, 10)], [(3, 4), (8, 12)]) == [(1, 2), (5, 7)]
    assert format_ranges([(1, 1), (4, 6)]) == "1,4:6"
    assert first_known([3, 5, 9, 10], [1, 2, 4], [3, 5, 11]) == 5
    assert clock_value() < 2 ** 63
