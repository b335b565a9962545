"""Properties of appliance.address, the one place that parses and compares addresses.

split/normalise/domain_of raise AddressSyntaxError and nothing else; what `is_valid` accepts
normalises to an address that is still valid and has a domain; normalising twice changes nothing.
"""
from __future__ import annotations

import ipaddress

from hypothesis import example, given, strategies as st

from appliance import address
from appliance.address import AddressSyntaxError
from tests.unit.properties.strategies import address_like, addresses

texts = st.one_of(address_like, st.text(max_size=80), addresses)


@given(texts)
@example("a@.")           # the domain is empty once its trailing dot is dropped: was accepted as "a@"
@example("a@..")
def test_split_gives_a_local_part_and_a_domain_or_refuses(text):
    try:
        local, domain = address.split(text)
    except AddressSyntaxError:
        return
    assert local and domain


@given(texts)
@example("a@.")
@example("İ" * 64 + "@x.test")   # lower-casing doubles the local part past 64 characters
@example("aa@example.test\u3002")  # an ideographic full stop at the end: IDNA made it "example.test."
@example("0@\u00b4")                # IDNA maps the acute accent to a blank: "0@xn-- -xbb" was valid
def test_a_valid_address_normalises_to_a_valid_address_once_and_for_all(text):
    valid = address.is_valid(text)
    assert isinstance(valid, bool)
    try:
        normal = address.normalise(text)
    except AddressSyntaxError:
        assert not valid, text
        return
    if valid:                  # normalising text that is not an address need not be idempotent ("@@x.test .")
        assert address.is_valid(normal), normal
        assert address.normalise(normal) == normal
        assert address.domain_of(normal) == normal.rpartition("@")[2]


@given(texts, st.lists(st.sampled_from(["example.test", "xn--bcher-kva.example", "[1.2.3.4]"]), max_size=3))
def test_in_domains_is_a_yes_or_no(text, domains):
    assert isinstance(address.in_domains(text, domains), bool)


@given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str),
                 st.ip_addresses(v=6).map(lambda ip: f"{ip}%eth0")))
def test_in_networks_is_a_yes_or_no(host):
    networks = address.parse_networks("127.0.0.0/8, 192.0.2.0/24, ::1/128, 2001:db8::/32")
    assert isinstance(address.in_networks(host, networks), bool)


@given(st.one_of(st.text(max_size=60), st.lists(st.tuples(st.ip_addresses(), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"), max_size=4).map(", ".join)))
def test_parse_networks_raises_only_value_error(text):
    try:
        networks = address.parse_networks(text)
    except ValueError:
        return
    assert all(isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in networks)
