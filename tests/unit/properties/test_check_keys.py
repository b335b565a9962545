"""Properties of appliance.filters.keys: the greylisting and rate-limit keys made from outside input.

normalize_sender takes any MAIL FROM text without raising, keeps the domain, leaves no digit in
the local part, is stable (normalising twice changes nothing), and maps the VERP/BATV/SRS forms
of one sender to one key. network_key takes any peer text, and two addresses share a key
exactly when they share the /24 (IPv4) or /64 (IPv6).
"""
from __future__ import annotations

import ipaddress
import re

from hypothesis import example, given, strategies as st

from appliance.filters.keys import MAX_ADDRESS, network_key, normalize_sender
from tests.unit.properties.strategies import address_like, addresses

senders = st.one_of(address_like, addresses, st.text(max_size=80),
                    st.builds(lambda *p: "".join(p), st.sampled_from(["prvs=", "SRS0=", "SRS1=", "btv1==", "msprvs1="]),
                              st.text(alphabet="abc019=+-@.", max_size=30)))
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
numbers = st.integers(min_value=0, max_value=10**12)


@given(senders)
@example("prvs=a=prvs=b=x@y")
@example("SRS0=a=b=SRS0=c=d=e=f@g")
@example("srs1=a==srs0=h=t=d=u@f")
def test_normalising_is_stable_and_total(sender):
    once = normalize_sender(sender)
    assert normalize_sender(once) == once
    assert len(once) <= MAX_ADDRESS


@given(senders)
def test_no_digit_survives_in_the_local_part_and_the_domain_is_kept(sender):
    normal = normalize_sender(sender)
    local, at, domain = normal.rpartition("@")
    assert not any(c in "0123456789" for c in (local if at else normal))
    if at and "@" in sender:
        assert domain == re.sub(r"[.\s]+$", "", sender.strip().lower()[:MAX_ADDRESS].rpartition("@")[2])


@given(words, words, numbers, numbers, words, words)
def test_verp_senders_of_one_list_are_one_key(list_name, domain, first, second, user, user_domain):
    def verp(n, who):
        return f"{list_name}+{n}-{who}={user_domain}.test@{domain}.test"
    assert normalize_sender(verp(first, user)) == normalize_sender(verp(second, user + "x"))
    assert normalize_sender(verp(first, user)) == f"{list_name}@{domain}.test"


@given(words, words, numbers, numbers)
def test_batv_and_bounce_ids_are_one_key(user, domain, first, second):
    assert normalize_sender(f"prvs={first % 10000:04d}abcdef={user}@{domain}.test") == \
        normalize_sender(f"prvs={second % 10000:04d}fedcba={user}@{domain}.test") == f"{user}@{domain}.test"
    assert normalize_sender(f"bounce-{first}@{domain}.test") == normalize_sender(f"bounce-{second}@{domain}.test")


@given(words, words, words, numbers, numbers)
def test_srs_forwarded_senders_are_one_key(user, origin, forwarder, first, second):
    def srs(n):
        return f"SRS0={n:x}={n % 100:02d}={origin}.test={user}@{forwarder}.test"
    assert normalize_sender(srs(first)) == normalize_sender(srs(second)) == f"{user}={origin}.test@{forwarder}.test"


@given(words, words, words)
def test_different_senders_stay_apart(a, b, domain):
    if a != b:
        assert normalize_sender(f"{a}@{domain}.test") != normalize_sender(f"{b}@{domain}.test")


@given(st.text(max_size=60))
@example("fe80::1%eth0")
@example("::ffff:192.0.2.1")
def test_network_key_takes_any_peer_text(peer):
    assert isinstance(network_key(peer), str) and len(network_key(peer)) <= 64


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**32 - 1))
def test_ipv4_addresses_share_a_key_exactly_in_one_slash_24(a, b):
    ip_a, ip_b = ipaddress.IPv4Address(a), ipaddress.IPv4Address(b)
    same = (a >> 8) == (b >> 8)
    assert (network_key(str(ip_a)) == network_key(str(ip_b))) == same
    assert ip_a in ipaddress.ip_network(network_key(str(ip_a)))
    assert network_key(f"::ffff:{ip_a}") == network_key(str(ip_a))
    assert (network_key(str(ip_a), 32) == network_key(str(ip_b), 32)) == (a == b)


@given(st.integers(min_value=0, max_value=2**128 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_ipv6_addresses_share_a_key_exactly_in_one_slash_64(a, low):
    ip_a = ipaddress.IPv6Address(a)
    if ip_a.ipv4_mapped is not None:
        return
    neighbour = ipaddress.IPv6Address((a >> 64 << 64) | low)
    other = ipaddress.IPv6Address(a ^ (1 << 64))
    assert network_key(str(ip_a)) == network_key(str(neighbour)) == network_key(str(ip_a), 32)
    if other.ipv4_mapped is None:
        assert network_key(str(ip_a)) != network_key(str(other))
    assert ip_a in ipaddress.ip_network(network_key(str(ip_a)))
