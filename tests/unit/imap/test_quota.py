"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA, and NO [OVERQUOTA] for APPEND and COPY, over Maildir and mbox."""
from __future__ import annotations

import pytest
from twisted.cred.portal import Portal

from appliance.config import TLSSection
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore
from appliance.store.quota import Quotas
from tests.unit.imap.harness import Checker, FakeTLS, Session, SyncPool, TLSTransport, tagged, untagged

STORES = {"maildir": MaildirStore, "mbox": MboxStore}
MESSAGE = b"Subject: filler\r\nFrom: bob@example.test\r\n\r\n" + b"x" * 400 + b"\r\n"    # about 450 octets


class QuotaSession(Session):
    """A logged-in harness session whose factory has Quotas with `limit` octets for everyone."""

    def __init__(self, reactor, tmp_path, storage: str, limit: int):
        pool = SyncPool()
        self.store = STORES[storage](str(tmp_path / "mail" / "{domain}" / "{local}"), reactor, pool)
        self.quotas = Quotas(self.store, limit, reactor, pool)
        login = Login(Portal(MailRealm(self.store), [Checker()]), AuthThrottle(reactor), reactor)
        factory = IMAPFactory(login=login, hostname="mail.example.test", tls=FakeTLS(),
                              tls_settings=TLSSection("", "", plaintext_auth_networks=()), implicit_tls=True,
                              reactor=reactor, pool=pool, watcher=FolderWatcher(reactor, pool), quotas=self.quotas)
        self.reactor = reactor
        self.protocol = factory.buildProtocol(None)
        self.transport = TLSTransport("192.0.2.1")
        self.protocol.makeConnection(self.transport)
        self.greeting = self.transport.value()
        self.path = str(tmp_path / "mail" / "example.test" / "alice")

    def deliver(self, message: bytes) -> None:
        self.store.write(self.path, message, "bob@example.test")

    def append(self, tag: bytes, message: bytes, folder: bytes = b"INBOX") -> bytes:
        return self.send(tag + b" APPEND " + folder + b" {%d+}\r\n" % len(message) + message + b"\r\n")


@pytest.fixture(params=sorted(STORES))
def storage(request) -> str:
    return request.param


def session(reactor, tmp_path, storage, limit=2048, messages=0) -> QuotaSession:
    s = QuotaSession(reactor, tmp_path, storage, limit)
    for _ in range(messages):
        s.deliver(MESSAGE)
    return s.login()


def storage_of(reply: bytes) -> tuple[int, int]:
    """(used, limit) in KiB from the QUOTA line of `reply`."""
    line = next(line for line in untagged(reply) if line.startswith(b'* QUOTA "" (STORAGE '))
    used, limit = line[len(b'* QUOTA "" (STORAGE '):-1].split()
    return int(used), int(limit)


def test_capabilities_name_quota(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage)
    assert b" QUOTA QUOTA=RES-STORAGE " in s.cmd(b"c CAPABILITY")


def test_getquotaroot_reports_usage_in_kib(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage, limit=10 * 1024, messages=3)
    reply = s.ok(b"q GETQUOTAROOT INBOX")
    assert untagged(reply)[0] == b'* QUOTAROOT "INBOX" ""'
    used, limit = storage_of(reply)
    assert limit == 10 and used == 2                 # 3 x ~450 octets on disk, rounded up to KiB
    assert tagged(reply, b"q") == b"q OK GETQUOTAROOT completed"
    assert storage_of(s.ok(b'g GETQUOTA ""')) == (2, 10)


def test_usage_counts_every_folder_and_follows_changes(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage, limit=100 * 1024)
    assert storage_of(s.ok(b'g GETQUOTA ""'))[0] == 0
    for n in range(4):
        s.append(b"a%d" % n, MESSAGE, b"Trash")
    assert storage_of(s.ok(b'g GETQUOTA ""'))[0] == 2       # ~1800 octets, in Trash only
    s.ok(b"d DELETE Trash")
    assert storage_of(s.ok(b'g GETQUOTA ""'))[0] == 0


def test_user_without_limit_has_no_quota_root(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage, limit=0, messages=1)
    reply = s.ok(b"q GETQUOTAROOT INBOX")
    assert untagged(reply) == [b'* QUOTAROOT "INBOX"']
    assert s.cmd(b'g GETQUOTA ""') == b"g NO [NONEXISTENT] No such quota root\r\n"
    assert tagged(s.append(b"a", MESSAGE * 20), b"a").startswith(b"a OK [APPENDUID ")


def test_getquotaroot_of_a_missing_mailbox_is_no(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage)
    assert tagged(s.cmd(b"q GETQUOTAROOT Nowhere"), b"q").startswith(b"q NO [NONEXISTENT]")
    assert s.cmd(b'g GETQUOTA "other"') == b"g NO [NONEXISTENT] No such quota root\r\n"


def test_setquota_is_refused(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage)
    assert s.cmd(b'x SETQUOTA "" (STORAGE 999999)') == b"x NO [NOPERM] Quotas are set by the administrator\r\n"
    assert storage_of(s.ok(b'g GETQUOTA ""'))[1] == 2


def test_append_over_quota_is_overquota_until_mail_is_expunged(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage, limit=2048, messages=4)       # ~1800 of 2048 octets
    reply = s.append(b"a1", MESSAGE)
    assert reply == b"a1 NO [OVERQUOTA] Quota exceeded\r\n"
    s.ok(b"s SELECT INBOX")
    s.ok(b"st STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    s.ok(b"e EXPUNGE")
    assert tagged(s.append(b"a2", MESSAGE), b"a2").startswith(b"a2 OK [APPENDUID ")
    assert s.alive


def test_a_refused_append_literal_is_not_run_as_commands(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage, limit=1024, messages=3)
    evil = b"x1 LOGOUT\r\n"
    reply = s.send(b"a APPEND INBOX {%d+}\r\n" % len(evil) + evil + b"\r\n")
    assert reply == b"a NO [OVERQUOTA] Quota exceeded\r\n"
    assert s.alive


def test_copy_over_quota_is_overquota_and_move_is_not(reactor, tmp_path, storage):
    s = session(reactor, tmp_path, storage, limit=2048, messages=3)       # ~1350 of 2048 octets
    s.ok(b"s SELECT INBOX")
    assert s.cmd(b"c COPY 1:3 Trash") == b"c NO [OVERQUOTA] Quota exceeded\r\n"
    assert tagged(s.cmd(b"c1 COPY 1 Trash"), b"c1").startswith(b"c1 OK")       # one more fits
    assert s.cmd(b"c2 UID COPY 1:3 Trash") == b"c2 NO [OVERQUOTA] Quota exceeded\r\n"
    # Now full: moving to Trash (how clients delete) must still work, it adds nothing.
    s.append(b"a", b"Subject: tiny\r\n\r\nx\r\n")
    assert tagged(s.cmd(b"m MOVE 1:2 Trash"), b"m").startswith(b"m OK")
    assert b"* 3 EXISTS" in s.ok(b"t SELECT Trash")


def test_limit_of_the_directory_beats_the_default(reactor, tmp_path, storage):
    from appliance.interfaces import UserRecord
    s = session(reactor, tmp_path, storage, limit=0)
    assert s.quotas.limit(UserRecord("a@example.test", quota=5 << 20)) == 5 << 20
    assert s.quotas.limit(UserRecord("a@example.test", quota=0)) == 0
    s.quotas.default = 1 << 30
    assert s.quotas.limit(UserRecord("a@example.test")) == 1 << 30
    assert s.quotas.limit(UserRecord("a@example.test", quota=0)) == 0
