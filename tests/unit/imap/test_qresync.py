"""QRESYNC (RFC 7162 3.2) over a real socket with imaplib, on Maildir and mbox: one round trip resynchronises.

A client remembers (UIDVALIDITY, HIGHESTMODSEQ, its UIDs); another session changes flags, expunges
and a message arrives; `SELECT INBOX (QRESYNC (...))` must then tell exactly what changed, and
nothing else -- also after a server restart.
"""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import messages
from tests.unit.imap.rfc7162 import fetches, number, run, vanished


@pytest.fixture(autouse=True)
def inbox(server):
    """10 messages delivered to the INBOX before each test (the server: conftest.py, Maildir then mbox)."""
    for message in messages(10):
        server.deliver(message)


def qresync_client(server):
    client = server.client()
    enabled = run(client, "ENABLE", "QRESYNC")
    assert enabled.untagged["ENABLED"] == [b"QRESYNC"]
    return client


def remember(client):
    """What a client caches after a full sync: (uidvalidity, highestmodseq)."""
    answer = run(client, "SELECT", "INBOX (CONDSTORE)")
    return number(answer, "UIDVALIDITY"), number(answer, "HIGHESTMODSEQ")


def changes_elsewhere(server):
    """Another session flags 2 and 3, expunges 5 and 7; a message arrives (UID 11)."""
    other = server.client()
    run(other, "SELECT", "INBOX")
    run(other, "UID", "STORE 2,3 +FLAGS (\\Flagged)")
    run(other, "UID", "STORE 5,7 +FLAGS (\\Deleted)")
    assert run(other, "EXPUNGE").status == "OK"
    server.deliver(b"Subject: late\r\n\r\nnew\r\n")
    run(other, "NOOP")
    other.logout()


def test_select_qresync_tells_exactly_what_changed(server):
    validity, highest = remember(server.client())
    changes_elsewhere(server)
    client = qresync_client(server)
    answer = run(client, "SELECT", f"INBOX (QRESYNC ({validity} {highest}))")
    assert answer.status == "OK"
    assert vanished(answer, earlier=True) == {5, 7}
    changed = fetches(answer)
    assert sorted(changed) == [2, 3, 11]
    assert changed[2]["flags"] == {"\\Flagged"} and changed[2]["seq"] == 2
    assert changed[11]["seq"] == 9                         # 10 - 2 expunged + 1 new
    assert all(item["modseq"] > highest for item in changed.values())
    assert number(answer, "HIGHESTMODSEQ") == max(item["modseq"] for item in changed.values())


def test_known_uids_and_a_wrong_uidvalidity(server):
    validity, highest = remember(server.client())
    changes_elsewhere(server)
    client = qresync_client(server)
    answer = run(client, "SELECT", f"INBOX (QRESYNC ({validity} {highest} 1:4,7))")
    assert vanished(answer, earlier=True) == {7}
    assert sorted(fetches(answer)) == [2, 3]
    stale = run(client, "SELECT", f"INBOX (QRESYNC ({validity + 1} {highest}))")
    assert stale.status == "OK" and "VANISHED" not in stale.untagged and "FETCH" not in stale.untagged
    assert number(stale, "HIGHESTMODSEQ") > highest


def test_sequence_match_data_narrows_an_old_resync(server):
    validity, _ = remember(server.client())
    changes_elsewhere(server)
    client = qresync_client(server)
    # A mod-sequence older than anything known: every missing UID is reported...
    full = run(client, "SELECT", f"INBOX (QRESYNC ({validity} 1))")
    assert vanished(full, earlier=True) == {5, 7}
    # ...unless the client proves its numbering is right up to a UID: message 4 is still UID 4.
    narrowed = run(client, "SELECT", f"INBOX (QRESYNC ({validity} 1 1:10 (2,4,6 2,4,6)))")
    assert vanished(narrowed, earlier=True) == {5, 7}   # pair (6, 6) fails: UID 6 is message 5 now
    proven = run(client, "SELECT", f"INBOX (QRESYNC ({validity} 1 1:10 (2,4,5 2,4,6)))")
    assert vanished(proven, earlier=True) == {7}        # (5, 6) holds: nothing up to UID 6 is unknown


def test_expunges_arrive_as_vanished_once_qresync_is_on(server):
    client = qresync_client(server)
    run(client, "SELECT", "INBOX")
    other = server.client()
    run(other, "SELECT", "INBOX")
    run(other, "STORE", "1,2 +FLAGS.SILENT (\\Deleted)")
    run(other, "EXPUNGE")
    update = run(client, "NOOP")
    assert vanished(update, earlier=False) == {1, 2} and "EXPUNGE" not in update.untagged
    run(client, "UID", "STORE 9 +FLAGS.SILENT (\\Deleted)")
    own = run(client, "EXPUNGE")
    assert vanished(own, earlier=False) == {9}
    assert own.text.startswith(b"[HIGHESTMODSEQ ")     # RFC 7162 3.2.7
    plain = server.client()
    run(plain, "SELECT", "INBOX")
    run(plain, "STORE", "1 +FLAGS.SILENT (\\Deleted)")
    assert "EXPUNGE" in run(plain, "EXPUNGE").untagged   # a session without QRESYNC keeps EXPUNGE


def test_uid_fetch_vanished_modifier(server):
    client = qresync_client(server)
    highest = number(run(client, "SELECT", "INBOX"), "HIGHESTMODSEQ")
    other = server.client()
    run(other, "SELECT", "INBOX")
    run(other, "UID", "STORE 4 +FLAGS (\\Seen)")
    run(other, "UID", "STORE 8 +FLAGS.SILENT (\\Deleted)")
    run(other, "EXPUNGE")
    run(client, "NOOP")                                   # told: VANISHED 8, FETCH 4
    answer = run(client, "UID", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest} VANISHED)")
    assert vanished(answer, earlier=True) == {8}
    assert sorted(fetches(answer)) == [4]
    assert run(client, "FETCH", f"1:* (FLAGS) (CHANGEDSINCE {highest} VANISHED)").status == "BAD"
    assert run(client, "UID", "FETCH 1:* (FLAGS) (VANISHED)").status == "BAD"


def test_qresync_needs_enable(server):
    client = server.client()
    assert run(client, "SELECT", "INBOX (QRESYNC (1 1))").status == "BAD"
    assert run(client, "SELECT", "INBOX").status == "OK"
    assert run(client, "UID", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)").status == "BAD"


def test_vanished_survives_a_restart(server):
    validity, highest = remember(server.client())
    changes_elsewhere(server)
    server.restart()
    client = qresync_client(server)
    answer = run(client, "SELECT", f"INBOX (QRESYNC ({validity} {highest}))")
    assert vanished(answer, earlier=True) == {5, 7}
    assert sorted(fetches(answer)) == [2, 3, 11]
    again = number(answer, "HIGHESTMODSEQ")
    assert run(client, "SELECT", f"INBOX (QRESYNC ({validity} {again}))").untagged.get("FETCH") is None


def test_an_idling_client_hears_vanished(server):
    client = qresync_client(server)
    run(client, "SELECT", "INBOX")
    client.send(b"i1 IDLE\r\n")
    assert client.readline().startswith(b"+ ")
    other = server.client()
    run(other, "SELECT", "INBOX")
    run(other, "UID", "STORE 6 +FLAGS.SILENT (\\Deleted)")
    run(other, "UID", "STORE 2 +FLAGS (\\Answered)")
    run(other, "EXPUNGE")
    heard: list[bytes] = []
    while not any(line.startswith(b"* VANISHED") for line in heard) or not any(b"UID 2 " in line for line in heard):
        heard.append(client.readline())                  # the socket's timeout bounds the wait
    client.send(b"DONE\r\n")
    assert client.readline().startswith(b"i1 OK")
    assert b"* VANISHED 6\r\n" in heard
    fetch = next(line for line in heard if b"UID 2 " in line)      # (each change may come on its own)
    assert b" FETCH (" in fetch and b"MODSEQ (" in fetch and b"\\Answered" in fetch
