"""What makes opening and re-opening a folder cheap, and why it is still right.

- a message first described gets ENVELOPE, RFC822.SIZE and INTERNALDATE from its header block
  and a count of line ends; its BODYSTRUCTURE is worked out only when asked, and equals the
  eager one (any generated MIME message, LF or CRLF stored);
- RFC822.SIZE is counted from the file, never taken from a `,S=` in its name (a hand-written or
  wrong S= would be served as the size otherwise; Dovecot trusts it, we do not: the file is read
  for ENVELOPE anyway, and counting its line ends costs less than opening it);
- index files of the earlier format are used as they are, damaged ones rebuilt;
- a warm refresh costs a few stat calls, no listing; a change in the same clock tick as the
  last scan is still found.
"""
from __future__ import annotations

import json
import os
import time

import pytest
from hypothesis import given, strategies as st

from appliance import mime
from appliance.store import folder as folder_module, maildir, mbox
from appliance.store.index import INDEX
from tests.unit.properties.strategies import examples
from tests.unit.properties.test_mime import entities
from tests.unit.test_store_behaviour import Maildir, Mbox, fmt, inbox, path, restart, store  # noqa: F401

NAME = "1700000000.M1P1.example"


def eager(stored: bytes) -> tuple[int, bytes, bytes]:
    """(RFC822.SIZE, ENVELOPE, BODYSTRUCTURE) the way the whole-message parse gives them."""
    raw = mime.crlf(stored)
    part = mime.parse(raw)
    return len(raw), mime.envelope(part.head), mime.bodystructure(part, True)


@given(st.lists(entities(), min_size=1, max_size=3), st.booleans())
@examples(0.2)
def test_lazy_description_equals_the_eager_one(tmp_path_factory, messages, lf):
    restart()
    path = str(tmp_path_factory.mktemp("lazy") / "alice")
    stored = [m.replace(b"\r\n", b"\n") if lf else m for m in messages]
    Maildir.stored_messages(path, stored)
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uids = list(folder.refresh().uids)
    light = folder.meta(uids)
    assert all(meta.bodystructure is None for meta in light.values())
    full = folder.meta(uids, structure=True)
    for uid, data in zip(uids, stored):
        size, envelope, structure = eager(data)
        assert (light[uid].size, light[uid].envelope) == (size, envelope)
        assert (full[uid].size, full[uid].envelope, full[uid].bodystructure) == (size, envelope, structure)
        assert full[uid].internaldate == light[uid].internaldate


def test_bodystructure_asked_later_is_kept_in_the_index(fmt, store, path):
    fmt.stored_messages(path, [b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n"])
    folder = inbox(store, path)
    uid = folder.refresh().uids[0]
    assert folder.meta([uid])[uid].bodystructure is None
    structure = folder.meta([uid], structure=True)[uid].bodystructure
    assert structure is not None and structure.startswith(b'(("TEXT" "PLAIN"')
    restart()
    again = inbox(store, path)
    again.refresh()
    again._describe = None                   # from the index alone now: reading a message would fail here
    assert again.meta([uid], structure=True)[uid].bodystructure == structure


def test_size_is_counted_from_the_file_not_taken_from_its_name(store, path):
    os.makedirs(os.path.join(path, "new"))
    stored = b"Subject: s\n\nline one\nline two\n"
    with open(os.path.join(path, "new", f"1700000000.M1P1.example,S=5"), "wb") as handle:   # a wrong S=
        handle.write(stored)
    with open(os.path.join(path, "new", f"1700000001.M1P1.example,S={len(stored)}"), "wb") as handle:
        handle.write(stored)                                              # our own S=: the LF size
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uids = list(folder.refresh().uids)
    wire = len(mime.crlf(stored))
    assert [meta.size for meta in folder.meta(uids).values()] == [wire, wire]
    assert [size for _, _, size in folder.pop3_listing()] == [wire, wire]


def write_index(meta_dir: str, lines: list[str]) -> None:
    with open(os.path.join(meta_dir, INDEX), "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def test_an_index_of_the_earlier_format_is_used_without_reading_the_messages(store, path):
    Maildir.stored_messages(path, [b"Subject: real\n\nbody\n"])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    key = folder._keys[uid]
    # Five strings and numbers per line, as every earlier version wrote (see tests/fixtures/upgrade).
    write_index(path, [json.dumps([key, 77, 1000.5, "(envelope from the index)", "(structure from the index)"])])
    restart()
    folder = maildir.MaildirAccount(path).folder("INBOX")
    folder.refresh()
    folder._describe = None
    meta = folder.meta([uid], structure=True)[uid]
    assert (meta.size, meta.internaldate, meta.envelope, meta.bodystructure) == (
        77, 1000.5, b"(envelope from the index)", b"(structure from the index)")


@pytest.mark.parametrize("damage", [
    "not json at all",
    '["%s", "size", 1.0, "e", "s"]',
    '["%s", 10, 1.0, null, "s"]',
    '["%s", 10, 1.0, "e"]',
    '["%s", 10, 1.0, "\\u0100", "s"]',                     # not latin-1: not ours
])
def test_a_damaged_index_is_rebuilt_never_trusted(store, path, damage):
    stored = b"Subject: real\n\nbody\n"
    Maildir.stored_messages(path, [stored])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    write_index(path, [damage.replace("%s", folder._keys[uid]) if "%s" in damage else damage])
    restart()
    folder = maildir.MaildirAccount(path).folder("INBOX")
    folder.refresh()
    meta = folder.meta([uid], structure=True)[uid]
    assert (meta.size, meta.envelope, meta.bodystructure) == eager(stored)


def test_a_record_without_bodystructure_is_completed_not_dropped(store, path):
    """What this version writes before BODYSTRUCTURE is asked: null there; an older reader skips
    such a line (it wants a string) and describes that message again, which is safe."""
    stored = b"Subject: real\n\nbody\n"
    Maildir.stored_messages(path, [stored])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    folder.meta([uid])
    with open(os.path.join(path, INDEX), encoding="utf-8") as handle:
        assert json.loads(handle.readline())[4] is None
    assert folder.meta([uid], structure=True)[uid].bodystructure == eager(stored)[2]


def age(folder_path: str, seconds: float) -> None:
    """Move the folder's directory stamps into the past, as if it had been quiet that long."""
    then = time.time() - seconds
    for sub in ("new", "cur"):
        os.utime(os.path.join(folder_path, sub), (then, then))


def test_a_warm_refresh_lists_nothing(store, path, monkeypatch):
    Maildir.stored_messages(path, [b"Subject: a\n\n", b"Subject: b\n\n"])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    age(path, 60)
    state = folder.refresh()
    listings = []
    real = maildir._message_files
    monkeypatch.setattr(maildir, "_message_files", lambda where: listings.append(where) or real(where))
    assert folder.refresh() is state and listings == []
    Maildir.by_hand(path, b"Subject: c\n\n", "1700000009.M9P1.example")
    assert len(folder.refresh().uids) == 3 and listings


def test_a_change_in_the_same_clock_tick_as_the_scan_is_still_found(store, path):
    """A delivery right after a scan may leave the directory's mtime as the scan saw it (coarse
    clocks): a scan that close to the last change is not trusted to be the last word."""
    Maildir.stored_messages(path, [b"Subject: a\n\n"])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    assert len(folder.refresh().uids) == 1
    seen = os.stat(os.path.join(path, "new")).st_mtime_ns
    Maildir.by_hand(path, b"Subject: b\n\n", "1700000009.M9P1.example")
    os.utime(os.path.join(path, "new"), ns=(seen, seen))          # the same tick: the stamp did not move
    assert len(folder.refresh().uids) == 2


def test_mbox_flags_changed_by_another_process_are_seen_by_a_warm_refresh(store, path):
    Mbox.stored_messages(path, [b"Subject: a\n\nx\n"])
    os.utime(path, (time.time() - 60, time.time() - 60))       # quiet for a minute: its stamp is trusted
    folder = mbox.MboxAccount(path).folder("INBOX")
    uid = folder.refresh().uids[0]
    restart()
    other = mbox.MboxAccount(path).folder("INBOX")      # another process's view of the same files
    other.refresh()
    assert folder.refresh().flags_of(uid) == frozenset()
    other.store([uid], "", frozenset({"\\Flagged"}))
    assert folder.refresh().flags_of(uid) == {"\\Flagged"}


def test_recently_used_folders_stay_open_within_a_bound(tmp_path):
    restart()
    folder_module._kept.clear()
    folders = [maildir.open_folder(str(tmp_path / f"box{n}")) for n in range(folder_module.KEEP_OPEN + 3)]
    ids = [id(f) for f in folders]
    del folders
    assert len(folder_module._kept) == folder_module.KEEP_OPEN
    assert id(maildir.open_folder(str(tmp_path / f"box{folder_module.KEEP_OPEN + 2}"))) == ids[-1]


def test_a_listing_made_to_find_a_renamed_file_does_not_hide_other_changes(store, path):
    """Reading a message another process renamed lists the folder again; the new message that
    arrived meanwhile must still reach the next refresh (the listing's stamp is not a publish)."""
    Maildir.stored_messages(path, [b"Subject: a\n\n"])
    folder = maildir.MaildirAccount(path).folder("INBOX")
    age(path, 60)
    uid = folder.refresh().uids[0]
    name = os.listdir(os.path.join(path, "new"))[0]
    os.rename(os.path.join(path, "new", name), os.path.join(path, "cur", name + ":2,S"))   # another reader
    Maildir.by_hand(path, b"Subject: b\n\n", "1700000009.M9P1.example")
    age(path, 30)
    assert folder.read(uid) == b"Subject: a\r\n\r\n"            # found again by listing the folder
    state = folder.refresh()
    assert len(state.uids) == 2 and state.flags_of(uid) == {"\\Seen"}
