"""Properties of the DNSBL names we ask and of what we make of the answers (filters/dnsbl.py, filters/dns.py).

The name is the address's octets (IPv4) or 32 nibbles (IPv6) reversed under the zone (RFC 5782
2.1, 2.4), and it gives the address back; an IPv4 client on an IPv6 socket is asked as IPv4.
An answer counts as a listing exactly when it is in 127.0.0.0/8 outside 127.255.255.0/24; any
other text a list sends (another address, IPv6, garbage) never counts and never raises.
"""
from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st
from twisted.internet import defer
from twisted.names import dns as twisted_dns

from appliance.filters import dns
from appliance.filters.dnsbl import DNSBL, IGNORED, LISTED, REFUSED, classify, query_name, reply_safe
from appliance.replies import DNSBL_LISTED

zones = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,10}){1,3}\Z")
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)


@given(ipv4, zones)
def test_an_ipv4_name_is_the_reversed_octets_under_the_zone(ip, zone):
    name = query_name(str(ip), zone)
    assert name.endswith("." + zone)
    labels = name[:-len(zone) - 1].split(".")
    assert len(labels) == 4
    assert ipaddress.ip_address(".".join(reversed(labels))) == ip


@given(ipv6, zones)
def test_an_ipv6_name_is_32_reversed_nibbles_under_the_zone(ip, zone):
    if ip.ipv4_mapped is not None:
        return
    name = query_name(str(ip), zone)
    labels = name[:-len(zone) - 1].split(".")
    assert len(labels) == 32 and all(len(label) == 1 and label in "0123456789abcdef" for label in labels)
    assert int("".join(reversed(labels)), 16) == int(ip)
    assert name == ip.reverse_pointer.replace("ip6.arpa", zone)


@given(ipv4, zones)
def test_an_ipv4_mapped_client_is_asked_as_ipv4(ip, zone):
    assert query_name(f"::ffff:{ip}", zone) == query_name(str(ip), zone)


@given(ipv4)
def test_only_127_8_counts_and_127_255_255_x_is_a_refusal(ip):
    kind = classify(str(ip))
    if ip in ipaddress.ip_network("127.255.255.0/24"):
        assert kind == REFUSED
    elif ip in ipaddress.ip_network("127.0.0.0/8"):
        assert kind == LISTED
    else:
        assert kind == IGNORED


@given(st.one_of(ipv6.map(str), st.text(max_size=40)))
def test_anything_else_is_ignored_without_raising(text):
    try:
        ipaddress.IPv4Address(text)
        return                                     # a valid IPv4 address: the test above
    except ValueError:
        pass
    assert classify(text) == IGNORED


class _Answers:
    """Lookups that answer every A query with the same records."""

    def __init__(self, answers):
        self.answers = tuple(answers)

    def a(self, name):
        return defer.succeed(self.answers)


@given(st.lists(st.one_of(ipv4.map(str), st.text(max_size=20)), max_size=6))
def test_a_zone_lists_the_client_exactly_when_one_answer_is_a_listing(answers):
    check = DNSBL(_Answers(answers), (("bl.test", 1.0),))
    result = defer.ensureDeferred(check._ask("192.0.2.9", "bl.test", 1.0))
    found = []
    result.addCallback(found.append)
    [zone] = found
    assert zone.listed == any(classify(answer) == LISTED for answer in answers)
    assert bool(zone.problem) == (not zone.listed and bool(answers))


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_txt_records_of_any_bytes_become_text(strings):
    record = twisted_dns.RRHeader(b"x.test", twisted_dns.TXT, payload=twisted_dns.Record_TXT(*strings))
    assert dns._text(record) == b"".join(strings).decode("utf-8", "replace")


@given(st.text(max_size=600))
def test_a_lists_text_never_breaks_the_reply_line(text):
    safe = reply_safe(text)
    assert len(safe) <= 200 and all(" " <= c <= "~" for c in safe)
    line = DNSBL_LISTED.with_text(f"blocked; {safe}").line()
    assert b"\r" not in line and b"\n" not in line and line.startswith(b"554 5.7.1 ")
