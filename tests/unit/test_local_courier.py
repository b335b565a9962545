"""Local delivery: unknown users bounce, an unreachable directory is retried, trace headers are added."""
from __future__ import annotations

import pytest
from twisted.internet.defer import fail, succeed
from twisted.python.failure import Failure

from appliance.couriers.local import LocalCourier, junk_in_inbox
from appliance.envelope import Envelope, Recipient
from appliance.errors import (DirectoryUnavailable, MailboxUnavailable, NoSuchMailbox, PermanentFailure,
                              TemporaryFailure)
from appliance.inline import InlinePool, InlineReactor
from appliance.interfaces import UserRecord
from appliance.store import folder as folder_module
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore

BOB = UserRecord(address="bob@example.test", addresses=frozenset({"bob@example.test", "robert@example.test"}))


class FakeDirectory:
    def __init__(self, result):
        self.result = result

    def lookup(self, address):
        return fail(self.result) if isinstance(self.result, Exception) else succeed(self.result)


class FakeStore:
    def __init__(self, error=None):
        self.error = error
        self.delivered = []

    def deliver(self, user, message, sender):
        if self.error:
            return fail(self.error)
        self.delivered.append((user, message, sender))
        return succeed("/var/mail/example.test/bob/new/1.host")


def outcome(d):
    out = []
    d.addBoth(out.append)
    assert out
    return out[0]


ENV = Envelope(id="Q1", sender="alice@example.test", recipients=[Recipient(address="robert@example.test")])
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def test_delivers_with_return_path_and_delivered_to_on_top():
    store = FakeStore()
    where = outcome(LocalCourier(FakeDirectory(BOB), store).deliver(ENV, ENV.recipients[0], MESSAGE))
    assert where == "/var/mail/example.test/bob/new/1.host"
    assert store.delivered == [(BOB, b"Return-Path: <alice@example.test>\r\nDelivered-To: robert@example.test\r\n"
                                     + MESSAGE, "alice@example.test")]


def test_null_sender_gives_an_empty_return_path():
    store = FakeStore()
    env = Envelope(id="Q2", sender="", recipients=[Recipient(address="bob@example.test")])
    outcome(LocalCourier(FakeDirectory(BOB), store).deliver(env, env.recipients[0], MESSAGE))
    assert store.delivered[0][1].startswith(b"Return-Path: <>\r\n")


def test_unknown_user_is_a_permanent_5_1_1():
    store = FakeStore()
    result = outcome(LocalCourier(FakeDirectory(None), store).deliver(ENV, ENV.recipients[0], MESSAGE))
    assert isinstance(result, Failure) and result.check(NoSuchMailbox)
    assert result.value.status == "5.1.1" and not result.value.temporary
    assert store.delivered == []


def test_directory_unavailable_stays_temporary():
    result = outcome(LocalCourier(FakeDirectory(DirectoryUnavailable("ldap down")), FakeStore())
                     .deliver(ENV, ENV.recipients[0], MESSAGE))
    assert isinstance(result, Failure) and result.check(TemporaryFailure) and result.value.temporary


def test_a_store_failure_passes_through():
    result = outcome(LocalCourier(FakeDirectory(BOB), FakeStore(MailboxUnavailable("disk full")))
                     .deliver(ENV, ENV.recipients[0], MESSAGE))
    assert result.check(MailboxUnavailable)


class FakePrograms:
    def __init__(self):
        self.given = []

    def deliver(self, envelope, recipient, message):
        self.given.append((recipient.address, message))
        return succeed(recipient.address)


def test_commands_and_files_go_to_the_programs_courier_without_a_directory_lookup():
    programs, store = FakePrograms(), FakeStore()
    courier = LocalCourier(FakeDirectory(DirectoryUnavailable("must not be asked")), store, programs)
    for target in ("|/usr/bin/archive -q", "/var/mail/archive.mbox"):
        rcpt = Recipient(address=target, original="archive@example.test")
        assert outcome(courier.deliver(ENV, rcpt, MESSAGE)) == target
    assert programs.given == [("|/usr/bin/archive -q", MESSAGE), ("/var/mail/archive.mbox", MESSAGE)]
    assert store.delivered == []


def test_commands_bounce_when_allow_commands_is_off():
    rcpt = Recipient(address="|/usr/bin/archive", original="archive@example.test")
    result = outcome(LocalCourier(FakeDirectory(BOB), FakeStore()).deliver(ENV, rcpt, MESSAGE))
    assert result.check(PermanentFailure)
    assert str(result.value) == "5.7.1 delivery to commands and files is turned off ([aliases] allow_commands = no)"


# ---- spam: the Junk folder, or INBOX marked ----------------------------------------------------------------------
SPAM = b"X-Spam-Flag: YES\r\nSubject: cheap pills\r\n\r\nbuy\r\n"
TRACE = b"Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\n"


@pytest.fixture(params=[MaildirStore, MboxStore], ids=["maildir", "mbox"])
def store(request, tmp_path):
    folder_module._registry.clear()
    yield request.param(str(tmp_path / "{local}"), InlineReactor(), InlinePool())
    folder_module._registry.clear()


def deliver_junk(store, message: bytes = SPAM) -> str:
    env = Envelope(id="Q3", sender="alice@example.test",
                   recipients=[Recipient(address="bob@example.test", folder="Junk")])
    d = LocalCourier(FakeDirectory(BOB), store).deliver(env, env.recipients[0], message)
    store.reactor.advance(0)
    return outcome(d)


def messages_in(store, name: str) -> list[bytes]:
    folder = store.account(store.path_for(BOB)).folder(name)
    return [folder.read(uid) for uid in folder.refresh().uids]


def test_spam_lands_in_junk_unchanged_for_an_imap_user(store):
    store.account(store.path_for(BOB)).ensure_special()
    where = deliver_junk(store)
    assert "Junk" in where
    assert messages_in(store, "Junk") == [TRACE + SPAM]
    assert messages_in(store, "INBOX") == []


def test_spam_lands_in_inbox_marked_for_a_user_without_junk(store):
    deliver_junk(store)
    assert messages_in(store, "INBOX") == [TRACE + b"X-Spam-Flag: YES\r\nSubject: [SPAM] cheap pills\r\n\r\nbuy\r\n"]


def test_marking_sets_the_flag_and_the_prefix_once():
    assert junk_in_inbox(b"Subject: hi\r\n\r\nx\r\n") == b"X-Spam-Flag: YES\r\nSubject: [SPAM] hi\r\n\r\nx\r\n"
    assert junk_in_inbox(b"X-Spam-Flag: YES\r\nSubject: [SPAM] hi\r\n\r\nx\r\n") == \
        b"X-Spam-Flag: YES\r\nSubject: [SPAM] hi\r\n\r\nx\r\n"
    assert junk_in_inbox(b"From: a@b.test\r\n\r\nx\r\n") == \
        b"Subject: [SPAM]\r\nX-Spam-Flag: YES\r\nFrom: a@b.test\r\n\r\nx\r\n"
    assert junk_in_inbox(b"X-Spam-Flag: NO\r\nSubject: hi\r\n\r\nx\r\n") == \
        b"X-Spam-Flag: YES\r\nSubject: [SPAM] hi\r\n\r\nx\r\n"
    assert junk_in_inbox(b"Subject:folded\r\n next line\r\n\r\nx\r\n").startswith(
        b"X-Spam-Flag: YES\r\nSubject: [SPAM] folded\r\n next line\r\n")
