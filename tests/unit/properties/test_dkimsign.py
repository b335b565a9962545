"""Properties of the DKIM signer, which parses a message's From: (outside bytes) to pick a key file.

Whatever the message, signing never fails and never changes the message itself: it comes back
whole, with DKIM-Signature fields on top or none; the domain it picks is a plain DNS name (never
a path); and what it signs verifies.
"""
from __future__ import annotations

import tempfile

import dkim
from hypothesis import example, given, strategies as st

from appliance import dkimkeys
from appliance.filters.dkimsign import DKIMSigner, from_domain
from appliance.inline import InlinePool, InlineReactor
from tests.unit.properties.strategies import address_like, any_bytes, examples

_KEYS = tempfile.mkdtemp(prefix="dkimsign-properties-")
dkimkeys.generate(_KEYS, "example.test", "mail", (dkimkeys.RSA, dkimkeys.ED25519))
_SIGNER = DKIMSigner(_KEYS, "mail", True, InlineReactor(), InlinePool())

_from_values = st.one_of(st.sampled_from(["alice@example.test", "A <alice@Example.Test>", "a@example.test, b@x.test",
                                          "\"x@y\" <alice@example.test>", "alice@example.test.", "@example.test",
                                          "alice@../example.test", "=?utf-8?q?a?= <a@example.test>"]),
                         address_like, st.text(max_size=30))
_other_fields = st.lists(st.sampled_from([b"To: bob@example.org\r\n", b"Subject: hi\r\n", b"Subject:\r\n",
                                          b"From: second@example.test\r\n", b"Cc: \r\n", b"X-Odd: \xff\xfe\r\n",
                                          b"Subject: folded\r\n\tmore\r\n", b"Date: not a date\r\n",
                                          b"Received: x\r\n", b" leading continuation\r\n", b"no colon\r\n"]),
                         max_size=5)
_messages = st.one_of(
    any_bytes,
    st.builds(lambda value, fields, body: b"From: " + value.encode("utf-8", "surrogateescape") + b"\r\n"
              + b"".join(fields) + b"\r\n" + body, _from_values, _other_fields, st.binary(max_size=60)))


def _dns(name: bytes, timeout: int = 5) -> bytes | None:
    selector, _, domain = name.decode().rstrip(".").partition("._domainkey.")
    for key in dkimkeys.stored_keys(_KEYS, domain):
        if key.dns_selector == selector:
            with open(key.path, "rb") as handle:
                return dkimkeys.record_value(handle.read()).encode()
    return None


@given(_messages)
@examples(0.5)
@example(b"From: alice@example.test\r\n\r\nbody\r\n")
def test_signing_never_fails_and_keeps_the_message(message):
    out: list[bytes] = []
    failures: list[object] = []
    _SIGNER.sign("", message).addCallbacks(out.append, failures.append)
    assert failures == [] and len(out) == 1
    signed = out[0]
    assert signed.endswith(message)
    added = signed[:len(signed) - len(message)]
    assert added == b"" or added.startswith(b"DKIM-Signature: ")
    if added:
        assert from_domain(message) == "example.test"
        assert added.count(b"DKIM-Signature: ") == 2
        assert dkim.verify(signed, dnsfunc=_dns)


@given(_messages)
def test_the_signing_domain_is_a_dns_name_or_none(message):
    domain = from_domain(message)
    assert domain is None or (dkimkeys.is_name(domain) and "/" not in domain and ".." not in domain)
