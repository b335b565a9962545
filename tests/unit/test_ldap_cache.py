"""LDAPDirectory's reactor half with a fake LDAP client: caching, never-cached passwords, failures.

The pool runs work synchronously and time is a task.Clock, so no socket and no sleeping.
"""
from __future__ import annotations

import pytest

from appliance.config import LDAPSection
from appliance.directory.ldap import LDAPDirectory, UserEntry
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import UserRecord
from appliance.inline import InlineReactor as ThreadlessReactor, InlinePool

ALICE = UserEntry(dn="uid=alice,dc=example,dc=test",
                  record=UserRecord("alice@example.test", frozenset({"alice@example.test", "a@example.test"})))
CAROL = UserEntry(dn="uid=carol,dc=example,dc=test",
                  record=UserRecord("carol@example.test", frozenset({"carol@example.test"}), enabled=False))
DAVE = UserEntry(dn="uid=dave,dc=example,dc=test", record=UserRecord("dave@example.test"),
                 forward="dave@elsewhere.test")


class FakeClient:
    """Answers like LDAPClient; `down` makes every call fail as an unreachable server would."""

    def __init__(self):
        self.users = {"alice@example.test": ALICE, "a@example.test": ALICE, "carol@example.test": CAROL,
                      "dave@example.test": DAVE}
        self.aliases = {"staff@example.test": ["alice@example.test", "dave@example.test"]}
        self.passwords = {ALICE.dn: "right", CAROL.dn: "right"}
        self.down = False
        self.calls: list[str] = []

    def _called(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise DirectoryUnavailable("ldap://ldap.example.test: connection refused")

    def find_user(self, address, deadline):
        self._called("find_user")
        return self.users.get(address)

    def find_alias(self, address, deadline):
        self._called("find_alias")
        return self.aliases.get(address)

    def verify(self, dn, password, deadline):
        self._called("verify")
        return self.passwords.get(dn) == password

    def check(self, deadline):
        self._called("check")
        return "fine"

    def close(self):
        pass


@pytest.fixture
def clock():
    return ThreadlessReactor()


@pytest.fixture
def client():
    return FakeClient()


def _directory(clock, client, **settings) -> LDAPDirectory:
    section = LDAPSection(url=("ldap://ldap.example.test",), bind_dn="cn=x,dc=example,dc=test",
                          bind_password_file="/nonexistent", base_dn="dc=example,dc=test", **settings)
    return LDAPDirectory(section, clock, InlinePool(), client=client)


def _result(d):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_found_and_not_found_are_cached_for_cache_ttl(clock, client):
    directory = _directory(clock, client, cache_ttl=60)
    assert _result(directory.lookup("Alice@Example.TEST")).address == "alice@example.test"
    assert _result(directory.lookup("nobody@example.test")) is None
    client.down = True
    clock.advance(59)
    assert _result(directory.lookup("alice@example.test")).address == "alice@example.test"
    assert _result(directory.lookup("nobody@example.test")) is None
    clock.advance(1)
    assert _result(directory.lookup("alice@example.test")).check(DirectoryUnavailable)
    assert client.calls == ["find_user", "find_user", "find_user"]


def test_cache_ttl_zero_asks_every_time(clock, client):
    directory = _directory(clock, client, cache_ttl=0)
    _result(directory.lookup("alice@example.test"))
    _result(directory.lookup("alice@example.test"))
    assert client.calls == ["find_user", "find_user"]


def test_failures_are_not_cached(clock, client):
    directory = _directory(clock, client)
    client.down = True
    assert _result(directory.lookup("alice@example.test")).check(DirectoryUnavailable)
    client.down = False
    assert _result(directory.lookup("alice@example.test")).address == "alice@example.test"


def test_password_is_checked_by_the_directory_every_time(clock, client):
    directory = _directory(clock, client)
    assert _result(directory.authenticate("a@example.test", "right")) == ALICE.record
    assert _result(directory.authenticate("alice@example.test", "wrong")) is None
    assert _result(directory.authenticate("alice@example.test", "right")) == ALICE.record
    assert client.calls.count("verify") == 3


def test_no_bind_for_empty_password_unknown_login_disabled_user_or_non_address(clock, client):
    directory = _directory(clock, client)
    assert _result(directory.authenticate("alice@example.test", "")) is None
    assert _result(directory.authenticate("nobody@example.test", "right")) is None
    assert _result(directory.authenticate("carol@example.test", "right")) is None
    assert _result(directory.authenticate("bob)(uid=*", "right")) is None
    assert "verify" not in client.calls


def test_unreachable_directory_is_never_a_wrong_password(clock, client):
    directory = _directory(clock, client)
    _result(directory.lookup("alice@example.test"))
    client.down = True
    assert _result(directory.authenticate("alice@example.test", "right")).check(DirectoryUnavailable)


def test_unexpected_errors_become_directory_unavailable(clock, client):
    def broken(address, deadline):
        raise KeyError("surprise")
    client.find_user = broken
    assert _result(_directory(clock, client).lookup("alice@example.test")).check(DirectoryUnavailable)


def test_alias_group_and_forward(clock, client):
    directory = _directory(clock, client)
    assert _result(directory.resolve_alias("staff@example.test")) == ["alice@example.test", "dave@example.test"]
    assert _result(directory.resolve_alias("dave@example.test")) == ["dave@elsewhere.test"]
    assert _result(directory.resolve_alias("alice@example.test")) is None


def test_shared_secrets_only_with_an_attribute(clock, client):
    assert not _directory(clock, client).supports_shared_secrets
    assert _directory(clock, client, shared_secret_attribute="userPassword").supports_shared_secrets


def test_outage_and_recovery_are_logged_once_each(clock, client):
    from twisted.logger import globalLogPublisher
    lines: list[str] = []
    observer = lambda event: lines.append(event.get("log_format", ""))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        directory = _directory(clock, client, cache_ttl=0)
        client.down = True
        for _ in range(3):
            _result(directory.lookup("alice@example.test"))
        client.down = False
        _result(directory.lookup("alice@example.test"))
    finally:
        globalLogPublisher.removeObserver(observer)
    logged = [line.split()[0:2] for line in lines if "ldap-" in line]
    assert logged == [["error", "ldap-unavailable"], ["ldap-available", "server=ldap://ldap.example.test"]]


def test_binds_of_clients_that_left_are_dropped_and_never_take_every_thread(clock, client):
    """Issue 10, defect 6 for LDAP: abandoned AUTH attempts do not bind, and at most half of the
    pool's threads bind at once (the rest serve the searches RCPT needs)."""
    from tests.unit.test_directory_file import ManualPool
    section = LDAPSection(url=("ldap://ldap.example.test",), bind_dn="cn=x,dc=example,dc=test",
                          bind_password_file="/nonexistent", base_dn="dc=example,dc=test", pool_size=4)
    pool = ManualPool()
    directory = LDAPDirectory(section, clock, pool, client=client)
    directory.lookup("alice@example.test")
    pool.run()                                                    # alice's entry is cached
    attempts = [directory.authenticate("alice@example.test", "guess") for _ in range(30)]
    assert len(pool.pending) <= 2                                 # half the pool binds, at most
    for d in attempts:
        d.addErrback(lambda failure: None)
        d.cancel()
    while pool.pending:
        pool.run()
    assert client.calls.count("verify") <= 2
