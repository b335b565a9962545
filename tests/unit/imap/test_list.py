"""LIST and LSUB as a client sees them (RFC 3501 6.3.8-9), over a real socket, on Maildir and on mbox.

Dovecot's answers to the same commands are the model where the RFC leaves a choice (see
appliance/imap/listing.py).
"""
from __future__ import annotations

import imaplib
import re
import threading

import pytest

from appliance.store.maildir import MaildirAccount
from appliance.store.mbox import MboxAccount
from tests.unit.imap.live import LiveServer, command

LINE = re.compile(rb'^\(([^)]*)\) "\." ("(?:[^"\\]|\\.)*"|[^ ]+)(?: (.*))?$')


@pytest.fixture
def client(server):
    imap = server.client()
    yield imap
    imap.logout()


def listed(answer: tuple) -> list[tuple[str, str]]:
    """imaplib's LIST/LSUB answer as (attributes, name) pairs."""
    typ, data = answer
    assert typ == "OK", data
    pairs = []
    for item in data:
        if item is None:
            continue
        match = LINE.match(item)
        assert match, item
        name = match.group(2)
        if name.startswith(b'"'):
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        pairs.append((match.group(1).decode(), name.decode()))
    return pairs


def names(answer: tuple) -> list[str]:
    return [name for _, name in listed(answer)]


def make(client: imaplib.IMAP4, *folders: str) -> None:
    for folder in folders:
        assert client.create(f'"{folder}"')[0] == "OK", folder


# ---- defect 1: whole names, case-sensitive except INBOX -------------------------------------------------
def test_a_pattern_without_wildcards_matches_only_that_whole_name(client):
    make(client, "a.foobar")
    assert client.rename('"a.foobar"', '"a.foobarx"')[0] == "OK"
    assert names(client.list('""', '"a.foobar"')) == []
    assert names(client.list('""', '"a.foobarx"')) == ["a.foobarx"]
    assert names(client.list('""', '"a.foo"')) == []


def test_names_match_case_sensitively_and_inbox_in_any_case(client):
    make(client, "Foo", "foo", "foo.sub")
    assert names(client.list('""', '"FOO"')) == []
    assert names(client.list('""', '"foo"')) == ["foo"]             # not Foo, not foo.sub
    assert names(client.list('""', '"Foo"')) == ["Foo"]
    make(client, "FOO")
    assert names(client.list('""', '"FOO"')) == ["FOO"]
    for spelling in ("inbox", "InBoX", "INBOX", "inb%", "I*X"):
        assert names(client.list('""', f'"{spelling}"')) == ["INBOX"], spelling


def test_percent_stops_at_the_delimiter_and_star_does_not(client):
    make(client, "Projects.2026.Q1", "Projects.2026.Q2", "Sentinel")
    top = listed(client.list('""', "%"))
    assert ("\\Noselect \\HasChildren", "Projects") in top
    assert not any(name.startswith("Projects.") for _, name in top)
    assert names(client.list('""', "Projects.%")) == ["Projects.2026"]
    assert names(client.list('""', "Projects.%.Q1")) == ["Projects.2026.Q1"]
    assert names(client.list('""', "Projects*")) == ["Projects", "Projects.2026", "Projects.2026.Q1",
                                                     "Projects.2026.Q2"]
    assert names(client.list('""', "*.Q%")) == ["Projects.2026.Q1", "Projects.2026.Q2"]
    assert names(client.list('""', "Sent")) == ["Sent"]


def test_levels_that_are_not_folders_are_noselect_with_children(client):
    make(client, "a.b.c")
    assert listed(client.list('""', "*"))[-3:] == [("\\Noselect \\HasChildren", "a"),
                                                   ("\\Noselect \\HasChildren", "a.b"),
                                                   ("\\HasNoChildren", "a.b.c")]
    assert client.select("a.b")[0] == "NO"


def test_the_reference_is_put_before_the_pattern(client):
    make(client, "foo.bar", "foo.baz.deep")
    assert names(client.list('"foo."', "%")) == ["foo.bar", "foo.baz"]
    assert names(client.list('"fo"', '"o.b*"')) == ["foo.bar", "foo.baz", "foo.baz.deep"]
    assert names(client.list('"foo.baz"', '".*"')) == ["foo.baz.deep"]


def test_an_empty_pattern_gives_the_delimiter_and_the_reference_root(client):
    assert listed(client.list('""', '""')) == [("\\Noselect", "")]
    assert listed(client.list('"foo.bar"', '""')) == [("\\Noselect", "foo.")]
    assert listed(client.list('"foo"', '""')) == [("\\Noselect", "")]


def test_children_and_special_use_attributes(client):
    make(client, "Sent.2025", "Work")
    found = dict((name, attrs) for attrs, name in listed(client.list('""', "*")))
    assert found["Sent"] == "\\HasChildren \\Sent"
    assert found["Sent.2025"] == "\\HasNoChildren"
    assert found["Work"] == "\\HasNoChildren"
    assert found["INBOX"] == "\\HasNoChildren"
    assert found["Trash"] == "\\HasNoChildren \\Trash"


# ---- defect 6: subscriptions belong to the user -------------------------------------------------------
def test_lsub_keeps_the_name_of_a_deleted_folder(client):
    make(client, "Lists")
    assert client.subscribe('"Lists"')[0] == "OK"
    assert client.delete('"Lists"')[0] == "OK"
    assert ("", "Lists") in listed(client.lsub('""', "*"))
    assert "Lists" not in names(client.list('""', "*"))
    make(client, "Lists")                                     # re-created: subscribed again
    assert ("\\HasNoChildren", "Lists") in listed(client.lsub('""', "*"))


def test_a_name_subscribed_before_it_exists_is_listed_by_lsub(client):
    assert client.subscribe('"Future.Plans"')[0] == "OK"
    assert listed(client.lsub('""', "Future*")) == [("", "Future.Plans")]
    assert listed(client.lsub('""', "%")).count(("\\Noselect", "Future")) == 1   # RFC 3501 6.3.9
    assert client.unsubscribe('"Future.Plans"')[0] == "OK"
    assert listed(client.lsub('""', "Future*")) == []


def test_lsub_matches_like_list(client):
    make(client, "foo", "Foo")
    client.subscribe("foo")
    client.subscribe("Foo")
    assert names(client.lsub('""', '"foo"')) == ["foo"]
    assert names(client.lsub('""', '"FOO"')) == []
    assert names(client.lsub('""', '"inbox"')) == ["INBOX"]


def test_subscriptions_survive_a_restart(tmp_path):
    server = LiveServer(tmp_path, "maildir")
    try:
        client = server.client()
        client.subscribe('"Gone.Soon"')
        make(client, "Kept")
        client.subscribe("Kept")
        client.logout()
        server.restart()
        client = server.client()
        assert {"Gone.Soon", "Kept"} <= set(names(client.lsub('""', "*")))
        client.logout()
    finally:
        server.stop()


def test_rename_keeps_the_old_subscription_and_subscribes_the_new_name(client):
    make(client, "Old", "Old.Child", "Other")
    client.subscribe("Old")
    client.subscribe('"Old.Child"')
    assert client.rename("Old", "New")[0] == "OK"
    subscribed = dict((name, attrs) for attrs, name in listed(client.lsub('""', "*")))
    assert subscribed["Old"] == "" and subscribed["Old.Child"] == ""     # kept, RFC 3501 6.3.6
    assert subscribed["New"] == "\\HasChildren" and subscribed["New.Child"] == "\\HasNoChildren"
    assert "Other" not in subscribed


def test_subscriptions_from_two_sessions_are_all_kept(server):
    first, second = server.client(), server.client()
    for n in range(10):
        first.subscribe(f'"One{n}"')
        second.subscribe(f'"Two{n}"')
    found = set(names(first.lsub('""', "*")))
    assert {f"One{n}" for n in range(10)} | {f"Two{n}" for n in range(10)} <= found
    first.logout()
    second.logout()


@pytest.mark.parametrize("account_class", [MaildirAccount, MboxAccount])
def test_subscriptions_changed_by_many_threads_at_once_are_all_kept(tmp_path, account_class):
    """Each SUBSCRIBE reads, changes and replaces one file, in a pool thread; none may undo another."""
    root = str(tmp_path / "alice")
    account_class(root).ensure_special()

    def subscribe(prefix: str) -> None:
        for n in range(15):
            account_class(root).subscribe(f"{prefix}{n}")

    threads = [threading.Thread(target=subscribe, args=(prefix,)) for prefix in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(account_class(root).subscriptions()) == 4 * 15 + 5        # and INBOX, Drafts, Junk, Sent, Trash


# ---- names: modified UTF-7, quoted strings and literals -------------------------------------------------
GERMAN = "Entwürfe.Größe"
GERMAN_WIRE = GERMAN.encode("imap4-utf-7").decode()           # Entw&APw-rfe.Gr&APYA3w-e


def test_non_ascii_names_round_trip_in_modified_utf7(client):
    assert GERMAN_WIRE == "Entw&APw-rfe.Gr&APYA3w-e"
    make(client, GERMAN_WIRE)
    found = listed(client.list('""', '"Entw&APw-rfe*"'))
    assert found == [("\\Noselect \\HasChildren", "Entw&APw-rfe"), ("\\HasNoChildren", GERMAN_WIRE)]
    assert client.select(f'"{GERMAN_WIRE}"')[0] == "OK"
    assert client.append(f'"{GERMAN_WIRE}"', None, None, b"Subject: x\r\n\r\nbody\r\n")[0] == "OK"
    assert client.rename(f'"{GERMAN_WIRE}"', '"&ZeVnLIqe-"')[0] == "OK"          # 日本語
    assert names(client.list('""', '"&ZeVnLIqe-"')) == ["&ZeVnLIqe-"]
    status = client.status('"&ZeVnLIqe-"', "(MESSAGES)")
    assert status[0] == "OK" and status[1][0] == b'"&ZeVnLIqe-" (MESSAGES 1)'
    assert client.subscribe('"&ZeVnLIqe-"')[0] == "OK"
    assert names(client.lsub('""', '"&ZeVnLIqe-"')) == ["&ZeVnLIqe-"]
    assert client.delete('"&ZeVnLIqe-"')[0] == "OK"


def test_a_name_in_broken_modified_utf7_is_refused_and_the_session_goes_on(client):
    assert client.create('"Bad&name"')[0] == "NO"
    assert client.create('"Bad&AGE"')[0] == "NO"                  # unterminated base64
    assert client.noop()[0] == "OK"


@pytest.mark.parametrize("plus", [b"", b"+"])
def test_every_mailbox_command_takes_its_names_as_literals(server, plus):
    raw = server.client()

    def lit(text: bytes) -> bytes:
        return b"{%d%b}\r\n" % (len(text), plus)

    def ok(parts: list[bytes]) -> bytes:
        answer = b"".join(command(raw, *parts))
        tag = parts[0].split(b" ", 1)[0]
        assert re.search(rb"^" + tag + rb" OK", answer, re.M), answer
        return answer

    name = GERMAN_WIRE.encode()
    ok([b"c1 CREATE " + lit(name), name + b"\r\n"])
    ok([b"c2 CREATE " + lit(b"Work"), b"Work\r\n"])
    ok([b"r1 RENAME " + lit(b"Work"), b"Work " + lit(b"Job"), b"Job\r\n"])
    ok([b"s1 SUBSCRIBE " + lit(b"Job"), b"Job\r\n"])
    answer = ok([b"l1 LIST " + lit(b""), b" " + lit(b"J*"), b"J*\r\n"])
    assert b'* LIST (\\HasNoChildren) "." "Job"' in answer
    answer = ok([b"l2 LSUB " + lit(b""), b" " + lit(b"Job"), b"Job\r\n"])
    assert b'* LSUB (\\HasNoChildren) "." "Job"' in answer
    answer = ok([b'l3 LIST "" (' + lit(b"Job"), b"Job " + lit(name), name + b")\r\n"])
    assert answer.count(b"* LIST ") == 2 and b'"' + name + b'"' in answer
    answer = ok([b"st STATUS " + lit(name), name + b" (MESSAGES)\r\n"])
    assert b'* STATUS "' + name + b'" (MESSAGES 0)' in answer
    message = b"Subject: literal\r\n\r\nhello\r\n"
    ok([b"ap APPEND " + lit(b"Job"), b"Job (\\Seen) " + lit(message), message + b"\r\n"])
    answer = ok([b"se SELECT " + lit(b"Job"), b"Job\r\n"])
    assert b"* 1 EXISTS" in answer
    ok([b"ex EXAMINE " + lit(name), name + b"\r\n"])
    ok([b"u1 UNSUBSCRIBE " + lit(b"Job"), b"Job\r\n"])
    ok([b"un UNSELECT\r\n"])
    ok([b"d1 DELETE " + lit(b"Job"), b"Job\r\n"])
    answer = ok([b'l4 LIST "" ' + lit(b"*"), b"*\r\n"])
    assert b'"Job"' not in answer and b'"' + name + b'"' in answer
