"""CONDSTORE (RFC 7162 3.1) and ENABLE (RFC 5161) over a real socket with imaplib, on Maildir and mbox.

Two live sessions: what one changes, the other sees with the MODSEQ the first was told; values
survive a server restart over the same files and never go back.
"""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import messages
from tests.unit.imap.rfc7162 import fetches, number, run


@pytest.fixture(autouse=True)
def inbox(server):
    """4 messages delivered to the INBOX before each test (the server: conftest.py, Maildir then mbox)."""
    for message in messages(4):
        server.deliver(message)


def condstore_select(client, name="INBOX"):
    answer = run(client, "SELECT", f"{name} (CONDSTORE)")
    assert answer.status == "OK", answer.text
    return answer


def test_capabilities_and_enable(server):
    client = server.client()
    assert {"ENABLE", "CONDSTORE", "QRESYNC"} <= set(client.capabilities)
    answer = run(client, "ENABLE", "CONDSTORE X-UNKNOWN")
    assert answer.status == "OK" and answer.untagged["ENABLED"] == [b"CONDSTORE"]
    assert run(client, "ENABLE", "CONDSTORE").untagged["ENABLED"] in ([None], [b""])   # nothing newly enabled
    assert run(client, "ENABLE", "").status == "BAD"


def test_select_condstore_and_fetch_modseq(server):
    client = server.client()
    plain = run(client, "SELECT", "INBOX")
    assert "HIGHESTMODSEQ" not in plain.untagged          # not CONDSTORE-aware yet (as Dovecot)
    answer = condstore_select(client)
    highest = number(answer, "HIGHESTMODSEQ")
    assert answer.untagged["CLOSED"]                      # RFC 7162 3.2.11: the INBOX selected before
    seen = fetches(run(client, "FETCH", "1:* (UID MODSEQ)"))
    assert sorted(seen) == [1, 2, 3, 4]
    assert all(0 < item["modseq"] <= highest for item in seen.values())
    assert max(item["modseq"] for item in seen.values()) == highest
    status = run(client, "STATUS", "INBOX (HIGHESTMODSEQ MESSAGES)")
    assert status.untagged["STATUS"] == [b'"INBOX" (HIGHESTMODSEQ %d MESSAGES 4)' % highest]


def test_a_change_by_one_session_reaches_the_other_with_its_modseq(server):
    writer, watcher = server.client(), server.client()
    condstore_select(writer)
    before = number(condstore_select(watcher), "HIGHESTMODSEQ")

    stored = fetches(run(writer, "STORE", "2 +FLAGS (\\Flagged)"))
    assert stored[2]["flags"] == {"\\Flagged"}
    modseq = stored[2]["modseq"]
    assert modseq > before

    update = fetches(run(watcher, "NOOP"))
    assert update == {2: {"seq": 2, "flags": {"\\Flagged"}, "modseq": modseq}}
    changed = fetches(run(watcher, "FETCH", f"1:* (UID FLAGS) (CHANGEDSINCE {before})"))
    assert set(changed) == {2} and changed[2]["modseq"] == modseq
    assert run(watcher, "FETCH", f"1:* (FLAGS) (CHANGEDSINCE {modseq})").untagged.get("FETCH") is None

    found = run(watcher, "SEARCH", f"MODSEQ {before + 1}")
    assert found.untagged["SEARCH"] == [b"2 (MODSEQ %d)" % modseq]
    assert run(watcher, "UID", f"SEARCH MODSEQ \"/flags/\\\\draft\" all {modseq + 1}").untagged["SEARCH"] == [b""]


def test_appends_deliveries_and_expunges_raise_highestmodseq(server):
    writer, watcher = server.client(), server.client()
    condstore_select(writer)
    before = number(condstore_select(watcher), "HIGHESTMODSEQ")

    assert writer.append("INBOX", None, None, b"Subject: appended\r\n\r\nhi\r\n")[0] == "OK"
    server.deliver(b"Subject: delivered\r\n\r\nhello\r\n")
    assert b"6" in run(watcher, "NOOP").untagged["EXISTS"]        # the client learns of them first
    news = fetches(run(watcher, "UID", "FETCH 5:* (FLAGS) (CHANGEDSINCE %d)" % before))
    assert sorted(news) == [5, 6] and all(item["modseq"] > before for item in news.values())

    after_new = max(item["modseq"] for item in news.values())
    run(writer, "STORE", "1 +FLAGS.SILENT (\\Deleted)")
    assert run(writer, "EXPUNGE").status == "OK"
    status = run(watcher, "STATUS", "INBOX (HIGHESTMODSEQ)")
    assert int(status.untagged["STATUS"][0].split()[-1].rstrip(b")")) > after_new


def test_conditional_store_refuses_what_another_session_changed(server):
    first, second = server.client(), server.client()
    known = number(condstore_select(first), "HIGHESTMODSEQ")
    condstore_select(second)

    stored = run(second, "STORE", "3 +FLAGS (\\Seen)")
    assert stored.status == "OK"
    refused = run(first, "STORE", f"1,3 (UNCHANGEDSINCE {known}) +FLAGS.SILENT (\\Answered)")
    assert refused.status == "OK" and refused.text.startswith(b"[MODIFIED 3]")
    lines = fetches(refused)
    assert lines[1]["flags"] is None and lines[1]["modseq"] > known        # .SILENT, yet FETCH with MODSEQ
    assert lines[3]["flags"] == {"\\Seen"}                                 # the refused one, as it is now
    flags = fetches(run(second, "FETCH", "1:3 (UID FLAGS)"))
    assert "\\Answered" in flags[1]["flags"] and "\\Answered" not in flags[3]["flags"]

    by_uid = run(first, "UID", "STORE 3 (UNCHANGEDSINCE 0) +FLAGS (\\Draft)")
    assert by_uid.text.startswith(b"[MODIFIED 3]")
    assert run(first, "STORE", "1 (UNCHANGEDSINCE x) +FLAGS (\\Draft)").status == "BAD"


def test_enable_while_selected_tells_highestmodseq(server):
    client = server.client()
    run(client, "SELECT", "INBOX")
    answer = run(client, "ENABLE", "CONDSTORE")
    assert number(answer, "HIGHESTMODSEQ") > 0


def test_modseqs_survive_a_restart(server):
    client = server.client()
    condstore_select(client)
    run(client, "STORE", "1 +FLAGS (\\Seen)")
    run(client, "STORE", "4 +FLAGS (\\Flagged)")
    before = fetches(run(client, "UID", "FETCH 1:* (MODSEQ)"))
    highest = number(condstore_select(client), "HIGHESTMODSEQ")

    server.restart()
    client = server.client()
    answer = condstore_select(client)
    assert number(answer, "HIGHESTMODSEQ") == highest
    assert fetches(run(client, "UID", "FETCH 1:* (MODSEQ)")) == before
    changed = fetches(run(client, "STORE", "2 +FLAGS (\\Seen)"))
    assert changed[2]["modseq"] > highest


def test_bad_modifiers_are_refused(server):
    client = server.client()
    condstore_select(client)
    for args in ("1 (FLAGS) (CHANGEDSINCE)", "1 (FLAGS) (CHANGEDSINCE -1)", "1 (FLAGS) (FROB 1)",
                 "1 (FLAGS) (CHANGEDSINCE 1 VANISHED)"):
        assert run(client, "FETCH", args).status == "BAD", args
    assert run(client, "SELECT", "INBOX (FROB)").status == "BAD"
    assert run(client, "NOOP").status == "OK"


def test_changes_reported_after_a_store_carry_modseq(server):
    writer, watcher = server.client(), server.client()
    condstore_select(writer)
    condstore_select(watcher)
    other = fetches(run(writer, "STORE", "2 +FLAGS (\\Answered)"))[2]["modseq"]
    answer = fetches(run(watcher, "STORE", "3 +FLAGS (\\Seen)"))
    assert answer[2] == {"seq": 2, "flags": {"\\Answered"}, "modseq": other}     # the other session's change
    assert answer[3]["modseq"] > other
