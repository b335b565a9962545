"""`mailappliance dns DOMAIN --check` against a real DNS server, as an operator uses it.

The operator runs `dkim keygen`, then `dns DOMAIN`, pastes what it printed into the zone (here:
a twisted.names server loaded from the printed lines, the PTR the hosting provider was asked for
included) and runs `--check`: every line says ok and the exit code is 0. Then the classic
mistakes: an SPF record that does not allow our address, a forgotten DMARC record, a DKIM key
record left over from before a `dkim keygen --force`: those lines, and only those, say so.
"""
from __future__ import annotations

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from appliance import dkimkeys
from tests.integration.dnsserver import DNSServer, a, cname, mx, ptr, reverse_name, srv, txt
from tests.integration.harness import DOMAIN, HOSTNAME, Appliance, render_config

ADDRESS = "192.0.2.10"
REVERSE_ZONE = "2.0.192.in-addr.arpa"


def pyzone(printed: str) -> list[str]:
    """The records `dns DOMAIN` printed (comments are not records), as twisted.names pyzone entries."""
    parsed = dns.zone.from_text(printed, origin=f"{DOMAIN}.", relativize=False, check_origin=False)
    entries = []
    for name, rdataset in parsed.iterate_rdatasets():
        owner = name.to_text(omit_final_dot=True)
        for rdata in rdataset:
            entries.append(_entry(owner, dns.rdatatype.to_text(rdataset.rdtype), rdata))
    return entries


def _entry(owner: str, kind: str, rdata) -> str:
    if kind == "MX":
        return mx(owner, rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if kind == "A":
        return a(owner, rdata.address)
    if kind == "TXT":
        return txt(owner, *(part.decode("ascii") for part in rdata.strings))
    if kind == "SRV":
        target = "" if rdata.target == dns.name.root else rdata.target.to_text(omit_final_dot=True)
        return srv(owner, rdata.priority, rdata.weight, rdata.port, target)
    if kind == "CNAME":
        return cname(owner, rdata.target.to_text(omit_final_dot=True))
    raise AssertionError(f"dns printed a {kind} record the test does not know")


@pytest.fixture
def operator(tmp_path):
    """An appliance's configuration (not running: the command does not need the daemon) with a DKIM key."""
    appliance = Appliance(str(tmp_path / "appliance"), services=("smtp", "submission", "imaps"),
                          overrides={"checks": {"dns_timeout": "2"}})
    appliance.setup()
    appliance.cli("dkim", "keygen", DOMAIN)
    return appliance


def serve(tmp_path, operator: Appliance, records: list[str], reverse: list[str]) -> DNSServer:
    """Start a DNS server holding the zones, and point the appliance's [delivery] nameservers at it."""
    server = DNSServer(str(tmp_path / "dns"), {DOMAIN: records, REVERSE_ZONE: reverse})
    server.start()
    operator.sections["delivery"] = {"nameservers": server.nameserver}
    with open(operator.config_path, "w", encoding="utf-8") as handle:
        handle.write(render_config(operator.sections))
    return server


def published(operator: Appliance) -> list[str]:
    printed = operator.cli("dns", DOMAIN, "--address", ADDRESS).stdout
    records = pyzone(printed)
    assert len(records) == 15, printed       # MX, A, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, 6 SRV, autoconfig,
                                             # autodiscover ([listen] web is off: its SRV is a comment)
    return records


def check(operator: Appliance) -> tuple[int, dict[str, str]]:
    """--check's exit code and its lines, keyed by the record they are about."""
    result = operator.cli("dns", DOMAIN, "--check", "--address", ADDRESS, check=False)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    findings = dict(line.split(": ", 1) for line in lines[:-1])
    assert len(findings) == len(lines) - 1 == 16, result.stdout     # the 15 records and the PTR
    return result.returncode, findings


def test_a_zone_holding_what_dns_printed_checks_all_ok(tmp_path, operator):
    records = published(operator)
    server = serve(tmp_path, operator, records + [mx(DOMAIN, 20, "backup.mx.test")],
                   [ptr(reverse_name(ADDRESS), HOSTNAME)])
    try:
        code, findings = check(operator)
    finally:
        server.stop()
    shown = "\n".join(f"{what}: {finding}" for what, finding in findings.items())
    assert {finding.split(":")[0] for finding in findings.values()} == {"ok"}, shown
    assert code == 0
    assert findings[f"{DOMAIN}. TXT (spf)"] == "ok"
    assert findings[f"_dmarc.{DOMAIN}. TXT (dmarc)"] == "ok: p=none"
    assert findings[f"10.2.0.192.in-addr.arpa. PTR (ptr)"] == "ok"


def test_a_wrong_spf_a_missing_dmarc_and_a_stale_dkim_key_are_each_named(tmp_path, operator):
    stale = dkimkeys.record_value(dkimkeys.new_private_pem(dkimkeys.RSA))
    records = []
    for entry in published(operator):
        if "v=spf1" in entry:
            entry = txt(DOMAIN, "v=spf1 ip4:198.51.100.7 -all")      # the old server's address
        elif "_domainkey" in entry:
            entry = txt(f"mail._domainkey.{DOMAIN}", *dkimkeys.character_strings(stale))
        elif "_dmarc" in entry:
            continue
        records.append(entry)
    server = serve(tmp_path, operator, records, [ptr(reverse_name(ADDRESS), "host-10.provider.test")])
    try:
        code, findings = check(operator)
    finally:
        server.stop()
    assert code == 1
    assert findings[f"{DOMAIN}. TXT (spf)"].startswith('wrong: found "v=spf1 ip4:198.51.100.7 -all", which gives '
                                                       f"fail for our address {ADDRESS}")
    assert findings[f"_dmarc.{DOMAIN}. TXT (dmarc)"].startswith("missing")
    assert findings[f"mail._domainkey.{DOMAIN}. TXT (dkim)"].startswith("wrong: found another key")
    assert findings[f"10.2.0.192.in-addr.arpa. PTR (ptr)"] == ("wrong: found host-10.provider.test., "
                                                              f"expected {HOSTNAME}.")
    bad = {what for what, finding in findings.items() if not finding.startswith("ok")}
    assert len(bad) == 4, findings
