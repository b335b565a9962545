"""The cred checker over the directory (passwords, CRAM-MD5, APOP) and the brute-force throttle."""
from __future__ import annotations

import hmac
from binascii import hexlify
from hashlib import md5

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import CramMD5Credentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.mail.pop3 import APOPCredentials
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from appliance.config import LoginsSection
from appliance.interfaces import IMailUser
from appliance.realm import DirectoryChecker, LoginThrottled, client_keys, make_login
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import UserRecord

ALICE = UserRecord("alice@example.test", frozenset({"alice@example.test", "info@example.test"}), "s3cret")
BOB = UserRecord("bob@example.test", frozenset({"bob@example.test"}), None)
PASSWORDS = {"alice@example.test": "s3cret", "bob@example.test": "hunter2"}


class FakeDirectory:
    """Answers from a dict; `unavailable` makes every call fail as an unreachable LDAP would."""

    supports_shared_secrets = True

    def __init__(self):
        self.unavailable = False
        self.users = {a: u for u in (ALICE, BOB) for a in u.addresses}

    def lookup(self, address):
        if self.unavailable:
            return fail(DirectoryUnavailable("ldap down"))
        return succeed(self.users.get(address.lower()))

    def authenticate(self, login, password):
        if self.unavailable:
            return fail(DirectoryUnavailable("ldap down"))
        user = self.users.get(login.lower())
        return succeed(user if user and PASSWORDS[user.address] == password else None)


def outcome(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def rejected(d):
    result = outcome(d)
    assert isinstance(result, Failure), f"expected a refusal, got {result!r}"
    return result.check(UnauthorizedLogin) is not None


@pytest.fixture
def directory():
    return FakeDirectory()


@pytest.fixture
def checker(directory):
    return DirectoryChecker(directory)


def cram(username, secret):
    credentials = CramMD5Credentials(b"mail.example.test")
    response = hexlify(hmac.new(secret, credentials.getChallenge(), md5).digest())
    credentials.setResponse(username + b" " + response)
    return credentials


def apop(username, secret, magic=b"<1896.697170952@mail.example.test>"):
    return APOPCredentials(magic, username, md5(magic + secret).hexdigest().encode())


def test_checker_provides_the_interface(checker):
    assert verifyObject(ICredentialsChecker, checker)


def test_good_password_gives_the_users_record(checker):
    """The record itself is the avatar id: the realm never asks the directory a second time."""
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"s3cret"))).user == ALICE
    assert outcome(checker.requestAvatarId(UsernamePassword("info@example.test", "s3cret"))).user == ALICE


@pytest.mark.parametrize("username, password", [
    (b"alice@example.test", b"wrong"),
    (b"nobody@example.test", b"s3cret"),
    (b"alice@example.test\xff", b"s3cret"),      # not UTF-8
    (b"alice@example.test", b"\xff\xfe"),
])
def test_bad_password_is_unauthorized(checker, username, password):
    assert rejected(checker.requestAvatarId(UsernamePassword(username, password)))


def test_disabled_user_is_unauthorized(checker, directory):
    directory.users["alice@example.test"] = UserRecord("alice@example.test", shared_secret="s3cret", enabled=False)
    assert rejected(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"s3cret")))
    assert rejected(checker.requestAvatarId(cram(b"alice@example.test", b"s3cret")))


def test_cram_md5_with_stored_secret(checker):
    assert outcome(checker.requestAvatarId(cram(b"alice@example.test", b"s3cret"))).user == ALICE
    assert rejected(checker.requestAvatarId(cram(b"alice@example.test", b"guess")))


def test_cram_md5_without_secret_or_user_is_unauthorized(checker):
    assert rejected(checker.requestAvatarId(cram(b"bob@example.test", b"hunter2")))
    assert rejected(checker.requestAvatarId(cram(b"nobody@example.test", b"x")))


def test_apop_with_bytes_from_the_wire(checker):
    """Stock Twisted rejects every good APOP digest (str vs bytes); ours must accept it."""
    assert outcome(checker.requestAvatarId(apop(b"alice@example.test", b"s3cret"))).user == ALICE
    assert rejected(checker.requestAvatarId(apop(b"alice@example.test", b"guess")))
    assert rejected(checker.requestAvatarId(apop(b"bob@example.test", b"hunter2")))


def test_apop_digest_in_upper_case_is_accepted(checker):
    credentials = apop(b"alice@example.test", b"s3cret")
    credentials.digest = credentials.digest.upper()
    assert outcome(checker.requestAvatarId(credentials)).user == ALICE


@pytest.mark.parametrize("credentials", [
    UsernamePassword(b"alice@example.test", b"s3cret"),
    cram(b"alice@example.test", b"s3cret"),
    apop(b"alice@example.test", b"s3cret"),
])
def test_directory_unavailable_passes_through(checker, directory, credentials):
    directory.unavailable = True
    result = outcome(checker.requestAvatarId(credentials))
    assert isinstance(result, Failure) and result.check(DirectoryUnavailable)


# -- the throttle in front of every check (issue 10, defect 5) ---------------------------------------

class HeldDirectory:
    """Every password check waits, as scrypt in a busy pool does; checks are counted and answerable."""

    supports_shared_secrets = False

    def __init__(self):
        self.pending: list = []          # (login, password, Deferred)

    @property
    def checks(self):
        return len(self.pending)

    def lookup(self, address):
        return succeed(None)

    def authenticate(self, login, password):
        d = Deferred()
        self.pending.append((login, password, d))
        return d

    def answer_all(self):
        for login, password, d in self.pending:
            if not d.called:
                d.callback(ALICE if (login, password) == (ALICE.address, "s3cret") else None)


class Gate:
    """realm.Login over a HeldDirectory and a task.Clock, as tap.py builds it (default [logins])."""

    def __init__(self, **settings):
        self.clock = Clock()
        self.directory = HeldDirectory()
        self.login = make_login(self.directory, store=None, clock=self.clock, settings=LoginsSection(**settings))
        self.login.throttle.refusal_delay = 0          # refusals at once here; the tarpit has its own test

    def attempt(self, peer, login=ALICE.address, password="guess"):
        d = self.login.attempt(UsernamePassword(login.encode(), password.encode()), IMailUser, service="submission",
                               peer=peer, login=login, mechanism="PLAIN")
        out = []
        d.addBoth(out.append)
        return d, out


def refused(out):
    return bool(out) and isinstance(out[0], Failure) and out[0].check(LoginThrottled) is not None


def test_parallel_guesses_from_one_address_are_not_all_checked():
    """100 guesses on 100 connections at once: a few are checked, the rest wait or are refused
    without any password check; the real user from elsewhere logs in at once meanwhile."""
    gate = Gate()
    attempts = [gate.attempt("192.0.2.7") for _ in range(100)]
    assert gate.directory.checks == LoginsSection.failures_per_address + 1     # the limit, then one slot
    assert sum(refused(out) for _, out in attempts) >= 85                      # at once, no check
    real = gate.attempt("198.51.100.20", password="s3cret")
    assert gate.directory.checks == LoginsSection.failures_per_address + 2
    gate.directory.answer_all()
    assert real[1][0].user == ALICE                                           # at once
    for _ in range(60):                                                        # a minute of the attack
        gate.clock.advance(1)
        gate.directory.answer_all()
    assert gate.directory.checks <= 12
    assert all(out for _, out in attempts)                                    # every client got an answer


def test_a_slash_24_counts_as_one_client():
    gate = Gate()
    attempts = [gate.attempt(f"192.0.2.{n}") for n in range(1, 101)]          # one guess per address
    assert gate.directory.checks == LoginsSection.failures_per_network + 1
    gate.directory.answer_all()
    assert sum(refused(out) for _, out in attempts) >= 70
    other = gate.attempt("192.0.3.1", password="s3cret")                        # the next /24: at once
    gate.directory.answer_all()
    assert other[1][0].user == ALICE


@pytest.mark.parametrize("peer, same", [
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"),             # one /64
    ("::ffff:192.0.2.7", "192.0.2.7"),                        # the IPv4-mapped form is the IPv4 address
])
def test_ipv6_slash64_and_mapped_addresses_count_as_one(peer, same):
    assert client_keys(peer)[1] == client_keys(same)[1]
    assert client_keys("::ffff:192.0.2.7") == ("192.0.2.7", "192.0.2.0/24")
    assert client_keys("2001:db8:1:2::1")[1] == "2001:db8:1:2::/64"


def test_sequential_guessing_gets_slower_then_refused():
    gate = Gate(failures_per_address=3, failures_per_network=100, max_delay=8)
    outcomes = []
    for _ in range(8):
        d, out = gate.attempt("192.0.2.7")
        waited = 0
        while not out and waited < 20:
            gate.directory.answer_all()
            if not out:
                gate.clock.advance(1)
                waited += 1
        outcomes.append("throttled" if refused(out) else waited)
    # 3 free, then the first slot at once, then spaced: doubling up to max_delay
    assert outcomes == [0, 0, 0, 0, 1, 2, 4, 8]
    # parallel attempts beyond max_delay's reach are refused at once, without a check
    checks = gate.directory.checks
    assert any(refused(gate.attempt("192.0.2.7")[1]) for _ in range(3))
    assert gate.directory.checks == checks


def test_login_attacked_from_many_networks_never_locks_the_real_user_out():
    gate = Gate(failures_per_login=10)
    for n in range(50):                                      # a botnet: one guess from each /24
        _, out = gate.attempt(f"10.{n}.0.1")
        gate.directory.answer_all()
        assert isinstance(out[0], Failure) and out[0].check(UnauthorizedLogin)
    assert gate.login.throttle.failures("login", ALICE.address) >= 10
    gate.attempt("10.3.0.1")                                 # an address that failed: one slot ...
    checks = gate.directory.checks
    for n in range(4, 10):                                   # ... and no more for the next 30 s
        _, again = gate.attempt(f"10.{n}.0.1")
        assert not again or refused(again)
    assert gate.directory.checks == checks
    _, real = gate.attempt("203.0.113.5", password="s3cret")  # the real user, clean address: at once
    gate.directory.answer_all()
    assert real[0].user == ALICE


def test_failures_are_forgotten_after_the_window():
    gate = Gate(failures_per_address=2, failure_window=60)
    for _ in range(2):
        gate.attempt("192.0.2.7")
        gate.directory.answer_all()
    gate.clock.advance(1)
    d, out = gate.attempt("192.0.2.7")
    assert gate.directory.checks == 3                          # the first slot
    gate.directory.answer_all()
    d, out = gate.attempt("192.0.2.7")
    assert not out and gate.directory.checks == 3              # waits
    gate.clock.advance(61)
    gate.directory.answer_all()
    assert out
    assert gate.login.throttle.failures("address", "192.0.2.7") <= 1
    d, out = gate.attempt("192.0.2.7")
    assert gate.directory.checks == 5                           # at once again


def test_a_success_clears_the_address_but_not_its_network():
    gate = Gate(failures_per_address=3, failures_per_network=5)
    for _ in range(2):
        gate.attempt("192.0.2.7")
        gate.directory.answer_all()
    _, out = gate.attempt("192.0.2.7", password="s3cret")
    gate.directory.answer_all()
    assert out[0].user == ALICE
    assert gate.login.throttle.failures("address", "192.0.2.7") == 0
    assert gate.login.throttle.failures("network", "192.0.2.0/24") == 2


def test_a_client_that_leaves_while_waiting_costs_no_check():
    gate = Gate(failures_per_address=1)
    gate.attempt("192.0.2.7")
    gate.directory.answer_all()
    gate.attempt("192.0.2.7")                                   # the first slot, checked
    gate.directory.answer_all()
    d, out = gate.attempt("192.0.2.7")
    assert not out
    d.cancel()                                                 # connectionLost
    assert out[0].check(CancelledError)
    gate.clock.advance(60)
    assert gate.directory.checks == 2
    assert gate.login.throttle.waiting == 0


def test_directory_unavailable_is_no_failed_guess():
    gate = Gate(failures_per_address=1)

    def down(login, password):
        return fail(DirectoryUnavailable("ldap down"))
    gate.directory.authenticate = down
    for _ in range(5):
        _, out = gate.attempt("192.0.2.7")
        assert out[0].check(DirectoryUnavailable)
    assert gate.login.throttle.failures("address", "192.0.2.7") == 0


def test_throttle_table_is_bounded():
    gate = Gate()
    gate.login.throttle.MAX_KEYS = 50
    for n in range(200):
        gate.attempt(f"10.{n}.0.1", login=f"user{n}@example.test")
        gate.directory.answer_all()
    assert len(gate.login.throttle._counts) <= 50


def test_a_refusal_is_answered_after_a_second_and_logged_once_per_address(monkeypatch):
    """A client that retries the moment it is refused cannot spin the server, nor fill the log."""
    from appliance import maillog
    lines = []
    monkeypatch.setattr(maillog, "auth", lambda *args, **fields: lines.append(args[-1]))
    gate = Gate(failures_per_address=1, max_delay=1)
    gate.login.throttle.refusal_delay = 1.0
    for _ in range(3):
        gate.attempt("192.0.2.7")
        gate.directory.answer_all()
    lines.clear()
    outs = [gate.attempt("192.0.2.7")[1] for _ in range(10)]
    assert not any(outs)                                       # nothing answered yet ...
    gate.clock.advance(1)
    assert sum(refused(out) for out in outs) >= 8              # ... a second later: refused, unchecked
    assert gate.directory.checks <= 4
    assert lines == ["throttled"]                              # one line for the address
    gate.clock.advance(5)
    outs = [gate.attempt("192.0.2.7")[1] for _ in range(3)]
    gate.clock.advance(1)
    assert any(line.startswith("throttled, ") and "more not logged" in line for line in lines[1:])
