"""The credential cache over a real slapd: a password changed in LDAP stops working once the
lookup sees the entry's new modifyTimestamp, without waiting for credential_cache_ttl."""
from __future__ import annotations

import time

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, reactor

from appliance.credcache import CredentialCache
from appliance.realm import DirectoryChecker
from tests.integration.slapd import password_hash
from tests.integration.test_ldap_directory import PASSWORDS, PEOPLE, DirectoryCase

ALICE = "alice@example.test"


class CredentialCacheOverLDAP(DirectoryCase):
    def checker(self) -> DirectoryChecker:
        # cache_ttl 0: every login's lookup reaches slapd, so the test need not wait a minute.
        return DirectoryChecker(self.directory(cache_ttl=0), CredentialCache(reactor, ttl=3600, size=100))

    def login(self, checker: DirectoryChecker, password: str) -> defer.Deferred:
        return checker.requestAvatarId(UsernamePassword(ALICE.encode(), password.encode()))

    @defer.inlineCallbacks
    def test_a_second_login_needs_no_bind(self):
        checker = self.checker()
        first = yield self.login(checker, PASSWORDS["alice"])
        second = yield self.login(checker, PASSWORDS["alice"])
        self.assertEqual((first.user.address, first.cached), (ALICE, False))
        self.assertEqual((second.user.address, second.cached), (ALICE, True))
        yield self.assertFailure(self.login(checker, "a guess"), UnauthorizedLogin)

    @defer.inlineCallbacks
    def test_a_password_changed_in_ldap_fails_at_once(self):
        checker = self.checker()
        yield self.login(checker, PASSWORDS["alice"])
        self.assertTrue((yield self.login(checker, PASSWORDS["alice"])).cached)
        time.sleep(1.1)                  # modifyTimestamp counts seconds: the change must be in a later one
        self.slapd.modify(f"dn: uid=alice,{PEOPLE}\nchangetype: modify\nreplace: userPassword\n"
                          f"userPassword: {password_hash('{SSHA}', 'a new one')}\n")
        yield self.assertFailure(self.login(checker, PASSWORDS["alice"]), UnauthorizedLogin)
        self.assertFalse((yield self.login(checker, "a new one")).cached)
        self.assertTrue((yield self.login(checker, "a new one")).cached)
