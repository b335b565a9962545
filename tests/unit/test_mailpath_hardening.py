"""Issue 10, defects 1, 11, 14, 15: directory targets never run, Bcc removed on submission,
`[delivery] nameservers` alone, a looping alias does not stop the start."""
from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns

from appliance import aliases as aliasesmod, checks, config as configmod, message as rfc5322
from appliance.couriers import mxroute
from appliance.envelope import Recipient
from appliance.inline import InlineReactor
from appliance.intake import Arrival, Intake, RecipientResolver
from appliance.interfaces import UserRecord
from appliance.replies import SMTPReplyError
from tests.unit.test_intake import Queue, outcome, smtp_submit
from tests.unit.test_recipients import USERS, LDAPLike, reply_of, resolve


# ---- defect 1: commands and files only from the aliases file ------------------------------------

@pytest.mark.parametrize("target", ["|touch /tmp/pwned", "/tmp/pwned.mbox", "|/bin/sh -c id@example.test",
                                    " |cmd"])
def test_a_directory_list_naming_a_command_or_file_is_refused_never_run(tmp_path, target):
    directory = LDAPLike({"list@example.test": ["alice@example.test", target]})
    r = RecipientResolver(directory, None, ("example.test",))
    assert reply_of(r, "list@example.test").startswith("550 5.7.1")


def test_a_directory_forward_naming_a_command_is_refused_even_through_a_nested_list(tmp_path):
    directory = LDAPLike({"outer@example.test": ["inner@example.test"], "inner@example.test": ["|evil"]})
    r = RecipientResolver(directory, None, ("example.test",))
    assert reply_of(r, "outer@example.test").startswith("550 5.7.1")


def test_the_aliases_file_may_still_name_commands_reached_from_a_directory_list(tmp_path):
    path = tmp_path / "aliases"
    path.write_text("archive: |/usr/local/bin/archive\n")
    table = aliasesmod.AliasResolver(str(path), ("example.test",), allow_commands=True)
    directory = LDAPLike({"list@example.test": ["archive@example.test", "alice@example.test"]})
    r = RecipientResolver(directory, table, ("example.test",))
    assert [a for a, *_ in resolve(r, "list@example.test")] == ["|/usr/local/bin/archive", "alice@example.test"]


def test_a_user_whose_directory_address_reads_as_a_command_is_refused():
    class Odd(LDAPLike):
        def lookup(self, addr):
            if addr == "odd@example.test":
                return defer.succeed(UserRecord("|odd@example.test", frozenset({"odd@example.test"})))
            return defer.succeed(USERS.get(addr))
    r = RecipientResolver(Odd(), None, ("example.test",))
    assert reply_of(r, "odd@example.test").startswith("550 5.7.1")


# ---- defect 11: Bcc -----------------------------------------------------------------------------

SECRET = b"From: alice@example.test\r\nTo: bob@example.test\r\nBcc: carol@example.test\r\nSubject: s\r\n\r\nhi\r\n"


class Users:
    supports_shared_secrets = False

    def lookup(self, addr):
        return defer.succeed(USERS.get(addr.lower()))


@pytest.fixture
def intake():
    return Intake(Queue(), "mail.example.test", RecipientResolver(Users(), None, ("example.test",)),
                  clock=InlineReactor())


def test_authenticated_submission_removes_bcc(intake):
    replies = smtp_submit(intake, intake.clock, "alice@example.test", "bob@example.test", SECRET)
    assert replies[-2].startswith(b"250 ")
    [(_, queued)] = intake.queue.items
    assert not rfc5322.has(queued, "Bcc") and rfc5322.get(queued, "To") == b"bob@example.test"


def test_pickup_removes_bcc_and_mail_from_outside_keeps_what_it_came_with(intake):
    picked = Arrival(sender="root@example.test", recipients=[Recipient("bob@example.test")], message=SECRET,
                     service="pickup", protocol="local", login="root", insider=True, submission=True)
    outside = Arrival(sender="x@outside.example", recipients=[Recipient("bob@example.test")], message=SECRET,
                      service="smtp", protocol="ESMTP", peer="203.0.113.9")
    outcome(intake.accept(picked))
    outcome(intake.accept(outside))
    (_, from_pickup), (_, from_outside) = intake.queue.items
    assert not rfc5322.has(from_pickup, "Bcc")
    assert rfc5322.get(from_outside, "Bcc") == b"carol@example.test"


# ---- defect 14: [delivery] nameservers, and only they ------------------------------------------

def test_nameservers_replace_the_system_resolver():
    resolver = mxroute.make_resolver([("127.0.0.1", 5353)], MemoryReactorClock())
    assert isinstance(resolver, mxroute.CachingResolver)
    upstream = resolver.upstream
    assert upstream.servers == [("127.0.0.1", 5353)]
    assert upstream.resolv is None and not upstream.dynServers      # /etc/resolv.conf is never read
    assert upstream.pickServer() == ("127.0.0.1", 5353)


def test_the_cache_answers_until_the_ttl_and_never_keeps_failures():
    asked = []

    class Upstream:
        def _lookup(self, name, cls, type, timeout):
            asked.append(name)
            if name == b"down.example":
                return defer.fail(dns.DomainError(name))
            return defer.succeed(([dns.RRHeader(name, dns.A, ttl=60, payload=dns.Record_A("192.0.2.1"))], [], []))
    clock = Clock()
    resolver = mxroute.CachingResolver(Upstream(), clock)
    for _ in range(2):
        resolver.lookupAddress("ok.example").addErrback(lambda f: None)
        resolver.lookupAddress("down.example").addErrback(lambda f: None)
    assert asked == [b"ok.example", b"down.example", b"down.example"]
    clock.advance(61)
    resolver.lookupAddress("ok.example")
    assert asked[-1] == b"ok.example" and len(asked) == 4


def test_a_silent_nameserver_is_a_temporary_4_4_3():
    class Silent:
        def lookupMailExchange(self, name):
            return defer.Deferred()
    clock = Clock()
    router = mxroute.MXRouter(Silent(), "mail.example.test", clock=clock)
    results = []
    router.route("example.org").addBoth(results.append)
    clock.advance(mxroute.DNS_TIMEOUT)
    assert results[0].value.status == "4.4.3" and results[0].value.temporary


# ---- defect 15: a looping alias does not stop the start ----------------------------------------

def test_a_looping_alias_loads_and_only_the_looping_names_fail(tmp_path):
    path = tmp_path / "aliases"
    path.write_text("a: b\nb: a\ncontact: alice\n")
    table = aliasesmod.AliasResolver(str(path), ("example.test",))
    assert [p.split(": ", 1)[1] for p, _ in table.problems] == [
        "alias loop: a@example.test -> b@example.test -> a@example.test",
        "alias loop: b@example.test -> a@example.test -> b@example.test"]
    assert table.resolve("contact@example.test") == ["alice@example.test"]
    with pytest.raises(aliasesmod.AliasLoopError):
        table.resolve("a@example.test")
    r = RecipientResolver(Users(), table, ("example.test",))
    assert reply_of(r, "a@example.test").startswith("550 5.4.6")


def test_check_reports_the_loop_but_the_start_checks_do_not(tmp_path):
    (tmp_path / "aliases").write_text("a: b\nb: a\n")
    conf = tmp_path / "mailappliance.conf"
    conf.write_text("[appliance]\nhostname = mail.example.test\ndomains = example.test\nstate_dir = var\n"
                    "[storage]\npath = mail/{domain}/{local}\n[aliases]\nfile = aliases\n")
    cfg = configmod.load(str(conf))
    assert any("alias loop" in p for p in checks.check_files(cfg))
    assert not any("alias" in p for p in checks.check_files(cfg, starting=True))


def test_an_empty_answer_is_kept_for_its_soa_minimum_and_only_with_an_soa():
    """RFC 2308 5: "no AAAA for this MX host" is not asked again for every message."""
    asked = []
    soa = dns.RRHeader(b"example.org", dns.SOA, ttl=300,
                       payload=dns.Record_SOA(mname=b"ns.example.org", rname=b"hostmaster.example.org", minimum=60))

    class Upstream:
        def _lookup(self, name, cls, type, timeout):
            asked.append(name)
            return defer.succeed(([], [soa] if name == b"mx.example.org" else [], []))
    clock = Clock()
    resolver = mxroute.CachingResolver(Upstream(), clock)
    for _ in range(3):
        resolver.lookupIPV6Address("mx.example.org")
        resolver.lookupIPV6Address("bare.example.org")
    assert asked == [b"mx.example.org", b"bare.example.org", b"bare.example.org", b"bare.example.org"]
    clock.advance(61)
    resolver.lookupIPV6Address("mx.example.org")
    assert asked[-1] == b"mx.example.org" and len(asked) == 5
