"""Local delivery: unknown users bounce, an unreachable directory is retried, trace headers are added."""
from __future__ import annotations

from twisted.internet.defer import fail, succeed
from twisted.python.failure import Failure

from appliance.couriers.local import LocalCourier
from appliance.envelope import Envelope, Recipient
from appliance.errors import (DirectoryUnavailable, MailboxUnavailable, NoSuchMailbox, PermanentFailure,
                              TemporaryFailure)
from appliance.interfaces import UserRecord

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
