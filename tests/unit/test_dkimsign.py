"""filters/dkimsign.py: what we sign verifies (dkimpy), cannot be extended, and never costs a message."""
from __future__ import annotations

import os
import shutil

import dkim
import pytest

from appliance import dkimkeys
from appliance.filters.dkimsign import DKIMSigner, from_domain, signed_headers
from appliance.inline import InlinePool, InlineReactor
from tests.unit.checkrig import LogLines

MESSAGE = (b"Received: from pc1 by mail.example.test; Sat, 5 Dec 2026 08:00:00 +0000\r\n"
           b"From: Alice <alice@example.test>\r\n"
           b"To: bob@example.org\r\n"
           b"Subject: quarterly report\r\n"
           b"Date: Sat, 05 Dec 2026 08:00:00 +0000\r\n"
           b"Message-ID: <r1@example.test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"\r\n"
           b"All done.\r\n")


@pytest.fixture(scope="module")
def made_keys(tmp_path_factory) -> str:
    """One RSA and one ed25519 key for example.test, made once (RSA generation takes a while)."""
    folder = str(tmp_path_factory.mktemp("keys"))
    dkimkeys.generate(folder, "example.test", "mail", (dkimkeys.RSA, dkimkeys.ED25519))
    return folder


@pytest.fixture
def keys(made_keys, tmp_path) -> str:
    """A copy each test may change."""
    folder = str(tmp_path / "dkim")
    shutil.copytree(made_keys, folder)
    return folder


def dns_for(folder: str):
    """A dnsfunc for dkimpy answering each key's TXT record as a resolver joins its strings."""
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        selector, _, domain = name.decode().rstrip(".").partition("._domainkey.")
        for key in dkimkeys.stored_keys(folder, domain):
            if key.dns_selector == selector:
                with open(key.path, "rb") as handle:
                    return "".join(dkimkeys.character_strings(dkimkeys.record_value(handle.read()))).encode()
        return None
    return lookup


def sign(folder: str, message: bytes = MESSAGE, ed25519: bool = False, selector: str = "mail") -> bytes:
    signer = DKIMSigner(folder, selector, ed25519, InlineReactor(), InlinePool())
    result = []
    signer.sign("alice@example.test", message).addCallback(result.append)
    assert len(result) == 1
    return result[0]


def signatures(message: bytes) -> list[bytes]:
    return [line for line in message.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]


def test_signed_message_verifies_with_dkimpy_and_keeps_the_message(keys):
    signed = sign(keys)
    assert signed.startswith(b"DKIM-Signature: ")         # on top, above our Received line
    assert signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns_for(keys))
    [sig] = signatures(signed)
    fields = dkim.DKIM(signed)
    fields.verify(dnsfunc=dns_for(keys))
    tags = fields.signature_fields
    assert (tags[b"a"], tags[b"c"], tags[b"d"], tags[b"s"]) == (b"rsa-sha256", b"relaxed/relaxed", b"example.test",
                                                                 b"mail")
    signed_names = [name.strip() for name in tags[b"h"].split(b":")]
    assert b"received" not in signed_names and b"return-path" not in signed_names
    for name in (b"from", b"to", b"subject", b"date", b"message-id"):
        assert signed_names.count(name) == 2, name      # present once, listed twice
    assert signed_names.count(b"mime-version") == 1 and signed_names.count(b"content-type") == 1
    assert b"cc" not in signed_names                    # absent and not oversigned


def test_relaxed_canonicalization_survives_refolding(keys):
    signed = sign(keys)
    refolded = signed.replace(b"Subject: quarterly report", b"Subject:   quarterly\r\n    report")
    assert dkim.verify(refolded, dnsfunc=dns_for(keys))


@pytest.mark.parametrize("added", [b"Subject: pay this invoice\r\n", b"From: ceo@example.test\r\n",
                                   b"To: everyone@example.org\r\n", b"Date: Sun, 06 Dec 2026 08:00:00 +0000\r\n",
                                   b"Message-ID: <other@example.test>\r\n"])
def test_an_added_oversigned_field_breaks_the_signature(keys, added):
    signed = sign(keys)
    for where in (0, signed.index(b"\r\n\r\n") + 2):        # on top, or at the end of the header
        tampered = signed[:where] + added + signed[where:]
        assert not dkim.verify(tampered, dnsfunc=dns_for(keys)), (added, where)


def test_an_absent_to_cannot_be_added_later(keys):
    message = MESSAGE.replace(b"To: bob@example.org\r\n", b"")
    signed = sign(keys, message)
    assert dkim.verify(signed, dnsfunc=dns_for(keys))
    assert not dkim.verify(signed.replace(b"\r\n\r\n", b"\r\nTo: someone@example.org\r\n\r\n", 1),
                           dnsfunc=dns_for(keys))


def test_a_changed_body_breaks_the_signature(keys):
    signed = sign(keys)
    assert not dkim.verify(signed.replace(b"All done.", b"All gone."), dnsfunc=dns_for(keys))


def test_ed25519_second_signature_when_asked(keys):
    signed = sign(keys, ed25519=True)
    assert len(signatures(signed)) == 2
    assert b"a=rsa-sha256" in signed.split(b"DKIM-Signature:")[1]       # RSA first: read by every verifier
    dns = dns_for(keys)
    assert dkim.DKIM(signed).verify(idx=0, dnsfunc=dns)
    checker = dkim.DKIM(signed)
    assert checker.verify(idx=1, dnsfunc=dns)
    assert (checker.signature_fields[b"a"], checker.signature_fields[b"s"]) == (b"ed25519-sha256", b"mail-ed25519")


def test_ed25519_key_unused_unless_configured(keys):
    assert len(signatures(sign(keys, ed25519=False))) == 1


def test_no_key_for_the_from_domain_leaves_the_message_unchanged_and_logs_once(keys):
    message = MESSAGE.replace(b"alice@example.test", b"alice@example.org")
    signer = DKIMSigner(keys, "mail", False, InlineReactor(), InlinePool())
    results = []
    with LogLines() as log:
        for _ in range(3):
            signer.sign("alice@example.org", message).addCallback(results.append)
    assert results == [message] * 3
    assert len(log.matching("dkim-unsigned domain=example.org")) == 1
    assert log.matching("error") == []


def test_no_key_folder_at_all(tmp_path):
    assert sign(str(tmp_path / "missing")) == MESSAGE


def test_a_broken_key_sends_the_message_unsigned_with_an_error_line(keys):
    path = os.path.join(keys, "example.test", "mail.rsa.pem")
    with open(path, "wb") as handle:
        handle.write(b"-----BEGIN RSA PRIVATE KEY-----\nnot base64 at all\n-----END RSA PRIVATE KEY-----\n")
    with LogLines() as log:
        assert sign(keys) == MESSAGE
    [line] = log.matching("error dkim-sign")
    assert "domain=example.test" in line and "mail.rsa.pem" in line and "unsigned" in line


def test_an_ed25519_key_in_the_rsa_file_is_refused_not_used(keys):
    folder = os.path.join(keys, "example.test")
    shutil.copy(os.path.join(folder, "mail.ed25519.pem"), os.path.join(folder, "mail.rsa.pem"))
    with LogLines() as log:
        assert sign(keys) == MESSAGE
    assert len(log.matching("error dkim-sign")) == 1


def test_a_new_key_is_used_without_a_restart(keys, tmp_path):
    message = MESSAGE.replace(b"alice@example.test", b"alice@example.org")
    signer = DKIMSigner(keys, "mail", False, InlineReactor(), InlinePool())
    out = []
    signer.sign("", message).addCallback(out.append)
    assert out == [message]
    dkimkeys.generate(keys, "example.org", "mail", (dkimkeys.RSA,))
    signer.sign("", message).addCallback(out.append)
    assert signatures(out[1]) and dkim.verify(out[1], dnsfunc=dns_for(keys))
    dkimkeys.generate(keys, "example.org", "mail", (dkimkeys.RSA,), force=True)    # a replaced key
    signer.sign("", message).addCallback(out.append)
    assert dkim.verify(out[2], dnsfunc=dns_for(keys))


def test_the_configured_selector_wins_else_the_domains_own(keys):
    dkimkeys.generate(keys, "example.test", "next", (dkimkeys.RSA,))
    assert b"s=next;" in sign(keys, selector="next").replace(b" ", b"")
    assert b"s=mail;" in sign(keys, selector="mail").replace(b" ", b"")
    os.unlink(os.path.join(keys, "example.test", "mail.rsa.pem"))
    assert b"s=next;" in sign(keys, selector="mail").replace(b" ", b"")


@pytest.mark.parametrize("value, domain", [
    (b"Alice <alice@Example.TEST>", "example.test"),
    (b"alice@example.test, bob@example.test", "example.test"),
    (b"alice@example.test, eve@example.org", None),         # two domains: no single DMARC domain
    (b"undisclosed", None),
    (b"x@../../etc", None),
    ("x@exämple.test".encode(), None),                  # U-label: keygen takes the xn-- form only
])
def test_signing_domain_is_the_single_from_domain(value, domain):
    assert from_domain(b"From: " + value + b"\r\n\r\nbody\r\n") == domain


def test_two_from_fields_are_not_signed():
    assert from_domain(b"From: a@example.test\r\nFrom: b@example.test\r\n\r\n") is None


def test_signed_headers_lists_repeated_fields_as_often_as_they_occur():
    message = b"From: a@example.test\r\nReferences: <1@x>\r\nReferences: <2@x>\r\nCc: c@x\r\nCc: d@x\r\n\r\n"
    names = signed_headers(message)
    assert names.count(b"references") == 2 and names.count(b"cc") == 2
    assert names.count(b"from") == 2 and names.count(b"subject") == 1 and names.count(b"to") == 1
