"""SPF, DKIM, DMARC and Authentication-Results in a real SMTP session, against a real DNS server.

The checks run in a real thread pool and ask a twisted.names server on loopback (`[delivery]
nameservers`), serving one zone `test` with the records below. The client is 192.0.2.9.
"""
from __future__ import annotations

import socket
import time

import pytest
from twisted.python.threadpool import ThreadPool

from appliance import message as msg
from appliance.filters.authresults import AuthResults, field_value, pvalue
from appliance.filters.base import AuthResult, Check
from appliance.filters.dkimverify import DKIMVerify
from appliance.filters.dmarc import DMARCCheck
from appliance.filters.spf import SPFCheck
from appliance.filters.syncdns import DNSTemporaryError, SyncDNS, pyspf_lookup
from tests.integration.dnsserver import DNSServer, a, txt
from tests.unit.authrig import Session, SigningKey, ThreadedClock, opendkim_sign
from tests.unit.checkrig import CheckRig

HOST = "mail.example.test"
CLIENT = "192.0.2.9"
ALLOW = f"v=spf1 ip4:{CLIENT} -all"
KEY = SigningKey()
OTHER_KEY = SigningKey()


def zone() -> list[str]:
    return [
        txt("client.test", ALLOW), a("client.test", CLIENT),
        txt("badhelo.test", "v=spf1 -all"),
        txt("pass.test", ALLOW),
        txt("fail.test", "v=spf1 -all exp=why.fail.test"), txt("why.fail.test", "%{i} may not send for %{d}"),
        txt("soft.test", "v=spf1 ~all"),
        txt("neutral.test", "v=spf1 ?all"),
        a("none.test", "192.0.2.200"),
        txt("broken.test", "v=spf1 bogus:mechanism -all"),
        # DKIM and DMARC
        txt("signed.test", "v=spf1 -all"), KEY.record("sel._domainkey.signed.test"),
        txt("_dmarc.signed.test", "v=DMARC1; p=reject"),
        OTHER_KEY.record("odk._domainkey.opendkim.test"), txt("_dmarc.opendkim.test", "v=DMARC1; p=reject"),
        txt("_dmarc.reject.test", "v=DMARC1; p=reject; rua=mailto:dmarc@reject.test"),
        txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        txt("_dmarc.orgdomain.test", "v=DMARC1; p=reject; sp=quarantine"),
        txt("_dmarc.relaxed.test", "v=DMARC1; p=reject"), txt("mail.relaxed.test", ALLOW),
        txt("_dmarc.strict.test", "v=DMARC1; p=reject; aspf=s"), txt("mail.strict.test", ALLOW),
        txt("_dmarc.half.test", "v=DMARC1; p=reject; pct=50"),
    ]


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory):
    server = DNSServer(str(tmp_path_factory.mktemp("dns")), {"test": zone()})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pool():
    threads = ThreadPool(minthreads=0, maxthreads=4, name="checks-test")
    threads.start()
    yield threads
    threads.stop()


@pytest.fixture
def session(dns_server, pool):
    """session(**options) -> a Session whose pipeline is spf, dkim, dmarc, authresults."""
    def make(spf="reject", temperror="tempfail", dmarc="reject", nameservers=None, timeout=2, sample=None):
        clock = ThreadedClock()
        dns = SyncDNS(nameservers or [("127.0.0.1", dns_server.port)], timeout)
        dmarc_check = DMARCCheck(dns, clock, pool, dmarc, **({"sample": sample} if sample else {}))
        checks = [SPFCheck(dns, clock, pool, HOST, spf, temperror), DKIMVerify(dns, clock, pool), dmarc_check,
                  AuthResults(HOST)]
        return Session(CheckRig(checks, peer=CLIENT, clock=clock), clock)
    return make


def mail(sender_domain: str = "pass.test", from_domain: str | None = None, subject: str = "hi",
         extra: bytes = b"") -> bytes:
    author = from_domain or sender_domain
    return (extra + f"From: Someone <someone@{author}>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Sat, 5 Dec 2026 08:00:00 +0000\r\n\r\nHello Alice.\r\n".encode())


def queued(s: Session) -> tuple:
    (envelope, message), = s.rig.queue.items
    return envelope, message


def our_results(message: bytes) -> str:
    """Our one Authentication-Results value, unfolded."""
    ours = [v.decode() for v in msg.get_all(message, "Authentication-Results") if v.lower().startswith(HOST.encode())]
    assert len(ours) == 1, ours
    return " ".join(ours[0].split())


# ---- SPF -------------------------------------------------------------------------------------------

def test_spf_pass_of_sender_and_helo_is_recorded(session):
    s = session()
    assert s.transaction("x@pass.test", mail())[-1].startswith(b"250")
    results = our_results(queued(s)[1])
    assert "spf=pass smtp.mailfrom=x@pass.test" in results and "spf=pass smtp.helo=client.test" in results
    assert s.rig.proto.facts.doubts == []


def test_spf_fail_is_refused_550_5_7_23_with_the_domains_explanation(session):
    s = session()
    out = s.transaction("x@fail.test", mail("fail.test"))
    assert out[-1] == b"550 5.7.23 SPF validation failed: 192.0.2.9 may not send for fail.test"
    assert s.rig.queue.items == []


def test_spf_fail_only_tagged_when_so_configured(session):
    s = session(spf="tag")
    assert s.transaction("x@fail.test", mail("fail.test"))[-1].startswith(b"250")
    assert "spf=fail smtp.mailfrom=x@fail.test" in our_results(queued(s)[1])
    assert "SPF fail" in s.rig.proto.facts.doubts


def test_a_helo_name_that_fails_spf_is_refused(session):
    s = session()
    out = s.transaction("x@pass.test", mail(), helo="badhelo.test")
    assert out[-1].startswith(b"550 5.7.23 SPF validation failed")


@pytest.mark.parametrize("domain, result", [("soft.test", "softfail"), ("neutral.test", "neutral"),
                                            ("none.test", "none")])
def test_softfail_neutral_and_none_pass_tagged_and_make_the_client_doubtful(session, domain, result):
    s = session()
    assert s.transaction(f"x@{domain}", mail(domain))[-1].startswith(b"250")
    assert f"spf={result} smtp.mailfrom=x@{domain}" in our_results(queued(s)[1])
    assert s.rig.proto.facts.doubts == [f"SPF {result}"]


def test_permerror_is_only_recorded(session):
    s = session()
    assert s.transaction("x@broken.test", mail("broken.test"))[-1].startswith(b"250")
    assert "spf=permerror" in our_results(queued(s)[1])


def test_a_bounce_is_checked_as_postmaster_at_the_helo_name(session):
    s = session()
    assert s.transaction("", mail("client.test"))[-1].startswith(b"250")
    assert "spf=pass smtp.mailfrom=postmaster@client.test smtp.helo=client.test" in our_results(queued(s)[1])


@pytest.fixture
def silent_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))                       # takes the queries, never answers
    yield sock
    sock.close()


@pytest.fixture
def silent_nameserver(silent_socket):
    return [("127.0.0.1", silent_socket.getsockname()[1])]


def test_syncdns_asks_only_the_configured_server_and_gives_up_after_the_timeout(silent_socket, silent_nameserver):
    resolver = SyncDNS(silent_nameserver, timeout=1)
    started = time.monotonic()
    with pytest.raises(DNSTemporaryError):
        resolver.txt("pass.test")
    assert 0.9 <= time.monotonic() - started < 2.5
    silent_socket.settimeout(0.1)
    assert silent_socket.recv(512)                   # our server was the one asked


def test_pyspfs_lookup_goes_to_the_resolver_bound_for_the_evaluation(dns_server, silent_nameserver):
    import spf
    with pyspf_lookup(SyncDNS([("127.0.0.1", dns_server.port)], 2)):
        assert spf.DNSLookup("pass.test", "TXT") == [(("pass.test", "TXT"), [ALLOW.encode()])]
        with pyspf_lookup(SyncDNS(silent_nameserver, 1)):
            with pytest.raises(spf.TempError):
                spf.DNSLookup("pass.test", "TXT")
        assert spf.DNSLookup("client.test", "A") == [(("client.test", "A"), CLIENT)]


def test_spf_temperror_is_451_4_7_24(session, silent_nameserver):
    s = session(nameservers=silent_nameserver, timeout=1)
    out = s.transaction("x@pass.test", mail())
    assert out[-1].startswith(b"451 4.7.24")
    assert s.rig.queue.items == []


def test_spf_temperror_only_tagged_when_so_configured(session, silent_nameserver):
    s = session(nameservers=silent_nameserver, timeout=1, temperror="tag")
    out = s.command(b"EHLO client.test\r\n") + s.command(b"MAIL FROM:<x@pass.test>\r\n")
    assert out[-1].startswith(b"250")
    assert [r.result for r in s.rig.proto.facts.txn.results] == ["temperror", "temperror"]


# ---- DKIM ------------------------------------------------------------------------------------------

def test_a_dkimpy_signature_whose_key_is_in_dns_passes_and_aligns_dmarc(session):
    signed = KEY.sign(mail("signed.test"), "signed.test")
    s = session()
    assert s.transaction("x@pass.test", signed)[-1].startswith(b"250")
    results = our_results(queued(s)[1])
    b_tag = msg.get(signed, "DKIM-Signature").split(b"b=")[-1][:8].decode()
    assert f"dkim=pass header.d=signed.test header.s=sel header.b={pvalue(b_tag)}" in results   # "/" is quoted
    assert "dmarc=pass reason=\"aligned dkim\" header.from=signed.test" in results


def test_a_tampered_body_fails_dkim_and_then_dmarc(session):
    signed = KEY.sign(mail("signed.test"), "signed.test").replace(b"Hello Alice.", b"Hello Mallory.")
    s = session(dmarc="tag")
    assert s.transaction("x@pass.test", signed)[-1].startswith(b"250")
    results = our_results(queued(s)[1])
    assert "dkim=fail" in results and "header.d=signed.test" in results
    assert "dmarc=fail" in results


def test_an_unsigned_message_is_dkim_none(session):
    s = session()
    s.transaction("x@pass.test", mail())
    assert "dkim=none" in our_results(queued(s)[1])


def test_a_signature_without_a_key_in_dns_is_permerror(session):
    signed = KEY.sign(mail("pass.test"), "pass.test", selector="gone")
    s = session()
    s.transaction("x@pass.test", signed)
    assert "dkim=permerror reason=\"no key record\" header.d=pass.test header.s=gone" in our_results(queued(s)[1])


def test_mail_signed_by_debians_opendkim_verifies(session, tmp_path):
    signed = opendkim_sign(mail("opendkim.test"), OTHER_KEY, "opendkim.test", "odk", str(tmp_path / "odk"))
    assert b"a=rsa-sha256" in signed
    s = session()
    assert s.transaction("x@pass.test", signed)[-1].startswith(b"250")
    results = our_results(queued(s)[1])
    assert "dkim=pass header.d=opendkim.test header.s=odk" in results
    assert "dmarc=pass" in results


# ---- DMARC -----------------------------------------------------------------------------------------

def test_relaxed_spf_alignment_passes_dmarc_for_a_subdomain_of_the_from_domain(session):
    s = session()
    assert s.transaction("x@mail.relaxed.test", mail("mail.relaxed.test", "relaxed.test"))[-1].startswith(b"250")
    assert "dmarc=pass reason=\"aligned spf\" header.from=relaxed.test" in our_results(queued(s)[1])


def test_p_reject_refuses_550_5_7_1_at_the_end_of_data(session):
    s = session()
    out = s.transaction("x@pass.test", mail("pass.test", "reject.test"))
    assert out[-2].startswith(b"354")               # accepted up to DATA: refused at its end
    assert out[-1] == b"550 5.7.1 Rejected by the DMARC policy of the From: domain (reject.test)"
    assert s.rig.queue.items == []


def test_p_reject_goes_to_junk_or_is_tagged_as_configured(session):
    junk = session(dmarc="quarantine")
    junk.transaction("x@pass.test", mail("pass.test", "reject.test"))
    assert [r.folder for r in queued(junk)[0].recipients] == ["Junk"]
    tag = session(dmarc="tag")
    tag.transaction("x@pass.test", mail("pass.test", "reject.test"))
    envelope, message = queued(tag)
    assert [r.folder for r in envelope.recipients] != ["Junk"]
    assert "dmarc=fail reason=\"p=reject\" header.from=reject.test" in our_results(message)


def test_p_quarantine_delivers_to_the_junk_folder(session):
    s = session()
    assert s.transaction("x@pass.test", mail("pass.test", "quarantine.test"))[-1].startswith(b"250")
    assert [r.folder for r in queued(s)[0].recipients] == ["Junk"]


def test_a_subdomain_without_a_record_uses_the_organizational_domains_sp(session):
    s = session()
    assert s.transaction("x@pass.test", mail("pass.test", "sub.orgdomain.test"))[-1].startswith(b"250")
    envelope, message = queued(s)
    assert [r.folder for r in envelope.recipients] == ["Junk"]          # sp=quarantine, not p=reject
    assert "dmarc=fail reason=\"p=quarantine\" header.from=sub.orgdomain.test" in our_results(message)


def test_strict_spf_alignment_needs_the_same_name(session):
    s = session()
    out = s.transaction("x@mail.strict.test", mail("mail.strict.test", "strict.test"))
    assert out[-1].startswith(b"550 5.7.1")


def test_pct_applies_p_reject_to_the_sampled_share(session):
    s = session(sample=lambda: 0.10)                   # 10 < pct=50: the policy applies
    assert s.transaction("x@pass.test", mail("pass.test", "half.test"))[-1].startswith(b"550 5.7.1")


def test_pct_gives_the_rest_the_next_milder_policy(session):
    s = session(sample=lambda: 0.90)                   # 90 >= pct=50: quarantine instead of reject
    assert s.transaction("x@pass.test", mail("pass.test", "half.test"))[-1].startswith(b"250")
    assert [r.folder for r in queued(s)[0].recipients] == ["Junk"]


def test_two_from_fields_are_permerror_and_not_refused(session):
    s = session()
    two = mail("pass.test", "reject.test", extra=b"From: other@reject.test\r\n")
    assert s.transaction("x@pass.test", two)[-1].startswith(b"250")
    assert "dmarc=permerror" in our_results(queued(s)[1])


# ---- Authentication-Results ------------------------------------------------------------------------

def test_a_forged_field_claiming_our_name_is_removed_and_others_stay(session):
    forged = (b"Authentication-Results: MAIL.Example.Test; spf=pass smtp.mailfrom=ceo@reject.test\r\n"
              b"Authentication-Results: (comment) \"mail.example.test\"; dkim=pass\r\n"
              b"Authentication-Results: relay.elsewhere.test; spf=pass smtp.mailfrom=x@pass.test\r\n")
    s = session()
    assert s.transaction("x@pass.test", mail(extra=forged))[-1].startswith(b"250")
    message = queued(s)[1]
    fields = msg.get_all(message, "Authentication-Results")
    assert len(fields) == 2
    assert fields[1] == b"relay.elsewhere.test; spf=pass smtp.mailfrom=x@pass.test"
    assert "spf=pass smtp.mailfrom=x@pass.test" in our_results(message)
    assert b"ceo@reject.test" not in message


def test_no_method_is_none():
    assert field_value(HOST, []) == f"{HOST}; none"


@pytest.mark.parametrize("identifier, author, mode, expected", [
    ("mail.example.co.uk", "example.co.uk", "r", True),      # the public suffix list knows co.uk
    ("example.co.uk", "other.co.uk", "r", False),
    ("mail.example.co.uk", "example.co.uk", "s", False),
    ("Example.CO.uk.", "example.co.uk", "s", True),
    ("bar.github.io", "foo.github.io", "r", False),           # a private suffix: separate owners
    ("", "example.co.uk", "r", False),
])
def test_alignment_uses_the_public_suffix_list(identifier, author, mode, expected):
    from appliance.filters.dmarc import aligned
    assert aligned(identifier, author, mode) is expected


def test_opendkim_testmsgs_rsa_sha1_signature_is_not_accepted(session, tmp_path):
    """opendkim-testmsg signs rsa-sha1, which RFC 8301 3.1 forbids verifiers to accept: dkim=policy."""
    import subprocess
    from tests.integration.harness import require_program
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(OTHER_KEY.pem)
    done = subprocess.run([require_program("opendkim-testmsg"), "-C", "-d", "opendkim.test", "-k", str(key_path),
                           "-s", "odk", "-t", str(tmp_path)], input=mail("opendkim.test"), capture_output=True,
                          timeout=30)
    assert done.returncode == 0 and b"a=rsa-sha1" in done.stdout, done.stderr
    signed = done.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    s = session(dmarc="tag")
    assert s.transaction("x@pass.test", signed)[-1].startswith(b"250")
    results = our_results(queued(s)[1])
    assert "dkim=policy" in results and "header.d=opendkim.test" in results and "dmarc=fail" in results


def test_a_silent_nameserver_makes_dkim_and_dmarc_temperror(session, silent_nameserver):
    signed = KEY.sign(mail("signed.test"), "signed.test")
    s = session(nameservers=silent_nameserver, timeout=1, temperror="tag")
    assert s.transaction("x@pass.test", signed)[-1].startswith(b"250")
    results = our_results(queued(s)[1])
    assert "dkim=temperror" in results and "dmarc=temperror" in results


class IprevStub(Check):
    """Stands for fcrdns.py (another part of issue 11): leaves its iprev result in facts.notes."""

    name = "iprev"

    def connect(self, facts):
        facts.notes["iprev"] = AuthResult("iprev", "pass", (("policy.iprev", facts.peer),))


def test_the_iprev_result_comes_first(session, dns_server, pool):
    clock = ThreadedClock()
    dns = SyncDNS([("127.0.0.1", dns_server.port)], 2)
    s = Session(CheckRig([IprevStub(), SPFCheck(dns, clock, pool, HOST), AuthResults(HOST)], peer=CLIENT,
                         clock=clock), clock)
    s.transaction("x@pass.test", mail())
    assert our_results(queued(s)[1]).startswith(f"{HOST}; iprev=pass policy.iprev={CLIENT}; spf=pass")


def test_a_trusted_client_gets_forged_fields_removed_and_none_added():
    rig = CheckRig([AuthResults(HOST)], peer=CLIENT, trusted="192.0.2.0/24")
    forged = b"Authentication-Results: mail.example.test; dkim=pass\r\n"
    assert rig.mail(body=forged + mail())[-1].startswith(b"250")
    (_, message), = rig.queue.items
    assert msg.get_all(message, "Authentication-Results") == []


# ---- build.py --------------------------------------------------------------------------------------

def built(tmp_path, checks: str) -> list[str]:
    from appliance import config
    from appliance.filters.build import make_pipeline
    from appliance.inline import InlinePool, InlineReactor
    from tests.unit.test_config import MINIMAL, write
    cfg = config.load(write(tmp_path, MINIMAL + "[checks]\ngreylist = off\n" + checks))
    return make_pipeline(cfg, InlineReactor(), InlinePool()).names()


def test_the_defaults_build_spf_dkim_dmarc_and_authresults_last(tmp_path):
    names = built(tmp_path, "")
    assert [n for n in names if n in ("spf", "dkim", "dmarc", "authresults")] == ["spf", "dkim", "dmarc", "authresults"]
    assert names[-1] == "authresults"


def test_each_is_left_out_when_off_and_authresults_with_the_last(tmp_path):
    assert "spf" not in built(tmp_path, "spf = off\n")
    assert [n for n in built(tmp_path, "spf = off\ndkim_verify = no\n") if n in ("dmarc", "authresults")] == \
        ["dmarc", "authresults"]
    assert not {"spf", "dkim", "dmarc", "authresults"} & set(built(tmp_path, "spf = off\ndkim_verify = no\ndmarc = off\n"))


class StuckPool:
    """A pool whose threads are all busy: jobs are taken and never run."""

    def __init__(self) -> None:
        self.jobs: list = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append(f)


def test_an_spf_evaluation_that_never_returns_is_a_temperror_at_the_timeout(dns_server):
    clock, pool = ThreadedClock(), StuckPool()
    dns = SyncDNS([("127.0.0.1", dns_server.port)], 2)
    rig = CheckRig([SPFCheck(dns, clock, pool, HOST)], peer=CLIENT, clock=clock)
    rig.send(b"EHLO client.test\r\n")
    assert rig.send(b"MAIL FROM:<x@pass.test>\r\n") == []       # waiting for the HELO evaluation
    clock.advance(4 * 2 + 2)
    assert rig.take() == []                                      # the MAIL FROM one is now waiting
    clock.advance(4 * 2 + 2)
    assert rig.take()[-1].startswith(b"451 4.7.24")
    assert len(pool.jobs) == 2
