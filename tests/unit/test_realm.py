"""The cred checker over the directory (passwords, CRAM-MD5, APOP) and the brute-force throttle."""
from __future__ import annotations

import hmac
from binascii import hexlify
from hashlib import md5

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import CramMD5Credentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.mail.pop3 import APOPCredentials
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from appliance.realm import AuthThrottle, DirectoryChecker
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
    assert outcome(checker.requestAvatarId(UsernamePassword(b"alice@example.test", b"s3cret"))) == ALICE
    assert outcome(checker.requestAvatarId(UsernamePassword("info@example.test", "s3cret"))) == ALICE


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
    assert outcome(checker.requestAvatarId(cram(b"alice@example.test", b"s3cret"))) == ALICE
    assert rejected(checker.requestAvatarId(cram(b"alice@example.test", b"guess")))


def test_cram_md5_without_secret_or_user_is_unauthorized(checker):
    assert rejected(checker.requestAvatarId(cram(b"bob@example.test", b"hunter2")))
    assert rejected(checker.requestAvatarId(cram(b"nobody@example.test", b"x")))


def test_apop_with_bytes_from_the_wire(checker):
    """Stock Twisted rejects every good APOP digest (str vs bytes); ours must accept it."""
    assert outcome(checker.requestAvatarId(apop(b"alice@example.test", b"s3cret"))) == ALICE
    assert rejected(checker.requestAvatarId(apop(b"alice@example.test", b"guess")))
    assert rejected(checker.requestAvatarId(apop(b"bob@example.test", b"hunter2")))


def test_apop_digest_in_upper_case_is_accepted(checker):
    credentials = apop(b"alice@example.test", b"s3cret")
    credentials.digest = credentials.digest.upper()
    assert outcome(checker.requestAvatarId(credentials)) == ALICE


@pytest.mark.parametrize("credentials", [
    UsernamePassword(b"alice@example.test", b"s3cret"),
    cram(b"alice@example.test", b"s3cret"),
    apop(b"alice@example.test", b"s3cret"),
])
def test_directory_unavailable_passes_through(checker, directory, credentials):
    directory.unavailable = True
    result = outcome(checker.requestAvatarId(credentials))
    assert isinstance(result, Failure) and result.check(DirectoryUnavailable)


# -- throttle ----------------------------------------------------------------------------------

def schedule(throttle, peer, failures):
    delays = []
    for _ in range(failures):
        throttle.failed(peer)
        delays.append(throttle.delay(peer))
    return delays


def test_throttle_schedule_two_free_then_doubling_to_the_cap():
    throttle = AuthThrottle(Clock())
    assert schedule(throttle, "192.0.2.1", 9) == [0, 0, 1, 2, 4, 8, 15, 15, 15]


def test_throttle_is_per_peer_and_a_success_clears_it():
    throttle = AuthThrottle(Clock())
    schedule(throttle, "192.0.2.1", 5)
    assert throttle.delay("192.0.2.2") == 0
    throttle.succeeded("192.0.2.1")
    assert schedule(throttle, "192.0.2.1", 3) == [0, 0, 1]


def test_throttle_forgets_after_fifteen_quiet_minutes():
    clock = Clock()
    throttle = AuthThrottle(clock)
    schedule(throttle, "192.0.2.1", 5)
    clock.advance(15 * 60 - 1)
    assert schedule(throttle, "192.0.2.1", 1) == [8]
    clock.advance(15 * 60)
    assert throttle.delay("192.0.2.1") == 0
    assert schedule(throttle, "192.0.2.1", 3) == [0, 0, 1]


def test_throttle_survives_a_very_persistent_attacker():
    throttle = AuthThrottle(Clock())
    assert schedule(throttle, "192.0.2.1", 5000)[-1] == 15


def test_throttle_table_is_bounded_and_evicts_the_oldest():
    throttle = AuthThrottle(Clock())
    throttle.MAX_PEERS = 3
    for peer in ("a", "b", "c"):
        schedule(throttle, peer, 3)
    schedule(throttle, "a", 1)          # a is recent again
    schedule(throttle, "d", 1)          # evicts b, the oldest
    assert throttle.delay("b") == 0
    assert throttle.delay("a") == 2
    assert throttle.delay("c") == 1
