"""Keywords and \\Recent in the folder layer (store/folder.py, maildir.py, mbox.py), over both formats.

What other programs see on disk (Dovecot's dovecot-keywords and the `:2,` letters), what a second
Folder object (a restarted server) reads back, the 26-keyword limit, and that an appended message
is left for the first session to claim as \\Recent.
"""
from __future__ import annotations

import json
import os

import pytest

from appliance.store import maildir, mbox
from appliance.store.base import MailboxError

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def make(kind: str, tmp_path, fresh: bool = False):
    """The folder of `kind`; `fresh` gives a new Folder object over the same files (a restart)."""
    if kind == "maildir":
        path = str(tmp_path / "Maildir")
        for sub in maildir.SUBDIRS:
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        return maildir.MaildirFolder(path) if fresh else maildir.open_folder(path)
    path = str(tmp_path / "mbox")
    return mbox.MboxFolder(path, path + ".imap") if fresh else mbox.open_folder(path, path + ".imap")


@pytest.fixture(params=["maildir", "mbox"])
def kind(request) -> str:
    return request.param


def test_keywords_are_stored_case_insensitively_and_read_back(kind, tmp_path):
    folder = make(kind, tmp_path)
    first = folder.append(MESSAGE, frozenset({"\\Seen", "$Label1"}), None)
    second = folder.append(MESSAGE + b"2", frozenset(), None)
    folder.store([second], "+", frozenset({"Work", "$label1"}))
    state = folder.store([first], "-", frozenset({"$LABEL1"}))
    assert state.flags_of(first) == {"\\Seen"}
    assert state.flags_of(second) == {"Work", "$Label1"}
    assert state.keywords == ("$Label1", "Work") and not state.keywords_full
    reread = make(kind, tmp_path, fresh=True).refresh()
    assert reread.flags_of(second) == {"Work", "$Label1"} and reread.keywords == ("$Label1", "Work")


def test_a_27th_keyword_is_refused_and_nothing_changes(kind, tmp_path):
    folder = make(kind, tmp_path)
    uid = folder.append(MESSAGE, frozenset(), None)
    state = folder.store([uid], "+", frozenset(f"k{n}" for n in range(26)))
    assert state.keywords_full and len(state.keywords) == 26
    with pytest.raises(MailboxError) as refused:
        folder.store([uid], "", frozenset({"k1", "new"}))
    assert refused.value.code == "LIMIT"
    assert len(folder.state.flags_of(uid)) == 26


def test_appended_mail_waits_to_be_claimed_as_recent(kind, tmp_path):
    folder = make(kind, tmp_path)
    uid = folder.append(MESSAGE, frozenset({"\\Draft"}), None)
    assert folder.state.fresh == {uid}
    assert folder.claim(frozenset({uid})) == {uid}
    assert folder.state.fresh == frozenset() and folder.state.flags_of(uid) == {"\\Draft"}
    assert folder.claim(frozenset({uid})) == frozenset()


def test_changes_are_announced_to_listeners(kind, tmp_path):
    folder = make(kind, tmp_path)
    folder.refresh()
    heard = []
    folder.listen(lambda: heard.append(folder.state))
    uid = folder.append(MESSAGE, frozenset(), None)
    folder.store([uid], "+", frozenset({"\\Seen"}))
    folder.store([uid], "+", frozenset({"\\Seen"}))         # no change: nothing to hear
    folder.expunge([uid])
    assert [len(state.uids) for state in heard] == [1, 1, 0]


def test_maildir_keywords_are_dovecots(tmp_path):
    """Dovecot's file and letters: what it wrote we read, what we write it reads; unknown letters stay."""
    folder = make("maildir", tmp_path)
    path = folder.path
    with open(os.path.join(path, "dovecot-keywords"), "w") as handle:
        handle.write("0 $Forwarded\n2 Important\n")
    with open(os.path.join(path, "cur", "1700000000.M1P1.host:2,Sacx"), "wb") as handle:
        handle.write(MESSAGE)
    state = folder.refresh()
    (uid,) = state.uids
    assert state.flags_of(uid) == {"\\Seen", "$Forwarded", "Important"}
    folder.store([uid], "+", frozenset({"todo"}))
    folder.store([uid], "-", frozenset({"$forwarded"}))
    assert os.listdir(os.path.join(path, "cur")) == ["1700000000.M1P1.host:2,Scdx"]
    with open(os.path.join(path, "dovecot-keywords")) as handle:
        assert handle.read() == "0 $Forwarded\n2 Important\n3 todo\n"


def test_mbox_keywords_live_in_the_side_file(tmp_path):
    folder = make("mbox", tmp_path)
    uid = folder.append(MESSAGE, frozenset({"\\Flagged", "Later"}), None)
    with open(folder.path + ".imap/flags") as handle:
        side = json.load(handle)
    assert side["keywords"] == ["Later"] and list(side["flags"].values()) == ["Fa"]
    assert folder.state.flags_of(uid) == {"\\Flagged", "Later"}
