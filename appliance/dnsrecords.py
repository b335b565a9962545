"""The DNS records a domain served by this appliance publishes, as data, and their zone-file form.

`mailappliance dns DOMAIN` prints them; `dns DOMAIN --check` (dnscheck.py) resolves the same
list and judges each. One list for both, so what is printed and what is checked never differ.

The choices, and why (docs/dns.md says the same to the operator):
- SPF `v=spf1 mx -all`: every message of our users leaves through this host (submission needs
  AUTH, and outbound mail goes out from here), so "only our MX hosts" is the whole truth and
  `-all` lets a receiver refuse a forgery outright. `~all` would only help a domain with senders
  it does not know of; forwarding breaks both alike, and DKIM (which survives forwarding) is
  what keeps DMARC passing then. With a smarthost, mail leaves through it: its name is added.
- DMARC `p=none` first: the reports (rua) show, within days, whether something else sends as
  the domain (a web shop, a newsletter service, a printer) before any of its mail is junked;
  then p=quarantine, then p=reject. p=none asks receivers for reports only (RFC 7489 6.3).
- MTA-STS `mode: testing`: a sender that fails TLS to us still delivers, and says so in a TLS-RPT
  report; `enforce` only once the reports are clean and the certificate is from a public CA.
  The id is a hash of the policy text, so it changes exactly when the policy does (RFC 8461 3.1).
- RFC 6186 SRV records for each mail-access service, implicit TLS preferred (lower priority
  number: RFC 8314, which also names _submissions); a service that is off is `0 0 0 .`
  ("decidedly not available", RFC 2782).
- autoconfig/autodiscover CNAMEs to the hostname, where `[listen] web` serves the client settings
  (docs/autoconfig.md): printed even while the web listener is off (harmless, and right once it
  is on); the `_autodiscover._tcp` SRV carries the web listener's port, so it is a comment until then.
- The PTR is the hosting provider's to publish, so it is printed as a comment: what to ask for.
"""
from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass

from twisted.internet import endpoints

from appliance import dkimkeys

TTL = 3600
MAX_STRING = 255             # RFC 1035 3.3: one TXT character-string holds at most 255 octets
MX_PREFERENCE = 10
STS_MAX_AGE = 86400          # a day while testing; a week or more (604800) once mode is enforce
NO_ADDRESS = "ADDRESS"       # the placeholder printed when the public address is unknown

# RFC 6186 / RFC 8314 services: (SRV owner label, [listen] key, SRV priority, what it is)
SRV_SERVICES = (
    ("_submissions._tcp", "smtps", 0, "mail submission, implicit TLS (RFC 8314)"),
    ("_submission._tcp", "submission", 10, "mail submission with STARTTLS"),
    ("_imaps._tcp", "imaps", 0, "IMAP, implicit TLS"),
    ("_imap._tcp", "imap", 10, "IMAP with STARTTLS"),
    ("_pop3s._tcp", "pop3s", 20, "POP3, implicit TLS (IMAP preferred: mail stays on the server)"),
    ("_pop3._tcp", "pop3", 30, "POP3 with STARTTLS"),
)

STANDARD_PORTS = {"smtps": 465, "submission": 587, "imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}

# Where a UDP socket is "connected" to learn the source address the kernel would route from.
# connect() on a datagram socket sends nothing; these documentation addresses (RFC 5737, 3849)
# are never reached, they only make the kernel pick the default route.
_ROUTE_PROBES = {4: ("192.0.2.1", socket.AF_INET), 6: ("2001:db8::1", socket.AF_INET6)}


@dataclass(frozen=True)
class Record:
    """One DNS record to publish (or, when not `publish`, one to ask for, printed as a comment)."""

    name: str                    # absolute, with the final dot
    type: str                    # MX, A, AAAA, TXT, SRV, CNAME, PTR
    value: str                   # RDATA in zone-file form; for TXT the text itself, unquoted
    why: str                     # the comment printed above it
    kind: str                    # what `--check` judges it as: mx, address, spf, dkim, dmarc, ...
    publish: bool = True
    notes: tuple[str, ...] = ()  # comment lines printed after it (the MTA-STS policy file)
    address: str = ""            # the address a PTR is about; "" when it is unknown


@dataclass(frozen=True)
class Addresses:
    """The server's public addresses, and how they were learned (or why they are unknown)."""

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    source: str = ""             # "--address", "[listen] smtp", "the default route", or why none

    @property
    def all(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6


@dataclass(frozen=True)
class Setup:
    """What the records are made from: the parts of the configuration they depend on."""

    domain: str
    hostname: str
    addresses: Addresses
    listen: dict[str, str]                       # [listen] service -> endpoint string ("" = off)
    dkim: tuple[tuple[str, str], ...] = ()       # (DNS selector, key record value) of our keys
    smarthost: str = ""

    @property
    def reports(self) -> str:
        """Where DMARC and TLS-RPT reports go: postmaster, which every mail domain has (RFC 5321 4.5.1)."""
        return f"postmaster@{self.domain}"


# ---------------------------------------------------------------- the server's address

def listen_port(endpoint: str) -> tuple[int, str] | None:
    """(port, interface) of a TCP server endpoint string; None for a service that is off or not TCP."""
    if not endpoint:
        return None
    try:
        kind, args, kwargs = endpoints._parseServer(endpoint, None)
        if kind == "UNIX":
            return None
        return int(args[0]), str(kwargs.get("interface", "") or "")
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def find_addresses(given: list[str], smtp_endpoint: str) -> Addresses:
    """The addresses to publish for the hostname, learned in this order:

    1. `--address` (the operator knows best: NAT, a floating IP, a load balancer);
    2. the interface `[listen] smtp` is bound to, when it is one address and a public one;
    3. the source address of the default route, per family, when it is public.
    A private or loopback address is never guessed: behind NAT, the world sees another one.
    ValueError for a `--address` that is no IP address.
    """
    if given:
        parsed = [ipaddress.ip_address(text.strip()) for text in given]
        return _split(parsed, "--address")
    bound = listen_port(smtp_endpoint)
    interface = bound[1] if bound else ""
    if interface and not ipaddress.ip_address(interface.split("%")[0]).is_unspecified:
        address = ipaddress.ip_address(interface.split("%")[0])
        if address.is_global:
            return _split([address], "[listen] smtp")
        return Addresses(source=f"[listen] smtp listens on {interface} only, not a public address")
    found = [address for address in (route_source(4), route_source(6)) if address is not None]
    public = [address for address in found if address.is_global]
    if public:
        return _split(public, "the default route")
    if found:
        return Addresses(source=f"this host's address {found[0]} is not public (behind NAT?)")
    return Addresses(source="this host has no default route")


def route_source(version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address the kernel would send from on the default route; None without one. Sends nothing."""
    probe, family = _ROUTE_PROBES[version]
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            return ipaddress.ip_address(sock.getsockname()[0].split("%")[0])
    except (OSError, ValueError):
        return None


def _split(addresses: list, source: str) -> Addresses:
    unique = list(dict.fromkeys(addresses))
    return Addresses(tuple(str(a) for a in unique if a.version == 4),
                     tuple(str(a) for a in unique if a.version == 6), source)


# ---------------------------------------------------------------- the records

def records(setup: Setup) -> list[Record]:
    """Every record for the domain, in the order printed (and checked)."""
    return [*_mx(setup), *_address(setup), _spf(setup), *_dkim(setup), _dmarc(setup), _mta_sts(setup),
            _tls_rpt(setup), *_srv(setup), *_autoconfig(setup), *_ptr(setup)]


def _mx(setup: Setup) -> list[Record]:
    return [Record(f"{setup.domain}.", "MX", f"{MX_PREFERENCE} {setup.hostname}.",
                   f"MX: mail for {setup.domain} is delivered to {setup.hostname}", "mx")]


def _address(setup: Setup) -> list[Record]:
    name, found = f"{setup.hostname}.", setup.addresses
    elsewhere = ("" if f".{setup.hostname}".endswith(f".{setup.domain}")
                 else f"; it belongs in the zone that holds {setup.hostname}")
    made = [Record(name, "A", ip, f"the address of {setup.hostname} (from {found.source}){elsewhere}", "address")
            for ip in found.ipv4]
    made += [Record(name, "AAAA", ip, f"the IPv6 address of {setup.hostname} (from {found.source}){elsewhere}",
                    "address") for ip in found.ipv6]
    if not found.ipv4 and not found.ipv6:
        made.append(Record(name, "A", NO_ADDRESS, f"the address of {setup.hostname}: unknown ({found.source}); "
                           "write the public IPv4 address, or run again with --address IP", "address",
                           publish=False))
    return made


def spf_policy(setup: Setup) -> str:
    """`v=spf1 mx -all`, with the smarthost when mail leaves through one (see the module docstring)."""
    through = f" a:{setup.smarthost}" if setup.smarthost else ""
    return f"v=spf1 mx{through} -all"


def _spf(setup: Setup) -> Record:
    why = "SPF: only the domain's MX hosts send its mail; -all: receivers may refuse the rest"
    if setup.smarthost:
        why += (f"; mail leaves through the smarthost {setup.smarthost}: if its provider documents an "
                "include: for SPF, use that instead of a:")
    return Record(f"{setup.domain}.", "TXT", spf_policy(setup), why, "spf")


def _dkim(setup: Setup) -> list[Record]:
    if not setup.dkim:
        return [Record(f"mail._domainkey.{setup.domain}.", "TXT", "v=DKIM1; k=rsa; p=KEY",
                       f"DKIM: no key yet: run `mailappliance dkim keygen {setup.domain}`, then this "
                       "command again", "dkim", publish=False)]
    return [Record(f"{selector}._domainkey.{setup.domain}.", "TXT", value,
                   f"DKIM: the public half of our signing key, selector {selector}", "dkim")
            for selector, value in setup.dkim]


def _dmarc(setup: Setup) -> Record:
    return Record(f"_dmarc.{setup.domain}.", "TXT", f"v=DMARC1; p=none; rua=mailto:{setup.reports}",
                  "DMARC: p=none while the daily reports to rua show who sends as the domain; "
                  "then p=quarantine, then p=reject", "dmarc")


def sts_policy(setup: Setup) -> str:
    """The MTA-STS policy file (RFC 8461 3.2), CRLF-separated key/value pairs."""
    return "\r\n".join(("version: STSv1", "mode: testing", f"mx: {setup.hostname}",
                        f"max_age: {STS_MAX_AGE}")) + "\r\n"


def sts_id(policy: str) -> str:
    """The policy's id: 1 to 32 letters and digits (RFC 8461 3.1), a hash of the policy text."""
    return hashlib.sha256(policy.encode("ascii")).hexdigest()[:20]


def _mta_sts(setup: Setup) -> Record:
    policy = sts_policy(setup)
    url = f"https://mta-sts.{setup.domain}/.well-known/mta-sts.txt"
    notes = (f"the policy file this record announces, served at {url}",
             f"(a web server for mta-sts.{setup.domain} with a certificate naming it; this appliance",
             "does not serve it yet: until a web server serves it, senders ignore the record):",
             *(f"    {line}" for line in policy.splitlines()),
             f"mta-sts.{setup.domain}. {TTL} IN CNAME {setup.hostname}.   (when that web server is this host)",
             "mode: enforce and max_age: 604800 once TLS-RPT reports show no failures")
    return Record(f"_mta-sts.{setup.domain}.", "TXT", f"v=STSv1; id={sts_id(policy)}",
                  "MTA-STS (RFC 8461): senders must use TLS with a valid certificate to reach us",
                  "mta-sts", notes=notes)


def _tls_rpt(setup: Setup) -> Record:
    return Record(f"_smtp._tls.{setup.domain}.", "TXT", f"v=TLSRPTv1; rua=mailto:{setup.reports}",
                  "TLS-RPT (RFC 8460): where senders report failed TLS connections to us", "tls-rpt")


def srv_value(setup: Setup, service: str, priority: int) -> str:
    """`priority weight port target`; `0 0 0 .` for a service that is off (RFC 6186 3.4, RFC 2782)."""
    bound = listen_port(setup.listen.get(service, ""))
    if bound is None:
        return "0 0 0 ."
    return f"{priority} 1 {bound[0]} {setup.hostname}."


def _srv(setup: Setup) -> list[Record]:
    made = []
    for label, service, priority, text in SRV_SERVICES:
        value = srv_value(setup, service, priority)
        port = int(value.split()[2])
        if port == 0:
            text += f" is not offered ([listen] {service} is off)"
        elif port != STANDARD_PORTS[service]:
            text += (f", on port {port} as [listen] {service} says (if a firewall forwards port "
                     f"{STANDARD_PORTS[service]} to it, write {STANDARD_PORTS[service]})")
        made.append(Record(f"{label}.{setup.domain}.", "SRV", value, f"RFC 6186: {text}", "srv"))
    return made


def _autoconfig(setup: Setup) -> list[Record]:
    """Where mail clients fetch their settings (appliance/web/autoconfig.py serves them on `[listen] web`).

    The CNAMEs are printed either way (harmless while the web listener is off, right once it is
    on); the SRV record names the web listener's port, so it is only a comment while that is off.
    """
    web = listen_port(setup.listen.get("web", ""))
    serving = ("served by [listen] web" if web else "useful once [listen] web is on") + \
        "; over HTTPS the certificate must name this host too (docs/autoconfig.md)"
    made = [Record(f"autoconfig.{setup.domain}.", "CNAME", f"{setup.hostname}.",
                   f"Thunderbird's autoconfig host: it asks https://autoconfig.{setup.domain}/mail/"
                   f"config-v1.1.xml, {serving}", "autoconfig"),
            Record(f"autodiscover.{setup.domain}.", "CNAME", f"{setup.hostname}.",
                   f"Outlook's Autodiscover host: it posts to https://autodiscover.{setup.domain}/autodiscover/"
                   f"autodiscover.xml, {serving}", "autodiscover")]
    label = f"_autodiscover._tcp.{setup.domain}."
    if web is None:
        made.append(Record(label, "SRV", f"0 1 443 {setup.hostname}.",
                           "Outlook's Autodiscover by SRV (when autodiscover.DOMAIN has no certificate of its "
                           "own): needs [listen] web on 443", "advice", publish=False))
        return made
    at = setup.hostname if web[0] == 443 else f"{setup.hostname}:{web[0]}"
    why = (f"Outlook's Autodiscover by SRV: it then posts to https://{at}/autodiscover/autodiscover.xml, "
           f"where the certificate of {setup.hostname} suffices (Outlook asks the user once to allow it)")
    if web[0] != 443:
        why += f" (on port {web[0]} as [listen] web says; if a firewall forwards port 443 to it, write 443)"
    made.append(Record(label, "SRV", f"0 1 {web[0]} {setup.hostname}.", why, "srv"))
    return made


def _ptr(setup: Setup) -> list[Record]:
    addresses = setup.addresses.all
    if not addresses:
        return [Record("ADDRESS.in-addr.arpa.", "PTR", f"{setup.hostname}.",
                       "PTR: ask the hosting provider for this reverse record of the server's address", "ptr",
                       publish=False)]
    return [Record(f"{ipaddress.ip_address(ip).reverse_pointer}.", "PTR", f"{setup.hostname}.",
                   f"PTR of {ip}: ask the hosting provider for it (many receivers refuse mail without it)",
                   "ptr", publish=False, address=ip) for ip in addresses]


# ---------------------------------------------------------------- zone-file form

def character_strings(text: str) -> list[bytes]:
    """`text` (UTF-8) cut into TXT character-strings of at most 255 octets; one empty string for ""."""
    data = text.encode("utf-8")
    return [data[i:i + MAX_STRING] for i in range(0, len(data), MAX_STRING)] or [b""]


def quote(string: bytes) -> str:
    """One character-string in zone-file form (RFC 1035 5.1): quoted, `"` and `\\` escaped,
    anything not printable ASCII as \\DDD."""
    out = []
    for octet in string:
        char = chr(octet)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= octet < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{octet:03d}")
    return '"' + "".join(out) + '"'


def rdata(record: Record) -> str:
    if record.type == "TXT":
        return " ".join(quote(part) for part in character_strings(record.value))
    return record.value


def zone_line(record: Record, ttl: int = TTL) -> str:
    """The record on one line: `name ttl IN type rdata` (a TXT's strings side by side)."""
    return f"{record.name} {ttl} IN {record.type} {rdata(record)}"


def zone_text(setup: Setup, made: list[Record]) -> list[str]:
    """What `mailappliance dns DOMAIN` prints: comments and one line per record, a zone file fragment."""
    lines = [f"; DNS records for {setup.domain}, whose mail is served by {setup.hostname}",
             "; (paste into the zone, or enter each in the DNS provider's form; "
             f"`mailappliance dns {setup.domain} --check` verifies them)"]
    for record in made:
        lines.append("")
        lines.append(f"; {record.why}")
        line = zone_line(record)
        lines.append(line if record.publish else f"; {line}")
        lines.extend(f"; {note}" for note in record.notes)
    return lines


# ---------------------------------------------------------------- DKIM keys

def dkim_keys(folder: str, domain: str) -> tuple[tuple[str, str], ...]:
    """(DNS selector, key record value) of each stored key of the domain; DKIMKeyError if one is unreadable."""
    found = []
    for key in dkimkeys.stored_keys(folder, domain):
        try:
            with open(key.path, "rb") as handle:
                pem = handle.read(64 * 1024)
        except OSError as exc:
            raise dkimkeys.DKIMKeyError(f"{key.path}: {exc.strerror}") from None
        try:
            found.append((key.dns_selector, dkimkeys.record_value(pem)))
        except dkimkeys.DKIMKeyError as exc:
            raise dkimkeys.DKIMKeyError(f"{key.path}: {exc}") from None
    return tuple(found)
