"""`mailappliance dns DOMAIN --check`: resolve what dnsrecords.py says to publish and judge each record.

One Finding per record, printed as one line: `NAME TYPE (what): ok`, `missing`, `wrong: found X,
expected Y`, or `unsure` when the DNS did not answer. Judged by meaning, not by string, where
the meaning is what matters to a receiver:
- MX: our hostname is among the domain's MX hosts (others may be there too: a backup MX);
- SPF: pyspf evaluates the published policy for each of our addresses (RFC 7208 check_host):
  `v=spf1 ip4:192.0.2.10 -all` is as good as `v=spf1 mx -all`, `v=spf1 -all` is wrong;
- DKIM: the published public key is the public half of our private key (a stale key after a
  `dkim keygen --force` is the classic mistake);
- DMARC, MTA-STS, TLS-RPT: exactly one record, and it parses;
- PTR: forward-confirmed reverse DNS, the address's PTR names our hostname and the hostname
  resolves back to the address (what receivers' FCrDNS checks ask).

This is a command-line tool, not the daemon: blocking DNS (syncdns.SyncDNS, through
`[delivery] nameservers` when set) is what it should use; each query is bounded by
`[checks] dns_timeout`.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from appliance.dnsrecords import Record, Setup
from appliance.filters import dmarc
from appliance.filters import spf as spfcheck
from appliance.filters.syncdns import DNSTemporaryError, SyncDNS

OK, MISSING, WRONG, UNSURE = "ok", "missing", "wrong", "unsure"
SPF_QUERY_TIME = 20.0            # seconds for one whole SPF evaluation (RFC 7208 4.6.4 bounds lookups)
QUOTE_MAX = 120              # characters of a found record shown in a line
GIVE_UP_AFTER = 3            # unanswered records in a row before the rest are not asked: a dead
                             # resolver must not keep the operator waiting dns_timeout x 20 queries
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


@dataclass(frozen=True)
class Finding:
    record: Record
    status: str                  # ok | missing | wrong | unsure
    detail: str = ""

    def line(self) -> str:
        """One line of printable ASCII: what DNS answered may hold anything (newlines, escape sequences)."""
        what = f"{self.record.name} {self.record.type} ({self.record.kind})"
        return _printable(f"{what}: {self.status}" + (f": {self.detail}" if self.detail else ""))


def _printable(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", lambda m: ascii(m.group())[1:-1], text)


def _quoted(text: str) -> str:
    """A record found in the DNS, quoted and cut for a line of the report."""
    return '"' + (text if len(text) <= QUOTE_MAX else text[:QUOTE_MAX] + "...") + '"'


def check(setup: Setup, made: list[Record], dns: SyncDNS) -> list[Finding]:
    """One finding per record, in order. Advice (a record to publish only once something is turned on,
    printed as a comment) is not checked."""
    addresses = _our_addresses(setup, dns)
    findings: list[Finding] = []
    silent = 0               # questions in a row the DNS did not answer
    for record in made:
        judge = _JUDGES.get(record.kind)
        if judge is None:
            continue
        if silent >= GIVE_UP_AFTER:
            findings.append(Finding(record, UNSURE, f"not asked: the DNS did not answer the last {silent} questions"))
            continue
        try:
            findings.append(judge(record, setup, dns, addresses))
            silent = 0
        except DNSTemporaryError as exc:
            findings.append(Finding(record, UNSURE, f"the DNS did not answer ({exc})"))
            silent += 1
    return findings


def _our_addresses(setup: Setup, dns: SyncDNS) -> tuple[str, ...]:
    """The addresses SPF and PTR are judged for: the known ones, else what the hostname resolves to."""
    if setup.addresses.all:
        return setup.addresses.all
    try:
        return tuple(_values(dns, setup.hostname, "A") + _values(dns, setup.hostname, "AAAA"))
    except DNSTemporaryError:
        return ()


# ---------------------------------------------------------------- DNS helpers

def _values(dns: SyncDNS, name: str, rdtype: str) -> list[str]:
    """Each record's value as text; names lower case without the final dot."""
    return [_text(record) for record in dns.query(name.rstrip("."), rdtype)]


def _text(record) -> str:
    if hasattr(record, "address"):
        return str(record.address)
    for attribute in ("exchange", "target"):
        if hasattr(record, attribute):
            return getattr(record, attribute).to_text().rstrip(".").lower()     # the root is ""
    return record.to_text()


def _txt(dns: SyncDNS, name: str, prefix: str) -> list[str]:
    """The TXT records at `name` whose text starts with `prefix` (a version tag), strings joined."""
    texts = [raw.decode("utf-8", "replace") for raw in dns.txt(name.rstrip("."))]
    return [text for text in texts if text.replace(" ", "").lower().startswith(prefix.lower())]


def _bare(name: str) -> str:
    return name.rstrip(".").lower()


# ---------------------------------------------------------------- the judges

def _mx(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = dns.query(_bare(record.name), "MX")
    hosts = [(r.preference, _text(r)) for r in found]
    if not hosts:
        return Finding(record, MISSING, f"no MX record; expected {record.value}")
    if any(host == setup.hostname for _, host in hosts):
        return Finding(record, OK)
    shown = ", ".join(f"{pref} {host}." for pref, host in sorted(hosts))
    return Finding(record, WRONG, f"found {shown}, expected {record.value}")


def _address(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = _values(dns, setup.hostname, record.type)
    if not record.publish:          # our address is unknown: any address is all we can ask for
        if found:
            return Finding(record, OK, f"{', '.join(found)} (not compared: our public address is "
                                       "unknown; give it with --address)")
        return Finding(record, MISSING, f"{setup.hostname} has no {record.type} record")
    if record.value in found:
        return Finding(record, OK)
    if not found:
        return Finding(record, MISSING, f"expected {record.value}")
    return Finding(record, WRONG, f"found {', '.join(found)}, expected {record.value}")


def _spf(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = _txt(dns, record.name, "v=spf1")
    found = [text for text in found if text.lower().split(" ", 1)[0] == "v=spf1"]
    if not found:
        return Finding(record, MISSING, f'expected "{record.value}"')
    if len(found) > 1:
        return Finding(record, WRONG, f"found {len(found)} SPF records (receivers then ignore all: "
                                      f'RFC 7208 4.5), expected one: "{record.value}"')
    if not addresses:
        return Finding(record, OK, "present; not evaluated: no address of ours is known")
    for ip in addresses:
        result = spfcheck.evaluate(dns, ip, f"postmaster@{setup.domain}", setup.hostname, setup.hostname,
                                   SPF_QUERY_TIME)
        if result.result == "temperror":
            raise DNSTemporaryError(f"SPF evaluation for {ip}: {result.explanation}")
        if result.result != "pass":
            return Finding(record, WRONG, f'found {_quoted(found[0])}, which gives {result.result} for our address '
                                          f'{ip}, expected a policy that passes it, e.g. "{record.value}"')
    return Finding(record, OK)


def _dkim(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    if not record.publish:
        return Finding(record, MISSING, f"no DKIM key yet: run `mailappliance dkim keygen {setup.domain}`")
    found = _txt(dns, record.name, "")
    if not found:
        return Finding(record, MISSING, "expected our public key (`mailappliance dkim show "
                                        f"{setup.domain}` prints the record)")
    if len(found) > 1:
        return Finding(record, WRONG, f"found {len(found)} TXT records (RFC 6376 3.6.2.2: the result is "
                                      "undefined), expected one, with our key")
    ours, published = _public_key(record.value), _public_key(found[0])
    if published == ours:
        return Finding(record, OK)
    if not published:
        return Finding(record, WRONG, f'found {_quoted(found[0])}, no key (p= empty: revoked), expected our key')
    return Finding(record, WRONG, f"found another key (p=...{published[-16:]}), expected ours "
                                  f"(p=...{ours[-16:]}): a stale record? publish `mailappliance dkim show "
                                  f"{setup.domain}`")


def _public_key(text: str) -> str:
    tags = dmarc.parse_tags(text) or {}
    return re.sub(r"\s+", "", tags.get("p", ""))


def _dmarc(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = [text for text in _txt(dns, record.name, "v=DMARC1") if dmarc.is_dmarc(text)]
    if not found:
        return Finding(record, MISSING, f'expected "{record.value}"')
    if len(found) > 1:
        return Finding(record, WRONG, f"found {len(found)} DMARC records (receivers then apply none: "
                                      "RFC 7489 6.6.3), expected one")
    parsed = dmarc.parse_record(found[0])
    if parsed is None:
        return Finding(record, WRONG, f'found {_quoted(found[0])}, which does not parse; expected e.g. "{record.value}"')
    return Finding(record, OK, f"p={parsed.p}")


def _mta_sts(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = _txt(dns, record.name, "v=STSv1")
    if not found:
        return Finding(record, MISSING, f'expected "{record.value}"')
    if len(found) > 1:
        return Finding(record, WRONG, f"found {len(found)} records (senders then use none: RFC 8461 3.1), "
                                      "expected one")
    tags = dmarc.parse_tags(found[0]) or {}
    version = re.sub(r"[ \t]", "", found[0].split(";", 1)[0])
    if version != "v=STSv1" or not _STS_ID.match(tags.get("id", "")):
        return Finding(record, WRONG, f'found {_quoted(found[0])}, expected "v=STSv1; id=" and 1 to 32 letters '
                                      f'or digits, e.g. "{record.value}"')
    return Finding(record, OK, f"(the policy file at https://mta-sts.{setup.domain}/.well-known/mta-sts.txt "
                               "is not fetched by this check)")


def _tls_rpt(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = _txt(dns, record.name, "v=TLSRPTv1")
    if not found:
        return Finding(record, MISSING, f'expected "{record.value}"')
    if len(found) > 1:
        return Finding(record, WRONG, f"found {len(found)} records (RFC 8460 3: then none is used), expected one")
    tags = dmarc.parse_tags(found[0]) or {}
    if not tags.get("rua"):
        return Finding(record, WRONG, f'found {_quoted(found[0])} without rua=, expected "{record.value}"')
    return Finding(record, OK)


def _srv(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    found = dns.query(_bare(record.name), "SRV")
    shown = sorted(f"{r.priority} {r.weight} {r.port} {r.target.to_text()}" for r in found)
    expected_port = int(record.value.split()[2])
    target = "" if expected_port == 0 else setup.hostname
    if any(r.port == expected_port and _text(r) == target for r in found):
        return Finding(record, OK)
    if not found:
        return Finding(record, MISSING, f"expected {record.value}")
    return Finding(record, WRONG, f"found {', '.join(shown)}, expected {record.value}")


def _autoconfig(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    name = _bare(record.name)
    targets = _values(dns, name, "CNAME")
    if setup.hostname in targets:
        return Finding(record, OK)
    if targets:
        return Finding(record, WRONG, f"found CNAME {', '.join(targets)}, expected {record.value}")
    own = set(_values(dns, name, "A") + _values(dns, name, "AAAA"))
    if not own:
        return Finding(record, MISSING, f"expected CNAME {record.value}")
    if own & set(_values(dns, setup.hostname, "A") + _values(dns, setup.hostname, "AAAA")):
        return Finding(record, OK, f"(an address record, the same as {setup.hostname}'s)")
    return Finding(record, WRONG, f"found {', '.join(sorted(own))}, expected CNAME {record.value}")


def _ptr(record: Record, setup: Setup, dns: SyncDNS, addresses: tuple[str, ...]) -> Finding:
    """Forward-confirmed reverse DNS of the address this record is about (or of all we know)."""
    ips = [record.address] if record.address else list(addresses)
    if not ips:
        return Finding(record, UNSURE, "not checked: no address of ours is known (give it with --address)")
    for ip in ips:
        names = _values(dns, ipaddress.ip_address(ip).reverse_pointer, "PTR")
        if not names:
            return Finding(record, MISSING, f"{ip} has no PTR record: ask the hosting provider for "
                                            f"{setup.hostname}")
        if setup.hostname not in names:
            return Finding(record, WRONG, f"found {', '.join(n + '.' for n in names)}, expected {record.value}")
        family = "AAAA" if ":" in ip else "A"
        if ip not in _values(dns, setup.hostname, family):
            return Finding(record, WRONG, f"{ip} names {setup.hostname}, but {setup.hostname} does not "
                                          f"resolve back to {ip} (forward-confirmed reverse DNS fails)")
    return Finding(record, OK)


_JUDGES: dict[str, Callable[[Record, Setup, SyncDNS, tuple[str, ...]], Finding]] = {
    "mx": _mx, "address": _address, "spf": _spf, "dkim": _dkim, "dmarc": _dmarc, "mta-sts": _mta_sts,
    "tls-rpt": _tls_rpt, "srv": _srv, "autoconfig": _autoconfig,
    "autodiscover": _autoconfig, "ptr": _ptr,
}
