"""IMAP's per-session view of a folder (appliance/imap/view.py) over a real Maildir (moved from test_mailbox.py)."""
from __future__ import annotations

import pytest

from appliance.imap.view import SequenceError, View, parse_set
from appliance.store.maildir import MaildirFolder, write

SEEN = frozenset({"\\Seen"})


def message(subject: str, body: str = "text\r\n") -> bytes:
    return f"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n{body}".encode()


@pytest.fixture
def maildir(tmp_path) -> str:
    path = str(tmp_path / "alice")
    for n in range(3):
        write(path, message(f"m{n}"))
    return path


def test_view_reports_other_sessions_changes(maildir):
    folder = MaildirFolder(maildir)
    view = View(folder.refresh(), frozenset(), readonly=False)
    folder.store([3], "", SEEN)
    folder.expunge([1])
    write(maildir, message("new"))
    # Mid-FETCH: the new message and the flags, but message 1 stays until EXPUNGE may be said.
    assert view.updates(folder.refresh(), allow_expunge=False) == \
        [b"* 4 EXISTS", b"* 0 RECENT", b"* 3 FETCH (FLAGS (\\Seen))"]
    assert view.updates(folder.state) == [b"* 1 EXPUNGE"]
    assert view.resolve(parse_set(b"2:*"), by_uid=False) == [(2, 3), (3, 4)]
    assert view.resolve(parse_set(b"1:4294967295"), by_uid=True) == [(1, 2), (2, 3), (3, 4)]
    with pytest.raises(SequenceError):
        view.resolve(parse_set(b"4"), by_uid=False)
    for bad in (b"0", b"1:", b"x", b"-1"):
        with pytest.raises(SequenceError):
            parse_set(bad)
