"""Issue 10 defect 7: no user name and no folder name may map onto another mailbox's side file.

On the base code, mail for `bob.lock` was appended to the file that is `bob`'s dot-lock, and
the next delivery to `bob` deleted it as a stale lock; `bob.imap` and `bob.folders` were bob's
IMAP side folder and folders' folder, and a folder `Sent.lock` was folder Sent's lock.
"""
from __future__ import annotations

import os

import pytest
from twisted.python.failure import Failure

from appliance.errors import MailboxUnavailable
from appliance.inline import InlinePool, InlineReactor
from appliance.interfaces import UserRecord
from appliance.store import folder as folder_module, mailbox_path
from appliance.store.base import MailboxError
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import SIDE_FILE, MboxStore

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def user(local: str, domain: str = "example.test") -> UserRecord:
    return UserRecord(f"{local}@{domain}", frozenset({f"{local}@{domain}"}))


def outcome(d, store=None):
    """The result of `d`; deliveries are batched to the next reactor turn, so `store`'s clock is advanced."""
    results = []
    d.addBoth(results.append)
    if store is not None:
        store.reactor.advance(0)
    assert results, "Deferred has not fired"
    return results[0]


def tree(root) -> dict[str, bytes | None]:
    """Every file under `root` with its bytes (None for a folder)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                found[os.path.relpath(os.path.join(folder, name), root)] = handle.read()
    return found


@pytest.fixture
def mbox_store(tmp_path):
    folder_module._registry.clear()
    yield MboxStore(str(tmp_path / "{domain}" / "{local}"), InlineReactor(), InlinePool()), tmp_path
    folder_module._registry.clear()


@pytest.mark.parametrize("suffix", [".lock", ".imap", ".folders", ".lock.4242.17", ".LOCK"])
def test_mbox_user_named_like_a_side_file_is_refused_and_writes_nothing(mbox_store, suffix):
    store, root = mbox_store
    before = tree(root)
    result = outcome(store.deliver(user("bob" + suffix), MESSAGE, "a@example.org"), store)
    assert isinstance(result, Failure) and result.check(MailboxUnavailable)
    assert tree(root) == before


def test_bob_is_delivered_and_a_stale_looking_lock_name_is_never_a_mailbox(mbox_store):
    """The issue's sequence: bob.lock first, then bob 11 s later; bob's mail arrives, nothing is lost."""
    store, root = mbox_store
    refused = outcome(store.deliver(user("bob.lock"), MESSAGE, "a@example.org"), store)
    assert isinstance(refused, Failure)
    lock = root / "example.test" / "bob.lock"
    assert not lock.exists()
    assert outcome(store.deliver(user("bob"), MESSAGE, "a@example.org"), store) == str(root / "example.test" / "bob")
    assert sorted(os.listdir(root / "example.test")) == ["bob"]


def test_bob_imap_and_bob_folders_never_reach_bobs_side_folders(mbox_store):
    store, root = mbox_store
    path = store.path_for(user("bob"))
    account = outcome(store.open_account(path))          # makes bob.imap/ and bob.folders/ with Sent etc.
    account.folder("Sent")
    before = tree(root)
    for name in ("bob.imap", "bob.folders"):
        assert outcome(store.deliver(user(name), MESSAGE, "a@example.org"), store).check(MailboxUnavailable)
    assert tree(root) == before
    assert account.names() == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]


def test_the_realm_refuses_a_login_whose_mailbox_would_be_a_side_file(mbox_store):
    store, _ = mbox_store
    with pytest.raises(ValueError, match="reserved"):
        store.path_for(user("bob.lock"))


@pytest.mark.parametrize("template, addr", [
    ("/m/{local}@{domain}", "bob@example.lock"),         # bob@example's lock under this template
    ("/m/{local}ck", "bob.lo@example.test"),             # the template completes the suffix
    ("/m/{local}/{domain}", "bob@example.imap"),
])
def test_the_check_is_on_the_filled_path_component_whatever_the_template(template, addr):
    with pytest.raises(ValueError):
        mailbox_path(template, addr, SIDE_FILE)


@pytest.mark.parametrize("addr", ["bob@example.test", "bob.locksmith@example.test", "lock@example.test",
                                  "bob.imapx@example.test", "bob.lock.x@example.test"])
def test_ordinary_names_still_map(addr):
    assert mailbox_path("/m/{domain}/{local}", addr, SIDE_FILE) == "/m/example.test/" + addr.split("@")[0]


def test_components_the_template_fixes_are_not_checked():
    """Only components a placeholder fills can meet another mailbox's side file."""
    assert mailbox_path("/m/{domain}.d/{local}/mbox", "bob@example.test", SIDE_FILE) == "/m/example.test.d/bob/mbox"


def test_maildir_users_are_not_restricted(tmp_path):
    """Maildir keeps every side file inside the mailbox's own directory: `bob.lock` is just a name."""
    store = MaildirStore(str(tmp_path / "{local}"), InlineReactor(), InlinePool())
    for name in ("bob", "bob.lock", "bob.imap"):
        assert outcome(store.deliver(user(name), MESSAGE, "a@example.org"), store).startswith(str(tmp_path / name) + "/new/")
    for name in ("bob", "bob.lock", "bob.imap"):
        assert len(os.listdir(tmp_path / name / "new")) == 1


# --- folders -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Sent.lock", "Sent.imap", "Work.folders", "Sent.lock.12.34"])
def test_mbox_folder_named_like_a_side_file_cannot_be_created(mbox_store, name):
    store, root = mbox_store
    account = outcome(store.open_account(store.path_for(user("bob"))))
    with pytest.raises(MailboxError) as refused:
        account.create(name)
    assert refused.value.code == "CANNOT"
    with pytest.raises(MailboxError):
        account.rename("Junk", name)
    assert account.names() == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]


def test_maildir_folder_named_like_a_replace_file_temporary_is_refused(tmp_path):
    store = MaildirStore(str(tmp_path / "{local}"), InlineReactor(), InlinePool())
    account = outcome(store.open_account(str(tmp_path / "bob")))
    with pytest.raises(MailboxError):
        account.create("mailappliance-uidlist.12.34.tmp")
    account.create("Lists.tmp")                       # an ordinary name ending in tmp is fine
    assert "Lists.tmp" in account.names()


def test_mail_already_at_bobs_lock_path_is_never_deleted_as_a_stale_lock(mbox_store):
    """An installation upgraded with mail for `bob.lock` already at bob's dot-lock path (as the old
    code wrote it, 11 s old): a delivery to bob is retried, and that mail stays untouched."""
    store, root = mbox_store
    folder = root / "example.test"
    folder.mkdir()
    old_mail = b"From a@example.org Mon Jan  1 00:00:00 2024\nSubject: for bob.lock\n\nkeep me\n\n"
    (folder / "bob.lock").write_bytes(old_mail)
    stamp = os.stat(folder / "bob.lock").st_mtime - 11
    os.utime(folder / "bob.lock", (stamp, stamp))
    result = outcome(store.deliver(user("bob"), MESSAGE, "a@example.org"), store)
    assert isinstance(result, Failure) and result.check(MailboxUnavailable)
    assert "not a lock" in str(result.value)
    assert (folder / "bob.lock").read_bytes() == old_mail
