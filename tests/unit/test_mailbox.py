"""The IMAP side of the stores on temporary folders: UIDs, flags, new mail, the index, mbox, MIME, views."""
from __future__ import annotations

import os

import pytest

from appliance.mailbox import mime
from appliance.mailbox.account import MaildirAccount, MailboxError
from appliance.mailbox.maildir import MaildirFolder
from appliance.mailbox.mbox import MboxAccount, MboxFolder
from appliance.imap.view import SequenceError, View, parse_set
from appliance.store.maildir import write
from appliance.store.mbox import append

SEEN = frozenset({"\\Seen"})


def message(subject: str, body: str = "text\r\n") -> bytes:
    return f"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n{body}".encode()


@pytest.fixture
def maildir(tmp_path) -> str:
    path = str(tmp_path / "alice")
    for n in range(3):
        write(path, message(f"m{n}"))
    return path


def test_uids_survive_reopening_and_are_never_reused(maildir):
    first = MaildirFolder(maildir).refresh()
    assert first.uids == (1, 2, 3)
    MaildirFolder(maildir).expunge([3])
    write(maildir, message("later"))
    again = MaildirFolder(maildir).refresh()
    assert again.uidvalidity == first.uidvalidity
    assert again.uids == (1, 2, 4)
    assert again.uidnext == 5


def test_flags_are_kept_in_the_file_name(maildir):
    folder = MaildirFolder(maildir)
    folder.refresh()
    folder.store({2: frozenset({"\\Seen", "\\Flagged"})})
    assert any(name.endswith(":2,FS") for name in os.listdir(os.path.join(maildir, "cur")))
    assert MaildirFolder(maildir).refresh().flags_of(2) == {"\\Seen", "\\Flagged"}


def test_new_mail_is_found_and_claimed_once(maildir):
    folder = MaildirFolder(maildir)
    snapshot = folder.refresh()
    assert snapshot.fresh == {1, 2, 3}
    assert folder.claim(snapshot.fresh) == {1, 2, 3}
    assert folder.claim(snapshot.fresh) == frozenset()
    assert not folder.changed()
    write(maildir, message("new"))
    assert folder.changed()
    assert folder.refresh().fresh == {4}


def test_index_answers_without_reading_the_message_again(maildir):
    folder = MaildirFolder(maildir)
    folder.refresh()
    assert b'"m0"' in folder.meta([1])[1].envelope
    for name in os.listdir(os.path.join(maildir, "new")):
        with open(os.path.join(maildir, "new", name), "r+b") as handle:   # same name, other content
            handle.write(message("XX"))
    reopened = MaildirFolder(maildir)
    reopened.refresh()
    metas = reopened.meta([1, 2])
    assert b'"m0"' in metas[1].envelope          # from the index: the file was not read again
    assert b'"XX"' in metas[2].envelope          # not indexed yet: read now
    assert metas[1].size == len(message("m0"))


def test_append_keeps_flags_and_date(maildir):
    folder = MaildirFolder(maildir)
    uid = folder.append(message("appended"), SEEN, 1_000_000_000.0)
    assert folder.state.flags_of(uid) == SEEN
    assert folder.meta([uid])[uid].internaldate == 1_000_000_000.0
    assert folder.read(uid) == message("appended")


def test_account_special_folders_and_names(tmp_path):
    account = MaildirAccount(str(tmp_path / "bob"))
    account.ensure_special()
    assert account.names() == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    assert account.special_use("Sent") == "\\Sent"
    account.create("Lists.Python")
    account.rename("Lists.Python", "Lists.Twisted")
    assert "Lists.Twisted" in account.names() and "Lists.Python" not in account.names()
    for bad in ("../etc", "a/b", ".hidden", "a..b", ""):
        with pytest.raises(MailboxError):
            account.create(bad)
    with pytest.raises(MailboxError):
        account.delete("INBOX")


def test_mbox_uids_flags_and_expunge_survive_reopening(tmp_path):
    path = str(tmp_path / "alice")
    for n in range(3):
        append(path, message(f"m{n}", "From here on\r\n"), "bob@example.org")
    account = MboxAccount(path)
    folder = account.folder("INBOX")
    assert folder.refresh().uids == (1, 2, 3)
    folder.store({2: SEEN})
    folder.expunge([1])
    assert folder.read(2) == message("m1", "From here on\r\n")
    reopened = MboxFolder(path, path + ".imap")
    snapshot = reopened.refresh()
    assert snapshot.uids == (2, 3)
    assert snapshot.flags_of(2) == SEEN
    append(path, message("m3"), "bob@example.org")
    assert reopened.refresh().uids == (2, 3, 4)


def test_mime_sections_and_bodystructure():
    raw = (b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=\"XyZ\"\r\n\r\n"
           b"preamble\r\n--XyZ\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
           b"--XyZ\r\nContent-Type: application/pdf; name=\"A B.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"QUJD\r\n--XyZ--\r\n")
    assert mime.section(raw, (1,), "") == b"hello"
    assert mime.section(raw, (2,), "MIME").startswith(b"Content-Type: application/pdf")
    assert mime.section(raw, (), "HEADER.FIELDS", [b"SUBJECT"]) == b"Subject: parts\r\n\r\n"
    structure = mime.bodystructure(mime.parse(raw))
    assert structure.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1')
    assert b'("NAME" "A B.pdf")' in structure and structure.endswith(b'"MIXED" ("BOUNDARY" "XyZ") NIL NIL NIL)')
    with pytest.raises(mime.SectionError):
        mime.section(raw, (3,), "")


def test_view_reports_other_sessions_changes(maildir):
    folder = MaildirFolder(maildir)
    view = View(folder.refresh(), frozenset(), readonly=False)
    folder.store({3: SEEN})
    folder.expunge([1])
    write(maildir, message("new"))
    assert view.updates(folder.refresh(), allow_expunge=False) is None
    lines = view.updates(folder.state)
    assert lines == [b"* 1 EXPUNGE", b"* 3 EXISTS", b"* 0 RECENT", b"* 2 FETCH (FLAGS (\\Seen))"]
    assert view.resolve(parse_set(b"2:*"), by_uid=False) == [(2, 3), (3, 4)]
    assert view.resolve(parse_set(b"1:4294967295"), by_uid=True) == [(1, 2), (2, 3), (3, 4)]
    with pytest.raises(SequenceError):
        view.resolve(parse_set(b"4"), by_uid=False)
    for bad in (b"0", b"1:", b"x", b"-1"):
        with pytest.raises(SequenceError):
            parse_set(bad)
