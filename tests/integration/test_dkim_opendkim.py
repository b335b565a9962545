"""Interoperability: what our signer signs verifies with Debian's opendkim, not only with dkimpy.

opendkim's test mode (`opendkim -t FILE`) runs the milter's whole verification on a message
file and prints the Authentication-Results it would add. Its keys come from `TestPublicKeys`,
a file of `name record` lines, which we fill from the zone-file records `dkim keygen` prints,
joined as a resolver joins the character-strings: so the printed record itself is under test.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from appliance import dkimkeys
from appliance.filters.dkimsign import DKIMSigner
from appliance.inline import InlinePool, InlineReactor
from tests.integration.harness import require_program

MESSAGE = (b"Received: from pc1 by mail.example.test; Sat, 5 Dec 2026 08:00:00 +0000\r\n"
           b"From: Alice <alice@example.test>\r\n"
           b"To: Bob <bob@example.org>\r\n"
           b"Cc: carol@example.org\r\n"
           b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
           b"Date: Sat, 05 Dec 2026 08:00:00 +0000\r\n"
           b"Message-ID: <r1@example.test>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n"
           b"\r\n"
           b"Caf\xc3\xa9 at ten.  \r\n\r\n\r\n")      # trailing spaces and empty lines: relaxed body rules


def zone_strings(zone: str) -> str:
    """A zone-file TXT record's character-strings joined, as a resolver hands them to a verifier."""
    inside = zone[zone.index("(") + 1:zone.rindex(")")]
    return "".join(part for i, part in enumerate(inside.split('"')) if i % 2 == 1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("dkim"))
    dkimkeys.generate(folder, "example.test", "mail", (dkimkeys.RSA, dkimkeys.ED25519))
    return folder


def sign(keys: str, message: bytes, ed25519: bool) -> bytes:
    out: list[bytes] = []
    DKIMSigner(keys, "mail", ed25519, InlineReactor(), InlinePool()).sign("", message).addCallback(out.append)
    return out[0]


def opendkim_results(tmp_path, keys: str, message: bytes) -> list[str]:
    """The `dkim=...` results opendkim's verifier finds in `message`, one per signature."""
    program = require_program("opendkim")
    with open(tmp_path / "keys.txt", "w", encoding="ascii") as handle:
        for key in dkimkeys.stored_keys(keys, "example.test"):
            zone = dkimkeys.read_record(key)
            handle.write(f"{key.dns_selector}._domainkey.example.test {zone_strings(zone)}\n")
    (tmp_path / "opendkim.conf").write_text(f"Mode v\nSyslog no\nTestPublicKeys {tmp_path / 'keys.txt'}\n")
    (tmp_path / "message.eml").write_bytes(message)
    done = subprocess.run([program, "-x", str(tmp_path / "opendkim.conf"), "-vv", "-t", str(tmp_path / "message.eml")],
                          capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    found = re.findall(r"dkim=(\w+)[^;]*?header\.a=([\w-]+)", output)
    assert found, output
    return [f"{algorithm} {result}" for result, algorithm in found]


def test_opendkim_verifies_our_rsa_signature(tmp_path, keys):
    signed = sign(keys, MESSAGE, ed25519=False)
    assert opendkim_results(tmp_path, keys, signed) == ["rsa-sha256 pass"]


def test_opendkim_verifies_both_signatures(tmp_path, keys):
    signed = sign(keys, MESSAGE, ed25519=True)
    assert opendkim_results(tmp_path, keys, signed) == ["rsa-sha256 pass", "ed25519-sha256 pass"]


def test_opendkim_fails_a_tampered_message(tmp_path, keys):
    """The check above can fail: a changed Subject is caught by opendkim too."""
    signed = sign(keys, MESSAGE, ed25519=False).replace(b"report", b"invoice")
    assert opendkim_results(tmp_path, keys, signed) == ["rsa-sha256 fail"]


def test_opendkim_fails_an_added_from(tmp_path, keys):
    """Oversigning as opendkim sees it: a second From: on top breaks the signature."""
    signed = sign(keys, MESSAGE, ed25519=False)
    assert opendkim_results(tmp_path, keys, b"From: ceo@example.test\r\n" + signed) == ["rsa-sha256 fail"]


def test_relaxed_rules_hold_across_a_relay_that_refolds(tmp_path, keys):
    """A relay that refolds a header and trims trailing blank lines must not break it (relaxed/relaxed)."""
    signed = sign(keys, MESSAGE, ed25519=False)
    relayed = signed.replace(b"To: Bob <bob@example.org>", b"To: Bob\r\n <bob@example.org>").rstrip(b"\r\n") + b"\r\n"
    assert opendkim_results(tmp_path, keys, relayed) == ["rsa-sha256 pass"]
