"""The credential cache alone (appliance/credcache.py), and the checker in front of a real FileDirectory.

The cache's promises: a right password seen again within the TTL hits; a wrong one never does;
a changed stored credential, another account behind the same login, or an old entry misses;
the size is bounded (least recently used out first); the password is not kept.
"""
from __future__ import annotations

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from appliance.config import LoginsSection
from appliance.credcache import CredentialCache
from appliance.directory import file as users
from appliance.directory.file import FileDirectory
from appliance.inline import InlinePool, InlineReactor
from appliance.passwords import CheckQueue
from appliance.realm import DirectoryChecker, make_cache

LOGIN, ACCOUNT, PASSWORD, PRINT = "alice@example.test", "alice@example.test", "correct horse", "f1"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock) -> CredentialCache:
    return CredentialCache(clock, ttl=3600, size=100)


def test_a_remembered_password_hits(cache):
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)      # and again: a hit does not use it up


def test_nothing_remembered_misses(cache):
    assert not cache.knows(LOGIN)
    assert not cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)


@pytest.mark.parametrize("password", ["correct horse ", "Correct horse", "", "correct", "correct horse\0"])
def test_a_wrong_password_never_hits_and_keeps_the_right_one(cache, password):
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert not cache.hit(LOGIN, password, ACCOUNT, PRINT)
    assert cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)       # a guess does not evict the real user's entry


def test_a_changed_stored_credential_misses(cache):
    """The users file's hash changed (`user passwd`): the old password must fail at once."""
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert not cache.hit(LOGIN, PASSWORD, ACCOUNT, "f2")


def test_the_login_now_someone_elses_misses(cache):
    """info@ was alice's extra address and is now bob's: alice's password is not bob's."""
    cache.remember("info@example.test", PASSWORD, ACCOUNT, PRINT)
    assert not cache.hit("info@example.test", PASSWORD, "bob@example.test", PRINT)
    assert not cache.hit("bob@example.test", PASSWORD, ACCOUNT, PRINT)     # entries are per login


def test_an_entry_expires_after_the_ttl_even_when_used(cache, clock):
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    clock.advance(3599)
    assert cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)
    clock.advance(1)                 # the TTL counts from the full check, not from the last hit
    assert not cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert len(cache) == 0


def test_a_new_full_check_starts_a_new_ttl(cache, clock):
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    clock.advance(3000)
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    clock.advance(3000)
    assert cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)


def test_the_size_is_bounded_least_recently_used_first(clock):
    cache = CredentialCache(clock, ttl=3600, size=3)
    for n in range(3):
        cache.remember(f"u{n}@example.test", PASSWORD, f"u{n}@example.test", PRINT)
    assert cache.hit("u0@example.test", PASSWORD, "u0@example.test", PRINT)     # u0 used: u1 is the oldest now
    cache.remember("u3@example.test", PASSWORD, "u3@example.test", PRINT)
    assert len(cache) == 3
    assert not cache.knows("u1@example.test")
    assert all(cache.knows(f"u{n}@example.test") for n in (0, 2, 3))


def test_one_entry_per_login_the_last_password_that_worked(cache):
    cache.remember(LOGIN, "old password", ACCOUNT, PRINT)
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert len(cache) == 1
    assert not cache.hit(LOGIN, "old password", ACCOUNT, PRINT)


def test_ttl_zero_turns_it_off(clock):
    cache = CredentialCache(clock, ttl=0, size=100)
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    assert not cache.enabled and len(cache) == 0
    assert not cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)


def test_clear_forgets_everything(cache):
    cache.remember(LOGIN, PASSWORD, ACCOUNT, PRINT)
    cache.clear()
    assert not cache.hit(LOGIN, PASSWORD, ACCOUNT, PRINT)


def test_the_password_is_not_kept(cache):
    """Only a keyed hash is stored: nothing the cache holds contains the password's bytes."""
    secret = "a very distinctive passphrase 7f3e"
    cache.remember(LOGIN, secret, ACCOUNT, PRINT)
    held = repr(cache._entries).encode() + b"".join(mac for mac, _ in cache._entries.values())
    assert secret.encode() not in held
    # Two processes (two keys) never agree on an entry: nothing here is a reusable hash of the password.
    other = CredentialCache(Clock(), ttl=3600, size=10)
    other.remember(LOGIN, secret, ACCOUNT, PRINT)
    assert other._entries[LOGIN][0] != cache._entries[LOGIN][0]


def test_odd_text_hashes_and_never_raises(cache):
    password = "p\udcff\u00e9"                      # a lone surrogate: what undecodable input may become
    cache.remember(LOGIN, password, ACCOUNT, PRINT)
    assert cache.hit(LOGIN, password, ACCOUNT, PRINT)


def test_make_cache_follows_the_logins_section(clock):
    assert make_cache(clock).ttl == 3600 and make_cache(clock).size == 10000
    assert not make_cache(clock, LoginsSection(credential_cache_ttl=0)).enabled


# ---- the checker in front of a real users file ---------------------------------------------------------

class CountingChecks(CheckQueue):
    """The check queue the daemon uses, run inline, counting the scrypt verifications it runs."""

    def __init__(self, clock) -> None:
        super().__init__(clock, InlinePool())
        self.verifications = 0

    def run(self, f, *args):
        self.verifications += 1
        return super().run(f, *args)


@pytest.fixture
def setup(tmp_path):
    clock = InlineReactor()
    path = str(tmp_path / "users")
    users.add_user(path, LOGIN, PASSWORD)
    checks = CountingChecks(clock)
    directory = FileDirectory(path, clock, InlinePool(), checks)
    checker = DirectoryChecker(directory, CredentialCache(clock, ttl=3600, size=100))
    return clock, path, checks, checker


def _login(checker, login, password):
    out = []
    checker.requestAvatarId(UsernamePassword(login.encode(), password.encode())).addBoth(out.append)
    assert out, "the check has not finished"
    return out[0]


def test_the_second_login_is_not_hashed_again(setup):
    clock, _, checks, checker = setup
    first = _login(checker, LOGIN, PASSWORD)
    assert first.user.address == LOGIN and not first.cached
    second = _login(checker, LOGIN, PASSWORD)
    assert second.user.address == LOGIN and second.cached
    assert checks.verifications == 1


def test_a_wrong_password_after_a_cached_success_gets_the_full_check(setup):
    _, _, checks, checker = setup
    _login(checker, LOGIN, PASSWORD)
    for _ in range(3):
        result = _login(checker, LOGIN, "guess")
        assert isinstance(result, Failure) and result.check(UnauthorizedLogin)
    assert checks.verifications == 4
    assert _login(checker, LOGIN, PASSWORD).cached          # the real user's entry survived the guesses


def test_a_password_change_makes_the_old_password_fail_at_once(setup):
    clock, path, checks, checker = setup
    _login(checker, LOGIN, PASSWORD)
    users.set_password(path, LOGIN, "new password")
    clock.advance(users.CHECK_INTERVAL)                     # the directory notices the file changed
    result = _login(checker, LOGIN, PASSWORD)
    assert isinstance(result, Failure) and result.check(UnauthorizedLogin)
    assert not _login(checker, LOGIN, "new password").cached
    assert _login(checker, LOGIN, "new password").cached


def test_a_disabled_user_fails_at_once_with_the_full_check(setup):
    clock, path, checks, checker = setup
    _login(checker, LOGIN, PASSWORD)
    lines = open(path).read().replace(f"{LOGIN}:$scrypt", f"{LOGIN}:!$scrypt")
    with open(path, "w") as f:
        f.write(lines)
    clock.advance(users.CHECK_INTERVAL)
    result = _login(checker, LOGIN, PASSWORD)
    assert isinstance(result, Failure) and result.check(UnauthorizedLogin)
    assert checks.verifications == 2          # not a quick refusal that would confirm the password


def test_a_removed_user_fails_at_once(setup):
    clock, path, _, checker = setup
    _login(checker, LOGIN, PASSWORD)
    users.delete_user(path, LOGIN)
    clock.advance(users.CHECK_INTERVAL)
    result = _login(checker, LOGIN, PASSWORD)
    assert isinstance(result, Failure) and result.check(UnauthorizedLogin)


def test_without_a_cache_every_login_is_hashed(tmp_path):
    clock = InlineReactor()
    path = str(tmp_path / "users")
    users.add_user(path, LOGIN, PASSWORD)
    checks = CountingChecks(clock)
    checker = DirectoryChecker(FileDirectory(path, clock, InlinePool(), checks), make_cache(
        clock, LoginsSection(credential_cache_ttl=0)))
    assert not any(_login(checker, LOGIN, PASSWORD).cached for _ in range(3))
    assert checks.verifications == 3
