"""DKIM signing on a running appliance, as an operator sets it up: `dkim keygen`, publish, send.

The key is made while the daemon runs (no restart), the printed record is served by a real DNS
server, and dkimpy verifies the delivered messages through it, as a receiving MX would.
"""
from __future__ import annotations

import re

import dkim
import dns.resolver
import pytest

from tests.integration.dnsserver import DNSServer
from tests.integration.harness import DOMAIN, Appliance, make_message, wait_for

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def published(keygen_output: str) -> list[str]:
    """The records `dkim keygen` printed, as zone entries for the test DNS server."""
    records = []
    for match in re.finditer(r"^(\S+)\. 3600 IN TXT \((.*?)\)", keygen_output, re.M | re.S):
        strings = [part for i, part in enumerate(match.group(2).split('"')) if i % 2 == 1]
        assert all(len(s) <= 255 for s in strings)
        records.append(txt_record(match.group(1), strings))
    return records


def txt_record(name: str, strings: list[str]) -> str:
    """A pyzone TXT record; its strings as bytes, which twisted.names encodes (dnsserver.txt() gives str)."""
    return f"TXT({name!r}, {', '.join(repr(part.encode('ascii')) for part in strings)})"


def dnsfunc_for(server: DNSServer):
    """dkimpy's key lookup through the real DNS server, joining the TXT strings as RFC 6376 3.6.2.2 says."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], server.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)
    return lookup


def one_message(appliance: Appliance, user: str, subject: str) -> bytes:
    def find() -> bytes | None:
        for raw in appliance.messages(user):
            if f"Subject: {subject}".encode() in raw:
                return raw
        return None
    return wait_for(find, timeout=15)


def signature_domains(message: bytes) -> list[str]:
    return re.findall(r"(?:^|;)\s*d=([^;\s]+)", " ".join(
        line.decode() for line in _signature_fields(message)))


def _signature_fields(message: bytes) -> list[bytes]:
    head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    unfolded = re.sub(rb"\n[ \t]+", b" ", head)
    return [line for line in unfolded.split(b"\n") if line.lower().startswith(b"dkim-signature:")]


@pytest.fixture
def signing(make_appliance, tmp_path):
    """A running appliance, then `dkim keygen example.test` (ed25519 too), its records in a real DNS server."""
    appliance = make_appliance(services=("smtp", "submission"), dkim={"ed25519": "yes"})
    made = appliance.cli("dkim", "keygen", DOMAIN)
    records = published(made.stdout)
    assert [r.split("'")[1] for r in records] == ["mail._domainkey.example.test", "mail-ed25519._domainkey.example.test"]
    server = DNSServer(str(tmp_path / "dns"), {DOMAIN: records})
    server.start()
    yield appliance, dnsfunc_for(server)
    server.stop()


def test_submitted_mail_is_signed_and_verifies_through_dns(signing):
    appliance, dnsfunc = signing
    with appliance.submit("alice") as client:
        client.sendmail(ALICE, [BOB], make_message("signed by us", sender=f"Alice <{ALICE}>", to=BOB,
                                                   extra_headers="Date: Sat, 05 Dec 2026 08:00:00 +0000\r\n"))
    message = one_message(appliance, "bob", "signed by us")
    assert signature_domains(message) == [DOMAIN, DOMAIN]
    assert dkim.verify(message, dnsfunc=dnsfunc)                      # the first: rsa-sha256
    second = dkim.DKIM(message)
    assert second.verify(idx=1, dnsfunc=dnsfunc)
    assert second.signature_fields[b"a"] == b"ed25519-sha256"
    # What a receiver relies on: the signature covers the visible fields, and the body.
    assert not dkim.verify(message.replace(b"Subject: signed by us", b"Subject: signed by them"), dnsfunc=dnsfunc)
    assert "error dkim-sign" not in appliance.log()


def test_mail_from_outsiders_is_not_signed_even_claiming_our_domain(signing):
    appliance, _ = signing
    with appliance.smtp("smtp") as client:
        client.sendmail("someone@outside.example", [BOB], make_message("from outside"))
        client.sendmail(ALICE, [BOB], make_message("forged from us", sender=ALICE, to=BOB))
    for subject in ("from outside", "forged from us"):
        assert _signature_fields(one_message(appliance, "bob", subject)) == []


def test_the_sendmail_commands_mail_is_signed(signing):
    appliance, dnsfunc = signing
    appliance.cli("sendmail", "-f", ALICE, "bob", stdin=f"From: {ALICE}\nSubject: nightly job\n\nall fine\n")
    message = one_message(appliance, "bob", "nightly job")
    assert signature_domains(message) == [DOMAIN, DOMAIN]
    assert dkim.verify(message, dnsfunc=dnsfunc)


def test_mail_from_a_trusted_network_is_signed(make_appliance, tmp_path):
    """Our own hosts relaying through port 25 without a login ([relay] trusted_networks) are ours too."""
    appliance = make_appliance(services=("smtp",), relay={"trusted_networks": "127.0.0.1/32"})
    appliance.cli("dkim", "keygen", DOMAIN)
    with appliance.smtp("smtp") as client:
        client.sendmail(ALICE, [BOB], make_message("from the printer", sender=ALICE, to=BOB))
    assert signature_domains(one_message(appliance, "bob", "from the printer")) == [DOMAIN]


def test_mail_from_a_domain_without_a_key_goes_out_unsigned(make_appliance):
    appliance = make_appliance(services=("submission",))
    with appliance.submit("alice") as client:
        for subject in ("no key yet", "still no key"):
            client.sendmail(ALICE, [BOB], make_message(subject, sender=ALICE, to=BOB))
    for subject in ("no key yet", "still no key"):
        assert _signature_fields(one_message(appliance, "bob", subject)) == []
    assert appliance.log().count("dkim-unsigned domain=example.test") == 1       # once, not per message
    assert "error dkim-sign" not in appliance.log()
