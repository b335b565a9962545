"""Storage quotas outside IMAP: the users file's quota field, `user quota`, measuring usage, the local
courier's deferral (4.2.2, temporary), RCPT's 452 4.2.2, and what `status` shows."""
from __future__ import annotations

import os

import pytest
from twisted.python.failure import Failure

from appliance import statusview
from appliance.couriers.local import LocalCourier
from appliance.directory.file import (FileDirectory, add_user, check_users_file, grant_address, set_password,
                                      set_quota)
from appliance.envelope import Envelope, Recipient
from appliance.inline import InlinePool, InlineReactor
from appliance.interfaces import UserRecord
from appliance.replies import SMTPReplyError
from appliance.status import quota_report
from appliance.store.maildir import MaildirAccount, MaildirStore, write
from appliance.store.mbox import MboxAccount, MboxStore, append
from appliance.store.quota import MailboxFull, Quotas, UsageMeter
from tests.unit.test_cli import CONF, run

BODY = b"Subject: s\r\n\r\n" + b"z" * 1000 + b"\r\n"
LF_SIZE = len(BODY.replace(b"\r\n", b"\n"))


def outcome(d, clock=None):
    out = []
    d.addBoth(out.append)
    if clock is not None:
        clock.advance(0)             # the store writes a reactor turn's deliveries as one batch
    assert out, "the Deferred has not fired"
    return out[0]


# ---- the users file and `user quota` -------------------------------------------------------------------
def test_quota_field_is_written_only_when_set_and_survives_other_edits(tmp_path):
    users = str(tmp_path / "users")
    add_user(users, "alice@example.test", "pw")
    plain = (tmp_path / "users").read_text()
    assert plain.count(":") == 3                       # the old four-field line, for older readers
    set_quota(users, "alice@example.test", 2 << 30)
    assert (tmp_path / "users").read_text().rstrip("\n").endswith("::quota=2G")
    set_password(users, "alice@example.test", "new")
    grant_address(users, "alice@example.test", "sales@example.test")
    line = (tmp_path / "users").read_text().rstrip("\n")
    assert line.endswith(":sales@example.test:quota=2G")
    set_quota(users, "alice@example.test", 0)
    assert (tmp_path / "users").read_text().rstrip("\n").endswith(":quota=0")
    set_quota(users, "alice@example.test", None)
    assert (tmp_path / "users").read_text().rstrip("\n").endswith(":sales@example.test")


def test_daemon_reads_the_quota_into_the_record(tmp_path):
    users = str(tmp_path / "users")
    add_user(users, "alice@example.test", "pw")
    add_user(users, "bob@example.test", "pw")
    set_quota(users, "alice@example.test", 500 << 20)
    set_quota(users, "bob@example.test", 0)
    directory = FileDirectory(users, InlineReactor(), InlinePool())
    assert outcome(directory.lookup("alice@example.test")).quota == 500 << 20
    assert outcome(directory.lookup("bob@example.test")).quota == 0


def test_a_bad_quota_is_a_problem_of_that_line_only(tmp_path):
    users = tmp_path / "users"
    add_user(str(users), "alice@example.test", "pw")
    users.write_text(users.read_text().rstrip("\n") + ":quota=lots\n")
    problems = check_users_file(str(users))
    assert len(problems) == 1 and "bad quota" in problems[0] and problems[0].startswith(f"{users}:1:")


def test_user_quota_command(capsys, tmp_path):
    conf = tmp_path / "mailappliance.conf"
    conf.write_text(CONF + "\n[storage]\nquota = 1G\n")
    run(capsys, "--config", str(conf), "user", "add", "alice@example.test", stdin="pw\n")
    assert run(capsys, "--config", str(conf), "user", "quota", "alice@example.test", "500M") == (
        0, "alice@example.test may store 500M\n", "")
    assert "quota=500M" in (tmp_path / "users").read_text()
    assert run(capsys, "--config", str(conf), "user", "quota", "alice@example.test", "0") == (
        0, "alice@example.test may store unlimited\n", "")
    assert run(capsys, "--config", str(conf), "user", "quota", "alice@example.test", "none") == (
        0, "alice@example.test follows [storage] quota (1G)\n", "")
    assert "quota=" not in (tmp_path / "users").read_text()
    code, out, err = run(capsys, "--config", str(conf), "user", "quota", "alice@example.test", "lots")
    assert (code, out) == (1, "") and err.startswith("mailappliance: 'lots' is not a size") and "\n" == err[-1:]
    code, out, err = run(capsys, "--config", str(conf), "user", "quota", "nobody@example.test", "1G")
    assert (code, err) == (1, "mailappliance: nobody@example.test: no such user\n")


def test_check_summarises_quotas_only_when_some_are_set(capsys, tmp_path):
    from appliance import tls
    conf = tmp_path / "mailappliance.conf"
    conf.write_text(CONF)
    tls.generate_self_signed("mail.example.test", str(tmp_path / "tls/cert.pem"), str(tmp_path / "tls/key.pem"))
    run(capsys, "--config", str(conf), "user", "add", "alice@example.test", stdin="pw\n")
    assert not any(line.startswith("quota") for line in run(capsys, "--config", str(conf), "check")[1].splitlines())
    run(capsys, "--config", str(conf), "user", "quota", "alice@example.test", "1G")
    assert "quota       unlimited by default, 1 user with their own; `user show ADDRESS` shows usage" in run(
        capsys, "--config", str(conf), "check")[1].splitlines()
    conf.write_text(CONF + "\n[storage]\nquota = 2G\n")
    run(capsys, "--config", str(conf), "user", "quota", "alice@example.test", "none")
    assert "quota       2G by default, 0 users with their own; `user show ADDRESS` shows usage" in run(
        capsys, "--config", str(conf), "check")[1].splitlines()


# ---- measuring -------------------------------------------------------------------------------------------
def test_maildir_usage_reads_names_and_stats_only_names_without_a_size(tmp_path, monkeypatch):
    root = str(tmp_path / "alice")
    write(root, BODY)
    write(root + "/.Junk", BODY)
    os.makedirs(root + "/cur", exist_ok=True)
    (tmp_path / "alice/cur/1700000000.other-mda:2,S").write_bytes(b"x" * 300)     # no S= in its name
    meter, account = UsageMeter(), MaildirAccount(root)
    assert meter.mailbox(account) == 2 * LF_SIZE + 300
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: (stats.append(str(path)), real_stat(path, *a, **k))[1])
    assert meter.mailbox(account) == 2 * LF_SIZE + 300
    assert not any("other-mda" in path for path in stats)                # unchanged folders: no file is looked at
    write(root, BODY)                                                     # a delivery changes new/
    assert meter.mailbox(account) == 3 * LF_SIZE + 300
    assert not any("other-mda" in path for path in stats)                # its size was remembered
    os.unlink(tmp_path / "alice/cur/1700000000.other-mda:2,S")
    assert meter.mailbox(account) == 3 * LF_SIZE


def test_remembered_folders_are_bounded(tmp_path):
    meter = UsageMeter(max_folders=2)
    accounts = [MaildirAccount(str(tmp_path / name)) for name in ("a", "b", "c")]
    for account in accounts:
        write(account.root, BODY)
        assert meter.mailbox(account) == LF_SIZE
    assert len(meter._maildirs) == 2
    assert meter.mailbox(accounts[0]) == LF_SIZE            # forgotten, listed again


def test_mbox_usage_is_the_size_of_every_folder_file(tmp_path):
    root = str(tmp_path / "alice")
    append(root, BODY, "bob@example.test")
    account = MboxAccount(root)
    account.create("Trash")
    append(account.delivery_path("Trash"), BODY, "bob@example.test")
    assert UsageMeter().mailbox(account) == os.path.getsize(root) + os.path.getsize(root + ".folders/Trash")
    assert os.path.getsize(root) > LF_SIZE


# ---- delivery and RCPT -------------------------------------------------------------------------------------
@pytest.fixture(params=["maildir", "mbox"])
def quotas(request, tmp_path):
    store_class = {"maildir": MaildirStore, "mbox": MboxStore}[request.param]
    reactor, pool = InlineReactor(), InlinePool()
    store = store_class(str(tmp_path / "mail" / "{domain}" / "{local}"), reactor, pool)
    return Quotas(store, 3000, reactor, pool)


class Directory:
    def __init__(self, *records: UserRecord):
        self.records = {r.address: r for r in records}

    def lookup(self, address):
        from twisted.internet.defer import succeed
        return succeed(self.records.get(address))


BOB = UserRecord("bob@example.test")
ENV = Envelope(id="Q1", sender="alice@example.test", recipients=[Recipient(address="bob@example.test")])


def test_delivery_over_quota_is_a_temporary_4_2_2_and_writes_nothing(quotas):
    courier = LocalCourier(Directory(BOB), quotas.store, quotas=quotas)
    assert not isinstance(outcome(courier.deliver(ENV, ENV.recipients[0], BODY), quotas.reactor), Failure)
    assert not isinstance(outcome(courier.deliver(ENV, ENV.recipients[0], BODY), quotas.reactor), Failure)
    used = quotas.measure(BOB).used
    failure = outcome(courier.deliver(ENV, ENV.recipients[0], BODY), quotas.reactor)   # a third passes 3000
    assert isinstance(failure, Failure) and failure.check(MailboxFull)
    assert failure.value.temporary and failure.value.status == "4.2.2"
    assert quotas.measure(BOB).used == used


def test_own_quota_lets_the_same_delivery_through(quotas):
    roomy = UserRecord("bob@example.test", quota=0)
    courier = LocalCourier(Directory(roomy), quotas.store, quotas=quotas)
    for _ in range(5):
        assert not isinstance(outcome(courier.deliver(ENV, ENV.recipients[0], BODY), quotas.reactor), Failure)


def test_rcpt_for_a_full_mailbox_is_452_4_2_2(quotas):
    directory = Directory(BOB, UserRecord("carol@example.test"))
    rcpt = [Recipient(address="bob@example.test")]
    assert outcome(quotas.admit_recipients(rcpt, directory)) == rcpt
    for _ in range(3):
        quotas.store.write(quotas.store.path_for(BOB), BODY, "x@example.test")
    failure = outcome(quotas.admit_recipients(rcpt, directory))
    assert isinstance(failure, Failure) and failure.check(SMTPReplyError)
    assert failure.value.reply.line() == b"452 4.2.2 Mailbox full"
    # A list with a full member is accepted: that copy waits in the queue, the others go at once.
    both = [Recipient(address="bob@example.test"), Recipient(address="carol@example.test")]
    assert outcome(quotas.admit_recipients(both, directory)) == both
    remote = [Recipient(address="bob@example.test", local=False)]
    assert outcome(quotas.admit_recipients(remote, directory)) == remote
    quotas.default = 0
    assert outcome(quotas.admit_recipients(rcpt, directory)) == rcpt


def test_rcpt_uses_the_size_mail_declared(quotas):
    directory = Directory(BOB)
    rcpt = [Recipient(address="bob@example.test")]
    quotas.store.write(quotas.store.path_for(BOB), BODY, "x@example.test")
    room = 3000 - quotas.measure(BOB).used
    assert outcome(quotas.admit_recipients(rcpt, directory, room)) == rcpt
    failure = outcome(quotas.admit_recipients(rcpt, directory, room + 1))
    assert isinstance(failure, Failure) and failure.value.reply.line() == b"452 4.2.2 Mailbox full"


# ---- status -------------------------------------------------------------------------------------------------
def test_status_lists_nearly_full_mailboxes(quotas):
    assert statusview._quota(quota_report(quotas)) == [
        "quota        default 2.9 KiB; no mailbox at 90% or more (as measured at delivery and IMAP)"]
    for _ in range(3):
        quotas.store.write(quotas.store.path_for(BOB), BODY, "x@example.test")
    usage = quotas.measure(BOB)
    lines = statusview._quota(quota_report(quotas))
    assert lines[0] == "quota        default 2.9 KiB; 1 mailbox at 90% or more, as last measured:"
    assert lines[1] == f"             bob@example.test  {usage.used * 100 // 3000}%  " \
                       f"{statusview.size(usage.used)} of 2.9 KiB"
    assert statusview._quota(None) == []
