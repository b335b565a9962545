"""Upgrade safety: mailboxes written by the code before issue 9 (e33e790) keep every UID, flag, folder and UIDL.

tests/fixtures/upgrade/ was made by tests/fixtures/make_upgrade_fixture.py run at commit e33e790;
expected.json is what that code reported. The new store opens a copy and must report the same.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from appliance.inline import InlinePool, InlineReactor
from appliance.store import folder as folder_module
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore
from tests.unit.test_store_behaviour import result_of

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "upgrade")
STORES = {"maildir": MaildirStore, "mbox": MboxStore}


def expected(fmt: str) -> dict:
    with open(os.path.join(FIXTURE, "expected.json"), encoding="utf-8") as handle:
        return json.load(handle)[fmt]


@pytest.fixture(params=["maildir", "mbox"])
def upgraded(request, tmp_path):
    """(format, store, mailbox path) over a private copy of the fixture, with the empty folders git drops."""
    fmt = request.param
    root = tmp_path / "mail"
    shutil.copytree(FIXTURE, root)
    with open(os.path.join(FIXTURE, "dirs.txt"), encoding="utf-8") as handle:
        for directory in handle.read().split():
            os.makedirs(root / directory, exist_ok=True)
    folder_module._registry.clear()           # as after a restart: nothing known in memory
    store = STORES[fmt](str(root / fmt / "{local}"), InlineReactor(), InlinePool())
    yield fmt, store, str(root / fmt / "alice")
    folder_module._registry.clear()


def imap_report(account) -> dict:
    """What the fixture script recorded with the old code, computed with the new one."""
    folders = {}
    for name in account.names():
        folder = account.folder(name)
        state = folder.refresh()
        metas = folder.meta(list(state.uids))
        folders[name] = {
            "uidvalidity": state.uidvalidity,
            "uidnext": state.uidnext,
            "messages": [{"uid": uid, "flags": sorted(state.flags_of(uid)), "recent": uid in state.fresh,
                          "size": metas[uid].size, "sha1": hashlib.sha1(folder.read(uid)).hexdigest()}
                         for uid in state.uids],
        }
    return folders


def test_imap_uidvalidity_uids_flags_and_folders_are_kept(upgraded):
    fmt, store, path = upgraded
    account = store.account(path)
    account.ensure_special()
    assert account.names() == expected(fmt)["names"]
    assert sorted(account.subscriptions()) == expected(fmt)["subscriptions"]
    assert imap_report(account) == expected(fmt)["folders"]


def test_pop3_uidls_sizes_and_contents_are_kept(upgraded):
    fmt, store, path = upgraded
    drop = result_of(store.open_maildrop(path))
    listed = {entry.uid: (entry.size, hashlib.sha1(result_of(drop.read(n))).hexdigest()) for n, entry in drop.live()}
    assert listed == {row["uidl"]: (row["size"], row["sha1"]) for row in expected(fmt)["pop3"]}
    assert drop.count() == len(expected(fmt)["pop3"])


def test_pop3_lists_in_imap_uid_order(upgraded):
    """POP3 numbers follow the UIDs now; the old POP3 order differed only for hand-dropped files."""
    fmt, store, path = upgraded
    drop = result_of(store.open_maildrop(path))
    by_sha = [row["sha1"] for row in expected(fmt)["folders"]["INBOX"]["messages"]]
    assert [hashlib.sha1(result_of(drop.read(n))).hexdigest() for n, _ in drop.live()] == by_sha


def test_pop3_first_then_imap_still_agrees(upgraded):
    """A POP3 login before any IMAP one (the uid list is read, not rebuilt) changes no UID."""
    fmt, store, path = upgraded
    result_of(store.open_maildrop(path))
    folder_module._registry.clear()
    assert imap_report(store.account(path))["INBOX"] == expected(fmt)["folders"]["INBOX"]


def test_new_mail_after_the_upgrade_gets_the_next_uid(upgraded):
    fmt, store, path = upgraded
    if fmt == "maildir":
        from appliance.store.maildir import write
        write(path, b"Subject: after\r\n\r\nupgrade\r\n")
    else:
        from appliance.store.mbox import append
        append(path, b"Subject: after\r\n\r\nupgrade\r\n", "x@example.test")
    state = store.account(path).folder("INBOX").refresh()
    old = expected(fmt)["folders"]["INBOX"]
    assert state.uids == tuple(m["uid"] for m in old["messages"]) + (old["uidnext"],)
    assert state.uidvalidity == old["uidvalidity"]
