"""Issue 10, defect 12: TLS 1.2 offers only forward-secret AEAD suites (Mozilla "intermediate").

The client is Python's own ssl module (OpenSSL through another binding than the server's), driven
over memory BIOs against the server context the appliance really uses.
"""
from __future__ import annotations

import ssl as stdlib_ssl

import pytest
from OpenSSL import SSL

from appliance import tls
from appliance.config import TLSSection

HOSTNAME = "mail.example.test"


@pytest.fixture
def server_tls(tmp_path) -> tls.ServerTLS:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    tls.generate_self_signed(HOSTNAME, cert, key)
    return tls.ServerTLS(TLSSection(certificate=cert, key=key, min_version="TLSv1.2"))


def handshake(server_tls: tls.ServerTLS, ciphers: str | None, maximum=stdlib_ssl.TLSVersion.TLSv1_2) -> tuple[str, str]:
    """(version, cipher) the client agreed, or SSL errors from either side when they cannot agree."""
    context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = stdlib_ssl.CERT_NONE
    context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    incoming, outgoing = stdlib_ssl.MemoryBIO(), stdlib_ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    server = server_tls.serverConnectionForTLS(None)
    server.set_accept_state()
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except stdlib_ssl.SSLWantReadError:
            done = False
        data = outgoing.read()
        if data:
            server.bio_write(data)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            incoming.write(server.bio_read(65536))
        except SSL.WantReadError:
            pass
        if done:
            version, name = client.version(), client.cipher()[0]
            return version, name
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
                                   "ECDHE-ECDSA-AES128-SHA256", "AES128-GCM-SHA256"])
def test_tls12_client_offering_only_a_weak_suite_is_refused(server_tls, suite):
    """CBC-SHA1, CBC-SHA256 and static RSA (no forward secrecy) are never agreed on TLS 1.2."""
    with pytest.raises((SSL.Error, stdlib_ssl.SSLError)):
        handshake(server_tls, suite)


def test_tls12_client_gets_a_forward_secret_aead_suite(server_tls):
    version, cipher = handshake(server_tls, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert (version, cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(server_tls, "ECDHE-ECDSA-CHACHA20-POLY1305")[1] == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_tls13_is_left_as_it_is(server_tls):
    version, cipher = handshake(server_tls, None, maximum=stdlib_ssl.TLSVersion.TLSv1_3)
    assert version == "TLSv1.3" and cipher.startswith("TLS_")
