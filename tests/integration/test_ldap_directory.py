"""LDAPDirectory against a real slapd, with a real thread pool and the real reactor.

Each test class starts its own slapd (tests/integration/slapd.py); outage tests stop, restart
or pause theirs mid-test. The directory content is the small organisation of docs/directory.md.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from appliance.config import LDAPSection
from appliance.directory.ldap import LDAPDirectory
from appliance.errors import DirectoryUnavailable
from tests.integration.slapd import (BASE_DN, SERVICE_DN, SERVICE_PASSWORD, Slapd, password_hash, require_slapd,
                                     write_test_certificates)

PEOPLE = f"ou=people,{BASE_DN}"
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3", "dave": "dave-pw-4",
             "erin": "erin-pw-5"}


def organisation_ldif() -> str:
    """alice ({SSHA}, an extra address), bob ({CRYPT}), carol (disabled), dave (forwarded),
    erin (cleartext password, for shared secrets), a nisMailAlias and a groupOfNames."""
    return f"""dn: uid=alice,{PEOPLE}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice Smith
sn: Smith
mail: alice@example.test
mailLocalAddress: a.smith@example.test
userPassword: {password_hash("{SSHA}", PASSWORDS["alice"])}

dn: uid=bob,{PEOPLE}
objectClass: inetOrgPerson
uid: bob
cn: Bob Jones
sn: Jones
mail: Bob@Example.TEST
userPassword: {password_hash("{CRYPT}", PASSWORDS["bob"])}

dn: uid=carol,{PEOPLE}
objectClass: inetOrgPerson
objectClass: shadowAccount
uid: carol
cn: Carol Left
sn: Left
mail: carol@example.test
shadowExpire: 1
userPassword: {password_hash("{SSHA}", PASSWORDS["carol"])}

dn: uid=dave,{PEOPLE}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: dave
cn: Dave Away
sn: Away
mail: dave@example.test
mailRoutingAddress: dave@elsewhere.test
userPassword: {password_hash("{SSHA}", PASSWORDS["dave"])}

dn: uid=erin,{PEOPLE}
objectClass: inetOrgPerson
uid: erin
cn: Erin Old
sn: Old
mail: erin@example.test
userPassword: {PASSWORDS["erin"]}

dn: uid=nomail,{PEOPLE}
objectClass: inetOrgPerson
uid: nomail
cn: No Mail
sn: Mail

dn: cn=postmaster@example.test,ou=aliases,{BASE_DN}
objectClass: nisMailAlias
cn: postmaster@example.test
rfc822MailMember: alice@example.test
rfc822MailMember: bob@example.test

dn: cn=staff,ou=groups,{BASE_DN}
objectClass: groupOfNames
objectClass: inetLocalMailRecipient
cn: staff
mailLocalAddress: staff@example.test
member: uid=alice,{PEOPLE}
member: uid=bob,{PEOPLE}
member: uid=nomail,{PEOPLE}
member: uid=gone,{PEOPLE}
"""


class DirectoryCase(TestCase):
    """Starts slapd(s) and builds LDAPDirectory objects over a real ThreadPool."""

    tls = False
    service_reads_passwords = False

    def setUp(self) -> None:
        require_slapd()
        self.folder = tempfile.mkdtemp(prefix="ldap-test-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.password_file = os.path.join(self.folder, "bind-password")
        with open(self.password_file, "w") as out:
            out.write(SERVICE_PASSWORD + "\n")
        self.slapd = self.start_slapd("one")

    def start_slapd(self, name: str) -> Slapd:
        slapd = Slapd(os.path.join(self.folder, name), tls=self.tls,
                      service_reads_passwords=self.service_reads_passwords)
        os.makedirs(slapd.folder)
        self.addCleanup(slapd.stop)
        slapd.setup(organisation_ldif())
        slapd.start()
        return slapd

    def directory(self, urls: tuple[str, ...] = (), **settings) -> LDAPDirectory:
        options = dict(url=urls or (self.slapd.url,), bind_dn=SERVICE_DN, bind_password_file=self.password_file,
                       base_dn=BASE_DN, timeout=1)
        options.update(settings)
        section = LDAPSection(**options)
        pool = ThreadPool(minthreads=0, maxthreads=section.pool_size, name="ldap-test")
        directory = LDAPDirectory(section, reactor, pool)
        self.addCleanup(directory.close)           # cleanups run last-in first-out: after pool.stop
        pool.start()
        self.addCleanup(pool.stop)
        return directory

    @defer.inlineCallbacks
    def assertUnavailable(self, d: defer.Deferred):
        yield self.assertFailure(d, DirectoryUnavailable)


class LookupTests(DirectoryCase):
    @defer.inlineCallbacks
    def test_lookup_by_mail_gives_the_primary_address_and_every_extra_one(self):
        user = yield self.directory().lookup("alice@example.test")
        self.assertEqual(user.address, "alice@example.test")
        self.assertEqual(user.addresses, {"alice@example.test", "a.smith@example.test"})
        self.assertTrue(user.enabled)
        self.assertIsNone(user.shared_secret)

    @defer.inlineCallbacks
    def test_lookup_by_mail_local_address_finds_the_same_user(self):
        user = yield self.directory().lookup("A.Smith@EXAMPLE.test")
        self.assertEqual(user.address, "alice@example.test")

    @defer.inlineCallbacks
    def test_primary_address_is_normalised(self):
        user = yield self.directory().lookup("bob@example.test")
        self.assertEqual(user.address, "bob@example.test")

    @defer.inlineCallbacks
    def test_unknown_address_and_non_address_are_none(self):
        directory = self.directory()
        self.assertIsNone((yield directory.lookup("nobody@example.test")))
        self.assertIsNone((yield directory.lookup("not an address")))

    @defer.inlineCallbacks
    def test_filter_injection_finds_nothing(self):
        directory = self.directory()
        for login in ("*@example.test", "alice@example.test)(mail=*", "bob)(uid=*)@example.test",
                      "*)(objectClass=*@example.test", "alice@example.test\\"):
            self.assertIsNone((yield directory.lookup(login)), login)
            self.assertIsNone((yield directory.authenticate(login, PASSWORDS["alice"])), login)

    @defer.inlineCallbacks
    def test_disabled_user_is_found_but_disabled(self):
        user = yield self.directory().lookup("carol@example.test")
        self.assertFalse(user.enabled)

    @defer.inlineCallbacks
    def test_nis_mail_alias_expands_to_its_members(self):
        targets = yield self.directory().resolve_alias("Postmaster@example.test")
        self.assertEqual(targets, ["alice@example.test", "bob@example.test"])

    @defer.inlineCallbacks
    def test_group_expands_to_members_mail_skipping_members_without_one(self):
        targets = yield self.directory().resolve_alias("staff@example.test")
        self.assertEqual(targets, ["alice@example.test", "bob@example.test"])

    @defer.inlineCallbacks
    def test_forward_is_an_alias_and_plain_users_are_not(self):
        directory = self.directory()
        self.assertEqual((yield directory.resolve_alias("dave@example.test")), ["dave@elsewhere.test"])
        self.assertIsNone((yield directory.resolve_alias("alice@example.test")))
        self.assertIsNone((yield directory.resolve_alias("nobody@example.test")))

    @defer.inlineCallbacks
    def test_describe_shows_entry_addresses_and_no_password(self):
        info = yield self.directory().describe("a.smith@example.test")
        self.assertEqual(info["entry"], f"uid=alice,{PEOPLE}")
        self.assertEqual(info["primary"], "alice@example.test")
        self.assertEqual(info["addresses"], ["a.smith@example.test", "alice@example.test"])
        self.assertEqual(info["shared_secret"], "none")
        self.assertNotIn(PASSWORDS["alice"], repr(info))

    @defer.inlineCallbacks
    def test_check_binds_and_searches(self):
        summary = yield self.directory().check()
        self.assertIn(SERVICE_DN, summary)
        self.assertIn(self.slapd.url.split("//")[1], summary)

    @defer.inlineCallbacks
    def test_check_reports_a_wrong_service_password(self):
        with open(self.password_file, "w") as out:
            out.write("wrong\n")
        failure = yield self.assertFailure(self.directory().check(), DirectoryUnavailable)
        self.assertIn("service account's bind was refused", str(failure))

    @defer.inlineCallbacks
    def test_wrong_base_dn_is_unavailable_not_unknown(self):
        yield self.assertUnavailable(self.directory(base_dn="dc=nowhere,dc=test").lookup("alice@example.test"))


class AuthenticationTests(DirectoryCase):
    @defer.inlineCallbacks
    def test_ssha_and_crypt_passwords(self):
        directory = self.directory()
        alice = yield directory.authenticate("alice@example.test", PASSWORDS["alice"])
        bob = yield directory.authenticate("bob@example.test", PASSWORDS["bob"])
        self.assertEqual((alice.address, bob.address), ("alice@example.test", "bob@example.test"))

    @defer.inlineCallbacks
    def test_login_with_an_extra_address_gives_the_primary(self):
        user = yield self.directory().authenticate("a.smith@example.test", PASSWORDS["alice"])
        self.assertEqual(user.address, "alice@example.test")

    @defer.inlineCallbacks
    def test_wrong_empty_or_other_users_password_is_none(self):
        directory = self.directory()
        for password in ("wrong", "", PASSWORDS["bob"], PASSWORDS["alice"] + " "):
            self.assertIsNone((yield directory.authenticate("alice@example.test", password)), password)
        self.assertIsNone((yield directory.authenticate("nobody@example.test", PASSWORDS["alice"])))

    @defer.inlineCallbacks
    def test_disabled_user_cannot_log_in_with_the_right_password(self):
        self.assertIsNone((yield self.directory().authenticate("carol@example.test", PASSWORDS["carol"])))

    @defer.inlineCallbacks
    def test_user_bind_does_not_change_what_the_service_account_sees(self):
        """After a user's bind, searches still run as the service account (which may read mail)."""
        directory = self.directory(pool_size=1)
        yield directory.authenticate("bob@example.test", PASSWORDS["bob"])
        user = yield directory.lookup("a.smith@example.test")
        self.assertEqual(user.address, "alice@example.test")

    @defer.inlineCallbacks
    def test_no_shared_secrets_unless_configured(self):
        directory = self.directory()
        self.assertFalse(directory.supports_shared_secrets)
        self.assertIsNone((yield directory.lookup("erin@example.test")).shared_secret)

    @defer.inlineCallbacks
    def test_acl_keeps_passwords_from_the_service_account(self):
        directory = self.directory(shared_secret_attribute="userPassword")
        self.assertTrue(directory.supports_shared_secrets)
        self.assertIsNone((yield directory.lookup("erin@example.test")).shared_secret)


class SharedSecretTests(DirectoryCase):
    service_reads_passwords = True

    @defer.inlineCallbacks
    def test_cleartext_value_is_a_secret_and_a_hash_is_not(self):
        directory = self.directory(shared_secret_attribute="userPassword")
        self.assertEqual((yield directory.lookup("erin@example.test")).shared_secret, PASSWORDS["erin"])
        self.assertIsNone((yield directory.lookup("alice@example.test")).shared_secret)


class CacheTests(DirectoryCase):
    @defer.inlineCallbacks
    def test_answers_found_or_not_are_kept_for_cache_ttl(self):
        directory = self.directory(cache_ttl=60)
        yield directory.lookup("alice@example.test")
        yield directory.lookup("nobody@example.test")
        self.slapd.stop()
        self.assertEqual((yield directory.lookup("alice@example.test")).address, "alice@example.test")
        self.assertIsNone((yield directory.lookup("nobody@example.test")))

    @defer.inlineCallbacks
    def test_answers_expire(self):
        directory = self.directory(cache_ttl=1)
        yield directory.lookup("alice@example.test")
        self.slapd.stop()
        yield task.deferLater(reactor, 1.1, lambda: None)
        yield self.assertUnavailable(directory.lookup("alice@example.test"))

    @defer.inlineCallbacks
    def test_passwords_are_checked_every_time(self):
        directory = self.directory(cache_ttl=60)
        self.assertIsNotNone((yield directory.authenticate("alice@example.test", PASSWORDS["alice"])))
        self.slapd.stop()
        yield self.assertUnavailable(directory.authenticate("alice@example.test", PASSWORDS["alice"]))


class OutageTests(DirectoryCase):
    @defer.inlineCallbacks
    def test_stopped_slapd_is_unavailable_then_recovers_by_itself(self):
        directory = self.directory(cache_ttl=0)
        self.assertIsNotNone((yield directory.lookup("alice@example.test")))
        self.slapd.stop()
        yield self.assertUnavailable(directory.lookup("alice@example.test"))
        yield self.assertUnavailable(directory.lookup("nobody@example.test"))
        yield self.assertUnavailable(directory.authenticate("alice@example.test", PASSWORDS["alice"]))
        yield self.assertUnavailable(directory.resolve_alias("staff@example.test"))
        self.slapd.start()
        self.assertEqual((yield directory.lookup("alice@example.test")).address, "alice@example.test")
        self.assertIsNotNone((yield directory.authenticate("alice@example.test", PASSWORDS["alice"])))

    @defer.inlineCallbacks
    def test_paused_slapd_times_out_while_the_reactor_keeps_ticking(self):
        directory = self.directory(timeout=1, pool_size=4, cache_ttl=0)
        yield directory.lookup("alice@example.test")          # every worker may now hold a connection
        gaps, last = [], [time.monotonic()]

        def tick() -> None:
            now = time.monotonic()
            gaps.append(now - last[0])
            last[0] = now

        ticker = task.LoopingCall(tick)
        ticker.start(0.01)
        self.slapd.pause()
        self.addCleanup(self.slapd.resume)                     # runs before the pool is stopped
        started = time.monotonic()
        lookups = [directory.lookup(f"user{n}@example.test") for n in range(20)]
        results = yield defer.DeferredList(lookups, consumeErrors=True)
        elapsed = time.monotonic() - started
        ticker.stop()
        self.assertTrue(all(not ok and failure.check(DirectoryUnavailable) for ok, failure in results))
        self.assertLess(elapsed, 3.5)                         # about one timeout, not 20 / 4 of them
        self.assertLess(max(gaps), 0.05 + 0.01)
        self.slapd.resume()
        self.assertIsNotNone((yield directory.lookup("alice@example.test")))


class FailoverTests(DirectoryCase):
    @defer.inlineCallbacks
    def test_second_url_answers_when_the_first_is_down_and_first_comes_back(self):
        second = self.start_slapd("two")
        directory = self.directory(urls=(self.slapd.url, second.url), cache_ttl=0, pool_size=1)
        self.slapd.stop()
        self.assertEqual((yield directory.lookup("alice@example.test")).address, "alice@example.test")
        self.assertIsNotNone((yield directory.authenticate("bob@example.test", PASSWORDS["bob"])))
        second.stop()
        yield self.assertUnavailable(directory.lookup("alice@example.test"))
        self.slapd.start()
        self.assertIsNotNone((yield directory.lookup("alice@example.test")))

    @defer.inlineCallbacks
    def test_paused_first_url_fails_over_after_the_timeout(self):
        second = self.start_slapd("two")
        directory = self.directory(urls=(self.slapd.url, second.url), cache_ttl=0, timeout=1, pool_size=1)
        self.slapd.pause()
        self.addCleanup(self.slapd.resume)
        self.assertIsNotNone((yield directory.authenticate("alice@example.test", PASSWORDS["alice"])))
        started = time.monotonic()
        self.assertIsNotNone((yield directory.authenticate("bob@example.test", PASSWORDS["bob"])))
        self.assertLess(time.monotonic() - started, 0.5)      # the failover target is now tried first


class TLSTests(DirectoryCase):
    tls = True

    @defer.inlineCallbacks
    def test_ldaps_with_the_ca(self):
        directory = self.directory(urls=(self.slapd.ldaps_url,), ca_file=self.slapd.ca_file)
        self.assertIsNotNone((yield directory.authenticate("alice@example.test", PASSWORDS["alice"])))

    @defer.inlineCallbacks
    def test_starttls_with_the_ca(self):
        directory = self.directory(starttls=True, ca_file=self.slapd.ca_file)
        self.assertIsNotNone((yield directory.authenticate("bob@example.test", PASSWORDS["bob"])))
        self.assertIsNotNone((yield directory.lookup("alice@example.test")))

    @defer.inlineCallbacks
    def test_unknown_ca_is_refused_for_ldaps_and_starttls(self):
        other = os.path.join(self.folder, "other-ca")
        os.makedirs(other)
        write_test_certificates(other, ["127.0.0.1"])
        wrong_ca = os.path.join(other, "ca.pem")
        for directory in (self.directory(urls=(self.slapd.ldaps_url,), ca_file=wrong_ca),
                          self.directory(starttls=True, ca_file=wrong_ca)):
            yield self.assertUnavailable(directory.authenticate("alice@example.test", PASSWORDS["alice"]))

    @defer.inlineCallbacks
    def test_certificate_for_another_name_is_refused(self):
        elsewhere = Slapd(os.path.join(self.folder, "elsewhere"), tls=True, tls_names=("ldap.example.test",))
        os.makedirs(elsewhere.folder)
        self.addCleanup(elsewhere.stop)
        elsewhere.setup(organisation_ldif())
        elsewhere.start()
        directory = self.directory(urls=(elsewhere.ldaps_url,), ca_file=elsewhere.ca_file)
        yield self.assertUnavailable(directory.lookup("alice@example.test"))
