"""MX routing: order, shuffling among equals, ourselves in the list, null and implicit MX, DNS errors."""
from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns, error
from twisted.trial.unittest import SynchronousTestCase

from appliance.couriers.mxroute import MXRouter
from appliance.errors import PermanentFailure, TemporaryFailure


class FakeResolver:
    """Answers from a table: name -> list of records, or an exception to fail with.

    A name missing from the table is NXDOMAIN; `hang` names never answer.
    """

    def __init__(self, mx=None, a=None, aaaa=None, hang=()):
        self.tables = {dns.MX: mx or {}, dns.A: a or {}, dns.AAAA: aaaa or {}}
        self.hang = set(hang)

    def _lookup(self, kind: int, name: str) -> defer.Deferred:
        if name in self.hang:
            return defer.Deferred()
        known = any(name in table for table in self.tables.values())
        entry = self.tables[kind].get(name, [] if known else error.DNSNameError(name))
        if isinstance(entry, Exception):
            return defer.fail(entry)
        return defer.succeed(([dns.RRHeader(name, kind, payload=payload) for payload in entry], [], []))

    def lookupMailExchange(self, name):
        return self._lookup(dns.MX, name)

    def lookupAddress(self, name):
        return self._lookup(dns.A, name)

    def lookupIPV6Address(self, name):
        return self._lookup(dns.AAAA, name)


def MX(preference: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(preference, name)


def A(ip: str) -> dns.Record_A:
    return dns.Record_A(ip)


HOSTS = {f"mx{n}.example.org": [A(f"192.0.2.{n}")] for n in range(1, 7)}


class RouteTests(SynchronousTestCase):

    def router(self, resolver, **options) -> MXRouter:
        options.setdefault("clock", Clock())
        return MXRouter(resolver, "mail.example.test", options.pop("my_addresses", ["198.51.100.1"]), **options)

    def route(self, resolver, domain="example.org", **options):
        return self.successResultOf(self.router(resolver, **options).route(domain))

    def refusal(self, resolver, domain="example.org", **options) -> str:
        failure = self.failureResultOf(self.router(resolver, **options).route(domain), PermanentFailure,
                                       TemporaryFailure)
        return f"{type(failure.value).__name__}: {failure.value}"

    def test_hosts_are_tried_by_preference(self):
        resolver = FakeResolver(mx={"example.org": [MX(30, "mx3.example.org"), MX(10, "mx1.example.org"),
                                                    MX(20, "mx2.example.org")]}, a=HOSTS)
        assert self.route(resolver) == [("mx1.example.org", "192.0.2.1"), ("mx2.example.org", "192.0.2.2"),
                                        ("mx3.example.org", "192.0.2.3")]

    def test_equal_preferences_are_shuffled_reproducibly_with_a_seed(self):
        resolver = FakeResolver(mx={"example.org": [MX(10, f"mx{n}.example.org") for n in range(1, 6)]
                                    + [MX(5, "mx6.example.org")]}, a=HOSTS)
        orders = {tuple(host for host, _ in self.route(resolver, rng=random.Random(seed))) for seed in range(20)}
        assert len(orders) > 1, "equal preferences must not always come in the same order"
        assert all(order[0] == "mx6.example.org" for order in orders), "the most preferred host stays first"
        assert all(sorted(order[1:]) == [f"mx{n}.example.org" for n in range(1, 6)] for order in orders)
        first = self.route(resolver, rng=random.Random(7))
        assert self.route(resolver, rng=random.Random(7)) == first

    def test_ipv4_and_ipv6_addresses_are_both_tried(self):
        resolver = FakeResolver(mx={"example.org": [MX(10, "mx1.example.org")]},
                                a={"mx1.example.org": [A("192.0.2.1")]},
                                aaaa={"mx1.example.org": [dns.Record_AAAA("2001:db8::1")]})
        assert self.route(resolver) == [("mx1.example.org", "192.0.2.1"), ("mx1.example.org", "2001:db8::1")]

    def test_only_hosts_more_preferred_than_us_are_kept(self):
        resolver = FakeResolver(mx={"example.org": [MX(10, "mx1.example.org"), MX(20, "mail.example.test"),
                                                    MX(30, "mx3.example.org")]},
                                a={**HOSTS, "mail.example.test": [A("198.51.100.1")]})
        assert self.route(resolver) == [("mx1.example.org", "192.0.2.1")]

    def test_we_are_recognised_by_address_too(self):
        resolver = FakeResolver(mx={"example.org": [MX(10, "mx1.example.org"), MX(20, "mx2.example.org")]},
                                a=HOSTS)
        assert self.route(resolver, my_addresses=["192.0.2.2"]) == [("mx1.example.org", "192.0.2.1")]

    def test_being_the_best_mx_is_a_loop(self):
        resolver = FakeResolver(mx={"example.org": [MX(10, "mail.example.test"), MX(20, "mx2.example.org")]},
                                a={**HOSTS, "mail.example.test": [A("198.51.100.1")]})
        assert self.refusal(resolver) == "PermanentFailure: 5.4.6 mail for example.org loops back to myself"

    def test_null_mx_is_permanent(self):
        resolver = FakeResolver(mx={"example.org": [MX(0, "")]})
        assert self.refusal(resolver) == "PermanentFailure: 5.1.10 domain example.org does not accept mail (null MX)"

    def test_no_mx_means_the_domain_itself(self):
        resolver = FakeResolver(mx={"example.org": []}, a={"example.org": [A("192.0.2.9")]})
        assert self.route(resolver) == [("example.org", "192.0.2.9")]

    def test_no_mx_and_no_address_is_permanent(self):
        resolver = FakeResolver(mx={"example.org": []})
        assert self.refusal(resolver).startswith("PermanentFailure: 5.4.4 ")

    def test_nxdomain_is_permanent(self):
        assert self.refusal(FakeResolver()) == \
            "PermanentFailure: 5.1.2 domain example.org does not exist (NXDOMAIN)"

    def test_mx_hosts_without_addresses_are_skipped(self):
        resolver = FakeResolver(mx={"example.org": [MX(10, "gone.example.org"), MX(20, "mx2.example.org")]},
                                a=HOSTS)
        assert self.route(resolver) == [("mx2.example.org", "192.0.2.2")]

    def test_name_lookups_are_case_insensitive_and_idna(self):
        resolver = FakeResolver(mx={"xn--bcher-kva.example": [MX(10, "MX1.Example.ORG.")]}, a=HOSTS)
        assert self.route(resolver, domain="Bücher.example.") == [("mx1.example.org", "192.0.2.1")]


@pytest.mark.parametrize("problem", [error.DNSServerError("servfail"), error.DNSQueryTimeoutError("slow"),
                                     error.DNSQueryRefusedError("refused")])
def test_dns_failures_are_temporary(problem):
    """A resolver outage delays mail; it must never bounce it."""
    case = RouteTests()
    resolver = FakeResolver(mx={"example.org": problem})
    assert case.refusal(resolver).startswith("TemporaryFailure: 4.4.3 MX lookup for example.org failed")


def test_address_lookup_failure_of_every_host_is_temporary():
    case = RouteTests()
    resolver = FakeResolver(mx={"example.org": [MX(10, "mx1.example.org")]},
                            a={"mx1.example.org": error.DNSServerError("servfail")})
    assert case.refusal(resolver) == "TemporaryFailure: 4.4.3 could not resolve the mail hosts of example.org"


def test_a_resolver_that_never_answers_times_out_as_temporary():
    clock = Clock()
    router = MXRouter(FakeResolver(hang=["example.org"]), "mail.example.test", clock=clock, timeout=30)
    d = router.route("example.org")
    assert not d.called
    clock.advance(30)
    case = RouteTests()
    failure = case.failureResultOf(d, TemporaryFailure)
    assert str(failure.value) == "4.4.3 MX lookup for example.org failed: timed out"


def test_address_literals_only_when_allowed():
    case = RouteTests()
    assert case.route(FakeResolver(), domain="[192.0.2.7]", allow_literals=True) == [("[192.0.2.7]", "192.0.2.7")]
    assert case.route(FakeResolver(), domain="[IPv6:2001:db8::7]", allow_literals=True) == \
        [("[ipv6:2001:db8::7]", "2001:db8::7")]
    assert case.refusal(FakeResolver(), domain="[192.0.2.7]").startswith("PermanentFailure: 5.7.1 ")
    assert case.refusal(FakeResolver(), domain="[not-an-ip]", allow_literals=True).startswith(
        "PermanentFailure: 5.1.2 ")
