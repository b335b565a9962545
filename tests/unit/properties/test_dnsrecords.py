"""Properties of the TXT records `mailappliance dns` prints: any text survives the zone-file form.

dnspython's parser stands in for the DNS server or provider that reads the line: the strings it
loads are at most 255 octets each (RFC 1035 3.3) and join back to the exact text.
"""
from __future__ import annotations

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.SRV import SRV
from hypothesis import example, given, strategies as st

from appliance import dnscheck, dnsrecords
from appliance.filters.syncdns import SyncDNS


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


# ---- `--check` reads what the DNS answers: anything a zone may hold ------------------------------------

class ZoneResolver(SyncDNS):
    """A SyncDNS answering from a dict (name, type) -> rdata list: the zone a hypothesis example made up.

    The judges' parsing is the subject here; the real resolver path is tests/integration/test_dns_command.py.
    """

    def __init__(self, answers: dict[tuple[str, str], list]) -> None:
        super().__init__(nameservers=[("127.0.0.1", 9)], timeout=1)
        self.answers = answers

    def query(self, name: str, rdtype: str, timeout: float | None = None) -> list:
        return list(self.answers.get((name.rstrip(".").lower(), rdtype), []))


TXT_NAMES = ("example.test", "mail._domainkey.example.test", "_dmarc.example.test", "_mta-sts.example.test",
             "_smtp._tls.example.test")
character_string = st.binary(max_size=255) | st.sampled_from(
    [b"v=spf1 ", b"mx -all", b"include:x.test", b"v=DMARC1; p=", b"v=STSv1; id=", b"v=TLSRPTv1; rua=", b"p="])
txt_records = st.lists(st.lists(character_string, min_size=1, max_size=3), max_size=3)


@given(st.fixed_dictionaries({name: txt_records for name in TXT_NAMES}),
       st.lists(st.tuples(st.integers(0, 65535), st.sampled_from(["mail.example.test.", ".", "x\\007.test."])),
                max_size=2))
def test_check_judges_any_answer_with_one_printable_line_per_record(texts, services):
    answers: dict[tuple[str, str], list] = {
        (name, "TXT"): [TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings) for strings in records]
        for name, records in texts.items()}
    srv = [SRV(dns.rdataclass.IN, dns.rdatatype.SRV, 0, 0, port, dns.name.from_text(target))
           for port, target in services]
    for label, *_ in dnsrecords.SRV_SERVICES:
        answers[(f"{label}.example.test", "SRV")] = srv
    setup = dnsrecords.Setup("example.test", "mail.example.test", dnsrecords.Addresses(("192.0.2.10",)),
                             {"submission": "tcp:587"}, (("mail", "v=DKIM1; k=rsa; p=AAAA"),))
    made = dnsrecords.records(setup)
    findings = dnscheck.check(setup, made, ZoneResolver(answers))
    assert len(findings) == len([r for r in made if r.kind != "advice"])
    for finding in findings:
        assert finding.status in ("ok", "missing", "wrong", "unsure")
        line = finding.line()
        assert line.isprintable() and line.isascii() and len(line) < 1000
