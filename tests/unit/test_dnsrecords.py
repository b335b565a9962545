"""`mailappliance dns DOMAIN`: the records an operator pastes into a zone, and where their values come from.

The printed text is read back with dnspython's zone-file parser, as a DNS server or a provider's
import would read it: what counts is what the zone ends up holding.
"""
from __future__ import annotations

import ipaddress

import dns.rdatatype
import dns.zone
import pytest

from appliance import dkimkeys, dnsrecords
from tests.unit.test_cli import run

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test, example.org
state_dir = var
[listen]
smtp = tcp:25
submission = tcp:587
imaps = tcp:9993
"""


def write_conf(tmp_path, extra: str = "", conf: str = CONF) -> str:
    path = tmp_path / "mailappliance.conf"
    path.write_text(conf + extra)
    return str(path)



def zone(text: str) -> dict[tuple[str, str], list[str]]:
    """(name, type) -> the values the zone holds, parsed by dnspython; TXT values with their strings joined."""
    parsed = dns.zone.from_text(text, origin="example.test.", relativize=False, check_origin=False)
    found: dict[tuple[str, str], list[str]] = {}
    for name, rdataset in parsed.iterate_rdatasets():
        kind = dns.rdatatype.to_text(rdataset.rdtype)
        for rdata in rdataset:
            value = b"".join(rdata.strings).decode() if kind == "TXT" else rdata.to_text()
            found.setdefault((name.to_text(), kind), []).append(value)
    return found


def records_of(capsys, conf: str, *extra: str) -> tuple[str, dict[tuple[str, str], list[str]]]:
    code, out, err = run(capsys, "--config", conf, "dns", "example.test", *extra)
    assert (code, err) == (0, "")
    return out, zone(out)


def test_the_printed_records_load_as_a_zone_with_the_records_a_mail_domain_needs(tmp_path, capsys):
    out, held = records_of(capsys, write_conf(tmp_path), "--address", "192.0.2.10")
    assert held[("example.test.", "MX")] == ["10 mail.example.test."]
    assert held[("mail.example.test.", "A")] == ["192.0.2.10"]
    assert held[("example.test.", "TXT")] == ["v=spf1 mx -all"]
    assert held[("_dmarc.example.test.", "TXT")] == ["v=DMARC1; p=none; rua=mailto:postmaster@example.test"]
    assert held[("_smtp._tls.example.test.", "TXT")] == ["v=TLSRPTv1; rua=mailto:postmaster@example.test"]
    assert held[("autoconfig.example.test.", "CNAME")] == ["mail.example.test."]
    [sts] = held[("_mta-sts.example.test.", "TXT")]
    assert sts.startswith("v=STSv1; id=")
    # every record is one line: no parentheses spanning lines
    assert all(line.startswith(";") or line.count('"') % 2 == 0 for line in out.splitlines())


def test_srv_records_carry_the_listen_ports_and_say_not_offered_for_services_that_are_off(tmp_path, capsys):
    out, held = records_of(capsys, write_conf(tmp_path), "--address", "192.0.2.10")
    assert "on port 9993 as [listen] imaps says (if a firewall forwards port 993 to it, write 993)" in out
    assert held[("_submission._tcp.example.test.", "SRV")] == ["10 1 587 mail.example.test."]
    assert held[("_imaps._tcp.example.test.", "SRV")] == ["0 1 9993 mail.example.test."]
    for off in ("_submissions", "_imap", "_pop3", "_pop3s"):
        assert held[(f"{off}._tcp.example.test.", "SRV")] == ["0 0 0 ."]


def test_client_setup_records_point_at_the_web_listener_and_its_srv_is_a_comment_while_it_is_off(tmp_path, capsys):
    out, held = records_of(capsys, write_conf(tmp_path), "--address", "192.0.2.10")
    assert held[("autoconfig.example.test.", "CNAME")] == ["mail.example.test."]
    assert held[("autodiscover.example.test.", "CNAME")] == ["mail.example.test."]
    assert ("_autodiscover._tcp.example.test.", "SRV") not in held
    assert "; _autodiscover._tcp.example.test. 3600 IN SRV 0 1 443 mail.example.test." in out.splitlines()
    assert "needs [listen] web on 443" in out

    conf = write_conf(tmp_path, conf=CONF.replace("[listen]\n", "[listen]\nweb = tcp:interface=0.0.0.0:443\n"))
    out, held = records_of(capsys, conf, "--address", "192.0.2.10")
    assert held[("_autodiscover._tcp.example.test.", "SRV")] == ["0 1 443 mail.example.test."]
    assert held[("autodiscover.example.test.", "CNAME")] == ["mail.example.test."]
    assert "https://mail.example.test/autodiscover/autodiscover.xml" in out


def test_the_ptr_to_ask_for_is_a_comment_naming_the_reverse_of_the_address(tmp_path, capsys):
    out, held = records_of(capsys, write_conf(tmp_path), "--address", "192.0.2.10", "--address", "2001:db8::10")
    assert not [key for key in held if key[1] == "PTR"]
    assert "; 10.2.0.192.in-addr.arpa. 3600 IN PTR mail.example.test." in out.splitlines()
    assert held[("mail.example.test.", "AAAA")] == ["2001:db8::10"]
    assert f"; {ipaddress.ip_address('2001:db8::10').reverse_pointer}. 3600 IN PTR mail.example.test." in out


def test_dkim_records_appear_once_a_key_exists_and_hold_its_public_half(tmp_path, capsys):
    conf = write_conf(tmp_path)
    out, held = records_of(capsys, conf, "--address", "192.0.2.10")
    assert "run `mailappliance dkim keygen example.test`" in out
    assert not [key for key in held if "_domainkey" in key[0]]

    assert run(capsys, "--config", conf, "dkim", "keygen", "example.test")[0] == 0
    out, held = records_of(capsys, conf, "--address", "192.0.2.10")
    [key] = dkimkeys.stored_keys(str(tmp_path / "var" / "dkim"), "example.test")
    with open(key.path, "rb") as handle:
        expected = dkimkeys.record_value(handle.read())
    assert held[("mail._domainkey.example.test.", "TXT")] == [expected]
    line = next(line for line in out.splitlines() if line.startswith("mail._domainkey"))
    strings = line.split('"')[1::2]
    assert len(strings) > 1 and all(len(s) <= 255 for s in strings)


def test_an_unknown_address_is_a_commented_placeholder_saying_how_to_give_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dnsrecords, "route_source", lambda version: None)
    out, held = records_of(capsys, write_conf(tmp_path))
    assert not [key for key in held if key[1] in ("A", "AAAA")]
    assert "; mail.example.test. 3600 IN A ADDRESS" in out
    assert "--address" in out


def test_the_address_is_learned_from_the_smtp_interface_or_the_default_route_when_public(monkeypatch):
    monkeypatch.setattr(dnsrecords, "route_source",
                        lambda version: ipaddress.ip_address("93.184.215.14" if version == 4 else "fd00::1"))
    assert dnsrecords.find_addresses([], "tcp:25:interface=93.184.215.99").ipv4 == ("93.184.215.99",)
    routed = dnsrecords.find_addresses([], "tcp:25")
    assert (routed.ipv4, routed.ipv6, routed.source) == (("93.184.215.14",), (), "the default route")
    local = dnsrecords.find_addresses([], "tcp:2525:interface=127.0.0.1")
    assert local.all == () and "127.0.0.1" in local.source
    monkeypatch.setattr(dnsrecords, "route_source", lambda version: ipaddress.ip_address("10.1.2.3"))
    behind_nat = dnsrecords.find_addresses([], "tcp:25")
    assert behind_nat.all == () and "10.1.2.3 is not public" in behind_nat.source
    assert dnsrecords.find_addresses(["10.1.2.3"], "tcp:25").ipv4 == ("10.1.2.3",)   # the operator knows


def test_a_hostname_outside_the_domain_is_said_to_belong_in_its_own_zone(tmp_path, capsys):
    conf = write_conf(tmp_path, conf=CONF.replace("hostname = mail.example.test", "hostname = mx.provider.test"))
    out, held = records_of(capsys, conf, "--address", "192.0.2.10")
    assert held[("example.test.", "MX")] == ["10 mx.provider.test."]
    assert "; it belongs in the zone that holds mx.provider.test" in out
    assert "belongs in the zone" not in records_of(capsys, write_conf(tmp_path), "--address", "192.0.2.10")[0]


def test_a_smarthost_is_named_in_spf_since_mail_leaves_through_it(tmp_path, capsys):
    conf = write_conf(tmp_path, "[relay]\nsmarthost = relay.provider.example:587\n")
    out, held = records_of(capsys, conf, "--address", "192.0.2.10")
    assert held[("example.test.", "TXT")] == ["v=spf1 mx a:relay.provider.example -all"]


def test_the_mta_sts_id_changes_with_the_policy_and_is_letters_and_digits():
    def setup(hostname: str) -> dnsrecords.Setup:
        return dnsrecords.Setup("example.test", hostname, dnsrecords.Addresses(), {})
    first, second = (dnsrecords.sts_id(dnsrecords.sts_policy(setup(name)))
                     for name in ("mail.example.test", "mx.example.test"))
    assert first != second and first.isalnum() and 1 <= len(first) <= 32
    assert "mx: mx.example.test\r\n" in dnsrecords.sts_policy(setup("mx.example.test"))


def test_refused_with_one_line_for_a_domain_not_ours_or_an_address_that_is_none(tmp_path, capsys):
    conf = write_conf(tmp_path)
    code, out, err = run(capsys, "--config", conf, "dns", "example.com")
    assert (code, out) == (1, "") and "not one of [appliance] domains" in err and len(err.splitlines()) == 1
    code, out, err = run(capsys, "--config", conf, "dns", "example.test", "--address", "mail.example.test")
    assert (code, out) == (1, "") and err.startswith("mailappliance: --address:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp:25", (25, "")), ("tcp:2525:interface=127.0.0.1", (2525, "127.0.0.1")),
    ("tcp6:587:interface=\\:\\:", (587, "::")), ("", None), ("unix:/run/x.sock", None)])
def test_listen_port_reads_endpoint_strings(endpoint, expected):
    assert dnsrecords.listen_port(endpoint) == expected


def test_check_with_a_resolver_that_does_not_answer_says_unsure_quickly_and_exits_1(tmp_path, capsys):
    import socket
    import time
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:       # bound, never read: no answer
        silent.bind(("127.0.0.1", 0))
        conf = write_conf(tmp_path, f"[delivery]\nnameservers = 127.0.0.1:{silent.getsockname()[1]}\n"
                                    "[checks]\ndns_timeout = 1\n")
        started = time.monotonic()
        code, out, err = run(capsys, "--config", conf, "dns", "example.test", "--check", "--address", "192.0.2.10")
    lines = out.splitlines()
    assert code == 1 and err == ""
    assert all(": unsure: " in line for line in lines[:-1]), out
    assert lines[-1] == f"0 of {len(lines) - 1} records ok, {len(lines) - 1} to fix"
    assert time.monotonic() - started < 10          # three questions, then the rest are not asked
