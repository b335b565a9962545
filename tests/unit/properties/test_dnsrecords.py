"""Properties of the TXT records `mailappliance dns` prints: any text survives the zone-file form.

dnspython's parser stands in for the DNS server or provider that reads the line: the strings it
loads are at most 255 octets each (RFC 1035 3.3) and join back to the exact text.
"""
from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
from hypothesis import example, given, strategies as st

from appliance import dnsrecords


def txt_record(text: str) -> dnsrecords.Record:
    return dnsrecords.Record("example.test.", "TXT", text, "", "spf")


@given(st.text())
@example("")
@example("a" * 255)
@example("a" * 256)
@example('"\\;' * 200)
@example("é" * 200)             # 400 octets: a cut may fall inside a UTF-8 character, as DNS allows
def test_character_strings_are_at_most_255_octets_and_join_to_the_text(text):
    strings = dnsrecords.character_strings(text)
    assert all(len(part) <= dnsrecords.MAX_STRING for part in strings)
    assert b"".join(strings) == text.encode("utf-8")
    assert all(strings) or strings == [b""]


@given(st.text())
@example('v=spf1 include:"x" \\ -all')
@example("\x00\x7f\n")
def test_the_printed_txt_data_parses_back_to_the_same_strings(text):
    line = dnsrecords.rdata(txt_record(text))
    assert "\n" not in line and "\r" not in line
    parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, line)
    assert list(parsed.strings) == dnsrecords.character_strings(text)
