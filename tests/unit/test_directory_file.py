"""The file directory: admin commands on the users file, and the daemon's view of it."""
from __future__ import annotations

import base64
import os
import stat

import pytest
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from appliance import maillog
from appliance.config import (ApplianceSection, Config, DirectorySection, ListenSection, StorageSection,
                              TLSSection)
from appliance.directory import file as dirfile
from appliance.directory import make_directory
from appliance.directory.file import (FileDirectory, UserFileError, add_user, check_users_file, delete_user,
                                      list_users, set_password)
from appliance.interfaces import IDirectory
from appliance.passwords import hash_password, verify_password
from appliance.inline import InlinePool, InlineReactor as FakeReactor


class SyncPool(InlinePool):
    """Runs the "thread" work immediately and records what ran there."""

    def __init__(self):
        self.ran = []

    def callInThreadWithCallback(self, on_result, func, *args, **kw):
        self.ran.append(func.__name__)
        try:
            result = func(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ManualPool(SyncPool):
    """Holds the work until run() is called, like a busy real pool."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def callInThreadWithCallback(self, *args, **kw):
        self.pending.append((args, kw))

    def run(self):
        pending, self.pending = self.pending, []
        for args, kw in pending:
            SyncPool.callInThreadWithCallback(self, *args, **kw)


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def users(tmp_path):
    return str(tmp_path / "users")


@pytest.fixture
def errors(monkeypatch):
    logged = []
    monkeypatch.setattr(maillog, "error", lambda what, **fields: logged.append((what, fields)))
    return logged


def lines_of(path):
    with open(path) as f:
        return f.read().splitlines()


# -- admin commands ----------------------------------------------------------------------------

def test_added_user_is_one_line_with_a_scrypt_hash_and_no_secret(users):
    add_user(users, "Alice@Example.TEST", "s3cret")
    [line] = lines_of(users)
    address, hashed, secret, extras = line.split(":")
    assert address == "alice@example.test"
    assert verify_password("s3cret", hashed)
    assert (secret, extras) == ("", "")
    assert "s3cret" not in line


def test_users_file_and_lock_are_private(users):
    add_user(users, "alice@example.test", "pw")
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(users + ".lock").st_mode) == 0o600


def test_no_temporary_files_are_left_behind(users, tmp_path):
    add_user(users, "alice@example.test", "pw")
    add_user(users, "bob@example.test", "pw")
    assert sorted(os.listdir(tmp_path)) == ["users", "users.lock"]


def test_shared_secret_stores_the_password_base64(users):
    add_user(users, "alice@example.test", "pässword", shared_secret=True)
    secret = lines_of(users)[0].split(":")[2]
    assert base64.b64decode(secret).decode() == "pässword"


def test_adding_an_existing_user_is_refused(users):
    add_user(users, "alice@example.test", "pw")
    with pytest.raises(UserFileError, match="alice@example.test: user already exists"):
        add_user(users, "ALICE@example.test", "other")
    assert len(lines_of(users)) == 1


def test_adding_someones_extra_address_is_refused(users):
    with open(users, "w") as f:
        f.write(f"alice@example.test:{hash_password('pw')}::info@example.test\n")
    with pytest.raises(UserFileError, match="already exists"):
        add_user(users, "info@example.test", "pw")


@pytest.mark.parametrize("bad", ["alice", "@example.test", "alice@", "al ice@example.test", "a,b@example.test", ""])
def test_bad_address_is_an_operator_error(users, bad):
    with pytest.raises(UserFileError, match="not a valid address"):
        add_user(users, bad, "pw")
    assert not os.path.exists(users)


def test_list_users_in_file_order_and_missing_file_is_empty(users):
    assert list_users(users) == []
    add_user(users, "bob@example.test", "pw")
    add_user(users, "alice@example.test", "pw")
    assert list_users(users) == ["bob@example.test", "alice@example.test"]


def test_set_password_changes_the_hash_and_keeps_comments_and_extras(users):
    with open(users, "w") as f:
        f.write(f"# our users\n\nalice@example.test:{hash_password('old')}::info@example.test\n")
    set_password(users, "alice@example.test", "new")
    comment, blank, line = lines_of(users)
    assert (comment, blank) == ("# our users", "")
    address, hashed, secret, extras = line.split(":")
    assert verify_password("new", hashed) and not verify_password("old", hashed)
    assert (secret, extras) == ("", "info@example.test")


def test_set_password_rederives_a_stored_secret(users):
    add_user(users, "alice@example.test", "old", shared_secret=True)
    set_password(users, "alice@example.test", "new")
    assert base64.b64decode(lines_of(users)[0].split(":")[2]) == b"new"


@pytest.mark.parametrize("before, choice, stored", [(True, False, False), (False, True, True), (False, None, False)])
def test_set_password_can_add_or_drop_the_secret(users, before, choice, stored):
    add_user(users, "alice@example.test", "old", shared_secret=before)
    set_password(users, "alice@example.test", "new", shared_secret=choice)
    assert bool(lines_of(users)[0].split(":")[2]) is stored


def test_set_password_for_unknown_user(users):
    add_user(users, "alice@example.test", "pw")
    with pytest.raises(UserFileError, match="bob@example.test: no such user"):
        set_password(users, "bob@example.test", "pw")


def test_delete_user_removes_only_that_user(users):
    add_user(users, "alice@example.test", "pw")
    add_user(users, "bob@example.test", "pw")
    delete_user(users, "Alice@example.test")
    assert list_users(users) == ["bob@example.test"]
    with pytest.raises(UserFileError, match="no such user"):
        delete_user(users, "alice@example.test")


def test_unreadable_file_is_one_line_error(users):
    with open(users, "wb") as f:
        f.write(b"\xff\xfe not utf-8\n")
    with pytest.raises(UserFileError, match=r"users: cannot read"):
        add_user(users, "alice@example.test", "pw")


def test_check_reports_bad_lines_with_numbers(users):
    good = hash_password("pw")
    with open(users, "w") as f:
        f.write("# comment\n"
                f"alice@example.test:{good}::\n"
                "garbage\n"
                f"bob:{good}::\n"
                f"carol@example.test:{good}:!!notbase64:\n"
                f"dave@example.test:{good}::alice@example.test\n"
                "erin@example.test:::\n")
    assert check_users_file(users) == [
        f"{users}:3: expected address:hash:secret:extra-addresses",
        f"{users}:4: not a valid address: 'bob'",
        f"{users}:5: the shared secret is not valid base64",
        f"{users}:6: alice@example.test already belongs to a user on line 2",
        f"{users}:7: empty password hash",
    ]
    assert list_users(users) == ["alice@example.test", "dave@example.test"]


def test_check_of_missing_file_is_fine(users):
    assert check_users_file(users) == []


# -- the daemon's view -------------------------------------------------------------------------

@pytest.fixture
def reactor():
    return FakeReactor()


@pytest.fixture
def pool():
    return SyncPool()


def test_directory_provides_the_interface(users, reactor, pool):
    directory = FileDirectory(users, reactor, pool)
    assert verifyObject(IDirectory, directory)


def test_shared_secret_mechanisms_offered_only_once_a_user_has_a_secret(users, reactor, pool):
    directory = FileDirectory(users, reactor, pool)
    add_user(users, "bob@example.test", "pw")
    directory.lookup("bob@example.test")
    assert directory.supports_shared_secrets is False
    add_user(users, "carol@example.test", "pw", shared_secret=True)
    reactor.advance(2)
    directory.lookup("carol@example.test")
    assert directory.supports_shared_secrets is True


def test_lookup_by_primary_or_extra_address_any_case(users, reactor, pool):
    with open(users, "w") as f:
        f.write(f"alice@example.test:{hash_password('pw')}:{base64.b64encode(b'pw').decode()}:info@example.test\n")
    directory = FileDirectory(users, reactor, pool)
    for address in ("alice@example.test", "ALICE@Example.Test", "info@example.test"):
        user = result_of(directory.lookup(address))
        assert user.address == "alice@example.test"
        assert user.addresses == {"alice@example.test", "info@example.test"}
        assert user.shared_secret == "pw"
    assert result_of(directory.lookup("bob@example.test")) is None
    assert result_of(directory.lookup("not an address")) is None


def test_missing_file_means_no_users(users, reactor, pool):
    assert result_of(FileDirectory(users, reactor, pool).lookup("alice@example.test")) is None


def test_authenticate_verifies_in_the_pool(users, reactor, pool):
    add_user(users, "alice@example.test", "pw")
    directory = FileDirectory(users, reactor, pool)
    assert result_of(directory.authenticate("alice@example.test", "pw")).address == "alice@example.test"
    assert result_of(directory.authenticate("alice@example.test", "wrong")) is None
    assert pool.ran.count("verify_password") == 2


def test_disabled_user_gets_mail_but_cannot_log_in(users, reactor, pool):
    with open(users, "w") as f:
        f.write(f"alice@example.test:!{hash_password('pw')}:cHc=:\n")
    directory = FileDirectory(users, reactor, pool)
    user = result_of(directory.lookup("alice@example.test"))
    assert user.address == "alice@example.test" and user.enabled is False
    assert result_of(directory.authenticate("alice@example.test", "pw")) is None
    assert pool.ran.count("verify_password") == 1


def test_unknown_login_still_costs_a_verification(users, reactor, pool):
    add_user(users, "alice@example.test", "pw")
    directory = FileDirectory(users, reactor, pool)
    assert result_of(directory.authenticate("bob@example.test", "pw")) is None
    assert result_of(directory.authenticate("no-at-sign", "pw")) is None
    assert pool.ran.count("verify_unknown_user") == 2


def test_nothing_is_read_on_the_reactor(users, reactor):
    add_user(users, "alice@example.test", "pw")
    pool = ManualPool()
    directory = FileDirectory(users, reactor, pool)
    first, second = directory.lookup("alice@example.test"), directory.lookup("bob@example.test")
    assert not first.called and not second.called
    pool.run()
    assert result_of(first).address == "alice@example.test"
    assert result_of(second) is None
    assert pool.ran == ["_read_if_changed"]


def test_user_added_while_running_is_seen_within_a_second(users, reactor, pool):
    add_user(users, "alice@example.test", "pw")
    directory = FileDirectory(users, reactor, pool)
    assert result_of(directory.lookup("bob@example.test")) is None
    add_user(users, "bob@example.test", "pw")
    reactor.advance(0.5)
    assert result_of(directory.lookup("bob@example.test")) is None   # not looked at again yet
    reactor.advance(0.5)
    assert result_of(directory.lookup("bob@example.test")).address == "bob@example.test"


def test_unchanged_file_is_not_read_again(users, reactor, pool, monkeypatch):
    add_user(users, "alice@example.test", "pw")
    directory = FileDirectory(users, reactor, pool)
    result_of(directory.lookup("alice@example.test"))
    monkeypatch.setattr(dirfile, "index_entries", lambda *a: pytest.fail("file re-parsed"))
    reactor.advance(5)
    assert result_of(directory.lookup("alice@example.test")).address == "alice@example.test"


def test_deleted_user_and_deleted_file_take_effect(users, reactor, pool):
    add_user(users, "alice@example.test", "pw")
    add_user(users, "bob@example.test", "pw")
    directory = FileDirectory(users, reactor, pool)
    assert result_of(directory.lookup("bob@example.test"))
    delete_user(users, "bob@example.test")
    reactor.advance(1)
    assert result_of(directory.lookup("bob@example.test")) is None
    os.unlink(users)
    reactor.advance(1)
    assert result_of(directory.lookup("alice@example.test")) is None


def test_unreadable_file_keeps_the_old_table_and_logs_once(users, reactor, pool, errors):
    add_user(users, "alice@example.test", "pw")
    directory = FileDirectory(users, reactor, pool)
    assert result_of(directory.lookup("alice@example.test"))
    with open(users, "ab") as f:
        f.write(b"\xff broken\n")
    for _ in range(3):
        reactor.advance(1)
        assert result_of(directory.lookup("alice@example.test")).address == "alice@example.test"
    assert len(errors) == 1
    assert "cannot read" in errors[0][1]["problem"]


def test_bad_line_is_logged_and_other_users_still_work(users, reactor, pool, errors):
    with open(users, "w") as f:
        f.write(f"garbage\nalice@example.test:{hash_password('pw')}::\n")
    directory = FileDirectory(users, reactor, pool)
    assert result_of(directory.authenticate("alice@example.test", "pw"))
    assert errors == [("users-file", {"problem": f"{users}:1: expected address:hash:secret:extra-addresses"})]


def _config(backend, users):
    return Config(path="/etc/m.conf", appliance=ApplianceSection("mail.example.test", ("example.test",), "/var"),
                  tls=TLSSection("", ""), listen=ListenSection(), directory=DirectorySection(backend, users),
                  storage=StorageSection())


def test_make_directory_picks_the_file_backend(users, reactor, pool):
    add_user(users, "alice@example.test", "pw")
    directory = make_directory(_config("file", users), reactor, pool)
    assert result_of(directory.lookup("alice@example.test")).address == "alice@example.test"


def test_make_directory_refuses_an_unknown_backend(users, reactor, pool):
    with pytest.raises(ValueError, match="unknown backend"):
        make_directory(_config("nis", users), reactor, pool)


# -- issue 10, defect 6: failed logins must not stall the lookups RCPT needs ------------------------

def test_abandoned_logins_do_not_delay_the_users_file_read(users, reactor):
    """200 AUTH attempts whose clients left: the refresh RCPT waits for is not queued behind 200
    scrypt runs; the checks nobody waits for are dropped, never run."""
    add_user(users, "alice@example.test", "pw")
    pool = ManualPool()
    directory = FileDirectory(users, reactor, pool)
    directory.lookup("alice@example.test")
    pool.run()                                                    # the table is read
    attempts = [directory.authenticate("alice@example.test", f"guess{n}") for n in range(200)]
    for d in attempts:
        d.addErrback(lambda failure: None)
        d.cancel()                                                # connectionLost
    reactor.advance(1.5)
    rcpt = directory.lookup("bob@example.test")                   # the file is looked at again
    queued = [args[1].__name__ for args, _ in pool.pending]
    assert queued.index("_read_if_changed") <= 1, queued[:5]     # at most one hash in front of it
    pool.run()
    assert result_of(rcpt) is None
    pool.run()
    assert pool.ran.count("verify_password") <= 1                 # the others were dropped


def test_password_checks_have_their_own_pool(users, reactor):
    from appliance.passwords import CheckQueue, TooManyChecks
    add_user(users, "alice@example.test", "pw")
    lookups, hashing = SyncPool(), ManualPool()
    directory = FileDirectory(users, reactor, lookups, CheckQueue(reactor, hashing, threads=1, max_pending=4))
    outcomes = [[] for _ in range(10)]
    for out in outcomes:
        directory.authenticate("alice@example.test", "guess").addBoth(out.append)
    assert result_of(directory.lookup("alice@example.test")).address == "alice@example.test"   # not held up
    assert "verify_password" not in lookups.ran
    refused = [out for out in outcomes if out]
    assert len(refused) == 5                                       # 1 running + 4 waiting, the rest refused
    assert all(isinstance(out[0], Failure) and out[0].check(TooManyChecks) for out in refused)
    while hashing.pending:
        hashing.run()
    assert [out[0] for out in outcomes[:5]] == [None] * 5
