"""The connect-stage DNS checks against a real twisted.names server on loopback: what a client sees.

Lookups (filters/dns.py): answers, "does not exist" against "could not tell", TTLs, silence.
FCrDNS (filters/fcrdns.py): the PTR name confirmed or not, and a DNS outage that doubts nobody.
DNSBL (filters/dnsbl.py): a listed client refused 554 5.7.1 at MAIL, weights, allow lists,
answers that must not count, a silent list that never holds the session longer than dns_timeout.
"""
from __future__ import annotations

import functools
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from appliance import config
from appliance.filters.base import Check
from appliance.filters.build import make_pipeline
from appliance.filters.dns import DNSUnsure, Lookups, Prefetch
from appliance.filters.dnsbl import DNSBL, query_name
from appliance.filters.fcrdns import FCrDNS
from tests.unit.checkrig import CheckRig, LogLines, codes
from tests.unit.dnsrig import A, AAAA, PTR, TXT, LocalDNS, SilentDNS, Zone, lookups, until

PEER = "192.0.2.9"
PEER6 = "2001:db8::9"


def _names_timers() -> list[Any]:
    def module(func: Any) -> str:
        owner = getattr(func, "__self__", None)
        return getattr(owner if owner is not None else func, "__module__", "") or ""
    return [call for call in reactor.getDelayedCalls() if module(call.func).startswith("twisted.names")]


@defer.inlineCallbacks
def settle(limit: float = 5.0) -> Any:
    """Wait until twisted.names has no timer left (a query that timed out clears itself a moment
    later): trial fails a test that leaves a timer behind, and how soon it fires depends on load."""
    deadline = time.monotonic() + limit
    while _names_timers() and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.05, lambda: None)


def deferred(method: Any) -> Any:
    """Lets trial run an `async def` test (it waits for the Deferred with the real reactor)."""
    @functools.wraps(method)
    def run(self: Any) -> defer.Deferred:
        return defer.ensureDeferred(method(self))
    return run


def zones(*extra: Zone) -> LocalDNS:
    """The client zones: a confirmed client, one whose PTR does not resolve back, one without PTR."""
    forward = Zone("client.test", {
        "mail.client.test": [A(PEER), AAAA(PEER6)],
        "liar.client.test": [A("198.51.100.1")],
        "servfail.client.test": [A(PEER)],
    })
    reverse = Zone("2.0.192.in-addr.arpa", {
        "9.2.0.192.in-addr.arpa": [PTR("mail.client.test")],
        "10.2.0.192.in-addr.arpa": [PTR("liar.client.test")],
        "12.2.0.192.in-addr.arpa": [PTR("servfail.client.test")],
        "13.2.0.192.in-addr.arpa": [PTR(f"host{n}.silent.test") for n in range(5)],
    })
    reverse6 = Zone("8.b.d.0.1.0.0.2.ip6.arpa", {
        query_name(PEER6, "ip6.arpa"): [PTR("mail.client.test")],
    })
    return LocalDNS(forward, reverse, reverse6, *extra)


def blocklist(zone: str, listed: dict[str, str], ttl: int = 300, texts: dict[str, str] | None = None) -> Zone:
    """A DNSBL zone: client address -> the A record it answers (127.0.0.2 "listed", 127.255.255.254 ...)."""
    texts = texts or {}
    return Zone(zone, {query_name(ip, zone): [A(answer, ttl=ttl)] + ([TXT(texts[ip], ttl=ttl)] if ip in texts else [])
                       for ip, answer in listed.items()})


async def session(checks: list[Check], peer: str = PEER, **options: Any) -> CheckRig:
    """An SMTP session whose banner (sent after the connect stage) has arrived."""
    rig = CheckRig(checks, peer=peer, **options)
    banner: list[bytes] = list(rig.greeting)
    await until(lambda: banner.extend(rig.take()) or any(line.startswith(b"220 ") for line in banner))
    return rig


class LookupTests(TestCase):

    def setUp(self) -> None:
        self.addCleanup(settle)
        self.server = zones(Zone("short.test", {"a.short.test": [A("192.0.2.1", ttl=1)]}, negative_ttl=1))
        self.addCleanup(self.server.stop)
        self.lookups = lookups(self.server.address)

    @deferred
    async def test_answers_and_the_two_kinds_of_no(self) -> None:
        assert await self.lookups.a("mail.client.test") == (PEER,)
        assert await self.lookups.addresses("mail.client.test") == (PEER, PEER6)
        assert await self.lookups.ptr(PEER) == ("mail.client.test",)
        assert await self.lookups.a("nxdomain.client.test") == ()          # NXDOMAIN: does not exist
        assert await self.lookups.aaaa("liar.client.test") == ()           # NODATA: no such record
        with self.assertRaises(DNSUnsure):                                 # SERVFAIL: could not tell
            await self.lookups.a("servfail.client.test")

    @deferred
    async def test_txt_strings_are_joined(self) -> None:
        server = LocalDNS(Zone("txt.test", {"spf.txt.test": [TXT("v=spf1 ", "-all")]}))
        self.addCleanup(server.stop)
        assert await lookups(server.address).txt("spf.txt.test") == ("v=spf1 -all",)

    @deferred
    async def test_answers_and_no_answers_are_cached_for_their_ttl_failures_are_not(self) -> None:
        cached = lookups(self.server.address, negative_ttl=1)   # Twisted's server sends no SOA with NXDOMAIN
        asked = [("a.short.test", 1), ("a.short.test", 28), ("none.short.test", 1)]
        for _ in range(2):
            assert await cached.a("a.short.test") == ("192.0.2.1",)           # TTL 1
            assert await cached.aaaa("a.short.test") == ()                    # NODATA: SOA minimum 1 (RFC 2308 5)
            assert await cached.a("none.short.test") == ()                    # NXDOMAIN
            with self.assertRaises(DNSUnsure):
                await cached.a("servfail.client.test")
        assert [self.server.queries.count(query) for query in asked] == [1, 1, 1]
        assert self.server.queries.count(("servfail.client.test", 1)) == 2
        await _sleep(1.2)
        await cached.a("a.short.test")
        await cached.aaaa("a.short.test")
        await cached.a("none.short.test")
        assert [self.server.queries.count(query) for query in asked] == [2, 2, 2]

    @deferred
    async def test_the_cache_is_bounded(self) -> None:
        small = Lookups(self.lookups.resolver, reactor, 2.0, max_entries=2)
        for name in ("mail.client.test", "liar.client.test", "nx.client.test", "mail.client.test"):
            await small.a(name)
        assert self.server.queries.count(("mail.client.test", 1)) == 2     # pushed out by the third name

    @deferred
    async def test_a_silent_nameserver_is_could_not_tell_within_the_timeout(self) -> None:
        silent = SilentDNS()
        self.addCleanup(silent.stop)
        started = time.monotonic()
        with self.assertRaises(DNSUnsure):
            await lookups(silent.address, timeout=1).ptr(PEER)
        assert 0.9 < time.monotonic() - started < 1.6

    @deferred
    async def test_a_lookup_writes_no_twisted_log_lines(self) -> None:
        seen: list[dict] = []
        globalLogPublisher.addObserver(seen.append)
        try:
            await self.lookups.a("mail.client.test")
            await self.lookups.ptr(PEER)
            await _sleep(0.05)                                             # the UDP port closes a tick later
        finally:
            globalLogPublisher.removeObserver(seen.append)
        assert [event.get("log_format") or event.get("message") for event in seen] == []


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater
    await deferLater(reactor, seconds, lambda: None)


class FCrDNSTests(TestCase):

    def setUp(self) -> None:
        self.server = zones()
        self.addCleanup(self.server.stop)
        self.addCleanup(settle)
        self.check = FCrDNS(lookups(self.server.address, timeout=1))

    @deferred
    async def test_a_confirmed_name_is_kept_and_says_nothing(self) -> None:
        with LogLines() as log:
            rig = await session([self.check])
        facts = rig.proto.facts
        assert facts.ptr == "mail.client.test" and facts.doubts == []
        assert facts.notes["iprev"].result == "pass"
        assert facts.notes["iprev"].properties == (("policy.iprev", PEER),)
        assert log.matching("check ") == []
        assert codes(rig.mail()) == [b"250", b"250", b"250", b"354", b"250"]

    @deferred
    async def test_ipv6_clients_are_confirmed_by_their_aaaa(self) -> None:
        rig = await session([self.check], peer=PEER6)
        assert rig.proto.facts.ptr == "mail.client.test"

    @deferred
    async def test_a_name_that_does_not_resolve_back_is_a_doubt_not_a_refusal(self) -> None:
        with LogLines() as log:
            rig = await session([self.check], peer="192.0.2.10")
        facts = rig.proto.facts
        assert facts.ptr == "" and facts.doubts == ["no forward-confirmed reverse DNS"]
        assert facts.notes["iprev"].result == "fail"
        [line] = log.matching("check ")
        assert f"session={facts.session}" in line and "check=fcrdns" in line and "verdict=tag" in line
        assert "liar.client.test" in line
        assert codes(rig.mail())[-1] == b"250"

    @deferred
    async def test_no_ptr_is_a_doubt(self) -> None:
        rig = await session([self.check], peer="192.0.2.11")
        facts = rig.proto.facts
        assert facts.ptr == "" and facts.doubtful
        assert facts.notes["iprev"].result == "permerror"                  # RFC 8601 3: no PTR published

    @deferred
    async def test_dns_trouble_doubts_nobody(self) -> None:
        rig = await session([self.check], peer="192.0.2.12")                # its forward name answers SERVFAIL
        assert rig.proto.facts.ptr is None and rig.proto.facts.doubts == []
        assert rig.proto.facts.notes["iprev"].result == "temperror"
        silent = SilentDNS()
        self.addCleanup(silent.stop)
        rig = await session([FCrDNS(lookups(silent.address, timeout=1))])
        assert rig.proto.facts.ptr is None and rig.proto.facts.doubts == []
        assert rig.proto.facts.notes["iprev"].result == "temperror"

    @deferred
    async def test_forward_names_that_never_answer_hold_the_banner_for_one_dns_timeout(self) -> None:
        started = time.monotonic()
        rig = await session([self.check], peer="192.0.2.13")               # PTR at once, its 5 names silent
        assert time.monotonic() - started < 1.6
        assert rig.proto.facts.ptr is None and rig.proto.facts.doubts == []
        assert len([name for name, _ in self.server.queries if name.endswith("silent.test")]) == 3   # at most a few

    @deferred
    async def test_trusted_clients_are_not_looked_up(self) -> None:
        await session([self.check], trusted="192.0.2.0/24")
        assert self.server.queries == []


class DNSBLTests(TestCase):

    def setUp(self) -> None:
        self.server = zones(
            blocklist("bl.test", {PEER: "127.0.0.2", "192.0.2.20": "127.255.255.254", "192.0.2.21": "192.0.2.99",
                                  PEER6: "127.0.0.4"}),
            blocklist("weak.test", {PEER: "127.0.0.3", "192.0.2.22": "127.0.0.2", "192.0.2.23": "127.0.0.2"},
                      texts={"192.0.2.23": "Listed:\r\n see https://weak.test/q?192.0.2.23\x00"}),
            blocklist("wl.test", {PEER: "127.0.10.3", "192.0.2.22": "127.0.10.3"}))
        self.addCleanup(self.server.stop)
        self.addCleanup(settle)
        self.lookups = lookups(self.server.address, timeout=1)

    def dnsbl(self, bl: tuple = (("bl.test", 2.0),), wl: tuple = (), threshold: float = 2.0) -> DNSBL:
        return DNSBL(self.lookups, bl, wl, threshold)

    @deferred
    async def test_a_listed_client_is_refused_554_5_7_1_at_mail_naming_the_list(self) -> None:
        with LogLines() as log:
            rig = await session([self.dnsbl()])
            out = rig.send(b"EHLO client.test\r\n")
            assert codes(out) == [b"250"]
            out = rig.send(b"MAIL FROM:<x@remote.test>\r\n")
        assert out == [b"554 5.7.1 Service unavailable; client [192.0.2.9] blocked using bl.test"]
        assert rig.proto.facts.scores["dnsbl"] == 2.0
        [line] = log.matching("check ")
        assert f"session={rig.proto.facts.session}" in line and "check=dnsbl" in line
        assert "stage=connect" in line and "verdict=reject" in line and "bl.test" in line

    @deferred
    async def test_every_list_that_blocks_is_named(self) -> None:
        rig = await session([self.dnsbl(bl=(("bl.test", 1.0), ("weak.test", 1.0)))])
        out = rig.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n")
        assert out[-1] == b"554 5.7.1 Service unavailable; client [192.0.2.9] blocked using bl.test, weak.test"

    @deferred
    async def test_the_lists_own_text_is_added_to_the_reply_made_safe(self) -> None:
        rig = await session([self.dnsbl(bl=(("weak.test", 2.0),))], peer="192.0.2.23")
        out = rig.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n")
        assert out[-1] == (b"554 5.7.1 Service unavailable; client [192.0.2.23] blocked using weak.test;"
                           b" Listed: see https://weak.test/q?192.0.2.23")

    @deferred
    async def test_below_the_threshold_the_client_is_doubtful_and_delivers(self) -> None:
        rig = await session([self.dnsbl(bl=(("weak.test", 1.0),))])
        facts = rig.proto.facts
        assert facts.scores["dnsbl"] == 1.0 and facts.doubts == ["listed on weak.test"]
        assert codes(rig.mail())[-1] == b"250"

    @deferred
    async def test_an_allow_list_cancels_a_listing(self) -> None:
        rig = await session([self.dnsbl(wl=(("wl.test", -5.0),))])
        facts = rig.proto.facts
        assert facts.scores["dnsbl"] == -3.0 and facts.notes["allowlisted"] is True and not facts.doubtful
        assert codes(rig.mail())[-1] == b"250"

    @deferred
    async def test_an_allow_list_weight_written_without_a_sign_still_allows(self) -> None:
        rig = await session([self.dnsbl(bl=(("weak.test", 1.0),), wl=(("wl.test", 1.0),))], peer="192.0.2.22")
        assert rig.proto.facts.scores["dnsbl"] == 0 and not rig.proto.facts.doubtful

    @deferred
    async def test_a_list_refusing_to_answer_is_logged_and_ignored(self) -> None:
        with LogLines() as log:
            rig = await session([self.dnsbl()], peer="192.0.2.20")
        assert "dnsbl" not in rig.proto.facts.scores and not rig.proto.facts.doubtful
        [warning] = log.matching("check-warning ")
        assert "zone=bl.test" in warning and "127.255.255.254" in warning and "refused" in warning
        assert codes(rig.mail())[-1] == b"250"

    @deferred
    async def test_an_answer_outside_127_8_is_logged_and_ignored(self) -> None:
        with LogLines() as log:
            rig = await session([self.dnsbl()], peer="192.0.2.21")
        assert not rig.proto.facts.doubtful
        [warning] = log.matching("check-warning ")
        assert "192.0.2.99" in warning
        assert codes(rig.mail())[-1] == b"250"

    @deferred
    async def test_ipv6_clients_are_looked_up_by_nibbles(self) -> None:
        rig = await session([self.dnsbl()], peer=PEER6)
        out = rig.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n")
        assert out[-1] == b"554 5.7.1 Service unavailable; client [2001:db8::9] blocked using bl.test"
        name = "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        assert (name, 1) in self.server.queries

    @deferred
    async def test_a_second_session_is_answered_from_the_cache(self) -> None:
        check = self.dnsbl(bl=(("bl.test", 2.0), ("weak.test", 1.0)))
        asked = []
        for peer in (PEER, PEER, "192.0.2.30", "192.0.2.30"):               # listed (refused), then not listed
            rig = await session([check], peer=peer)
            rig.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n")
            asked.append(len(self.server.queries))
        assert asked[0] == asked[1] and asked[2] == asked[3]               # the answers and the NXDOMAINs were kept
        assert asked[2] - asked[1] == 2                                    # one query per list for a new client

    @deferred
    async def test_a_silent_list_never_holds_the_session_longer_than_dns_timeout(self) -> None:
        silent = SilentDNS()
        self.addCleanup(silent.stop)
        quiet = lookups(silent.address, timeout=1)
        checks: list[Any] = [FCrDNS(quiet), DNSBL(quiet, (("bl.test", 2.0), ("other.test", 2.0)), (), 2.0)]
        started = time.monotonic()
        with LogLines() as log:
            rig = await session([Prefetch(checks), *checks])
        assert time.monotonic() - started < 1.6                            # once dns_timeout, not once per check
        assert codes(rig.mail())[-1] == b"250"
        assert len(log.matching("check-warning ")) == 2                    # each list's silence is logged

    @deferred
    async def test_one_silent_list_does_not_hide_the_others(self) -> None:
        checks = [self.dnsbl(bl=(("bl.test", 2.0), ("silent.test", 2.0)))]
        started = time.monotonic()
        rig = await session(checks)
        assert time.monotonic() - started < 1.6
        out = rig.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n")
        assert out[-1].startswith(b"554 5.7.1")


def test_make_pipeline_runs_the_dns_checks_only_when_they_are_wanted(tmp_path):
    def pipeline(checks: str) -> list[str]:
        path = tmp_path / "mailappliance.conf"
        path.write_text("[appliance]\nhostname = mail.example.test\ndomains = example.test\n"
                        "[delivery]\nnameservers = 127.0.0.1:53\n[checks]\n" + checks)
        return make_pipeline(config.load(str(path)), reactor, None).names()
    assert pipeline("")[:2] == ["dns-prefetch", "fcrdns"]                  # the default: suspicious greylisting
    assert "fcrdns" not in pipeline("greylist = off\npregreet = off\n")
    assert pipeline("greylist = off\npregreet = off\ndnsbl = bl.test*2\n")[:2] == ["dns-prefetch", "dnsbl"]
    assert pipeline("dnswl = wl.test*-5\n")[:3] == ["dns-prefetch", "fcrdns", "dnsbl"]


def test_delivery_lookups_use_the_quiet_client_as_well():
    from twisted.internet.testing import MemoryReactorClock

    from appliance.couriers.mxroute import CachingResolver, QuietResolver, make_resolver
    system = make_resolver((), MemoryReactorClock())
    assert isinstance(system.resolvers[-1], QuietResolver) and system.resolvers[-1].resolv == "/etc/resolv.conf"
    ours = make_resolver([("127.0.0.1", 5353)], MemoryReactorClock())
    assert isinstance(ours, CachingResolver) and isinstance(ours.upstream, QuietResolver)
