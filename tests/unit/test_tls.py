"""appliance.tls: self-signed certificates, the server context, reloads and what a handshake reports."""
from __future__ import annotations

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from appliance import tls
from appliance.config import TLSSection
from appliance.errors import ConfigError

HOSTNAME = "mail.example.test"


@pytest.fixture
def pair(tmp_path) -> tuple[str, str]:
    cert, key = str(tmp_path / "tls/cert.pem"), str(tmp_path / "tls/key.pem")
    tls.generate_self_signed(HOSTNAME, cert, key)
    return cert, key


def section(pair: tuple[str, str], min_version: str = "TLSv1.2") -> TLSSection:
    return TLSSection(certificate=pair[0], key=pair[1], min_version=min_version)


def memory_handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """Drive both ends through their handshake in memory; SSL.Error when they cannot agree."""
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for this, other in ((client, server), (server, client)):
            try:
                this.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(this.bio_read(65536))
            except SSL.WantReadError:
                pass
    if not (server.get_cipher_name() and client.get_cipher_name()):
        raise AssertionError("handshake did not finish")


def client_context(max_version: int) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(max_version)
    return context


# ---------------------------------------------------------------- generate_self_signed

def test_generated_certificate_names_the_host_and_loopback_for_ten_years(pair):
    """localhost and the loopback addresses too: clients on the machine itself verify it (issue 12)."""
    certificate = x509.load_pem_x509_certificate(open(pair[0], "rb").read())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [HOSTNAME, "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=3640) < lifetime <= datetime.timedelta(days=3650)


def test_generated_key_is_private_and_matches(pair):
    assert stat.S_IMODE(os.stat(pair[1]).st_mode) == 0o600
    key = serialization.load_pem_private_key(open(pair[1], "rb").read(), password=None)
    certificate = x509.load_pem_x509_certificate(open(pair[0], "rb").read())
    assert key.public_key() == certificate.public_key()


def test_regenerating_replaces_the_pair(pair):
    before = open(pair[0], "rb").read()
    tls.generate_self_signed(HOSTNAME, *pair)
    assert open(pair[0], "rb").read() != before
    tls.load_pair(*pair)


# ---------------------------------------------------------------- load_pair

def test_mismatched_key_is_reported_on_the_key(pair, tmp_path):
    tls.generate_self_signed("other.example.test", str(tmp_path / "o.pem"), str(tmp_path / "o.key"))
    with pytest.raises(tls.TLSFileError) as caught:
        tls.load_pair(pair[0], str(tmp_path / "o.key"))
    assert caught.value.key == "key"
    assert str(caught.value) == f"{tmp_path}/o.key does not match the certificate {pair[0]}"


@pytest.mark.parametrize("which, content, key, message", [
    ("cert", b"not pem", "certificate", "holds no PEM certificate"),
    ("key", b"not pem", "key", "holds no PEM private key"),
])
def test_unusable_files(pair, which, content, key, message):
    path = pair[0] if which == "cert" else pair[1]
    with open(path, "wb") as handle:
        handle.write(content)
    with pytest.raises(tls.TLSFileError) as caught:
        tls.load_pair(*pair)
    assert caught.value.key == key and str(caught.value) == f"{path} {message}"


def test_encrypted_key_is_refused(pair):
    key = serialization.load_pem_private_key(open(pair[1], "rb").read(), password=None)
    with open(pair[1], "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pass")))
    with pytest.raises(tls.TLSFileError, match="is encrypted"):
        tls.load_pair(*pair)


# ---------------------------------------------------------------- ServerTLS

def test_server_context_refuses_old_protocols(pair):
    options = tls.ServerTLS(section(pair)).getContext().set_options(0)
    for flag in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
        assert options & flag
    assert not options & SSL.OP_NO_TLSv1_2


def test_tls12_client_is_served_by_default(pair):
    server_tls = tls.ServerTLS(section(pair))
    client = SSL.Connection(client_context(SSL.TLS1_2_VERSION), None)
    server = server_tls.serverConnectionForTLS(None)
    memory_handshake(server, client)
    assert server.get_protocol_version_name() == "TLSv1.2"


def test_min_version_tls13_refuses_a_tls12_client(pair):
    server_tls = tls.ServerTLS(section(pair, "TLSv1.3"))
    client = SSL.Connection(client_context(SSL.TLS1_2_VERSION), None)
    with pytest.raises(SSL.Error):
        memory_handshake(server_tls.serverConnectionForTLS(None), client)


def test_reload_with_broken_files_keeps_the_old_context(pair):
    server_tls = tls.ServerTLS(section(pair), source="/etc/m.conf")
    before = server_tls.getContext()
    with open(pair[0], "w") as handle:
        handle.write("garbage")
    assert server_tls.reload() == f"/etc/m.conf: [tls] certificate: {pair[0]} holds no PEM certificate"
    assert server_tls.getContext() is before


def test_reload_with_new_files_serves_the_new_certificate(pair):
    server_tls = tls.ServerTLS(section(pair))
    tls.generate_self_signed(HOSTNAME, *pair)
    assert server_tls.reload() is None
    server = server_tls.serverConnectionForTLS(None)
    memory_handshake(server, SSL.Connection(client_context(SSL.TLS1_3_VERSION), None))
    served = server.get_certificate().to_cryptography()
    assert served == x509.load_pem_x509_certificate(open(pair[0], "rb").read())


def test_bad_files_at_start_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        tls.ServerTLS(TLSSection(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")), source="m.conf")
    assert caught.value.problems[0].startswith(f"m.conf: [tls] certificate: cannot read {tmp_path}/c.pem: ")


def test_no_certificate_means_tls_unavailable():
    server_tls = tls.ServerTLS(TLSSection("", ""))
    assert not server_tls.available
    assert server_tls.reload() is None
    with pytest.raises(RuntimeError):
        server_tls.getContext()


# ---------------------------------------------------------------- implicit TLS and session_info

class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_implicit_tls_carries_data_and_reports_the_session(pair):
    server_factory = tls.implicit(Factory.forProtocol(Recorder), tls.ServerTLS(section(pair)))
    trust = ssl.Certificate.loadPEM(open(pair[0], "rb").read())
    clock = Clock()  # the client's TLS layer sends small writes on the next tick of this clock
    client_factory = TLSMemoryBIOFactory(ssl.optionsForClientTLS(HOSTNAME, trustRoot=trust), True,
                                         Factory.forProtocol(Protocol), clock)
    client, server, pump = iosim.connectedServerAndClient(lambda: server_factory.buildProtocol(None),
                                                          lambda: client_factory.buildProtocol(None), clock=clock)
    client.write(b"hello")
    pump.flush()
    assert server.wrappedProtocol.received == b"hello"
    version, cipher = tls.session_info(server.wrappedProtocol.transport)
    assert version == "TLSv1.3" and cipher.startswith("TLS_")


def test_session_info_is_none_for_plain_connections():
    assert tls.session_info(StringTransport()) is None


def test_session_info_is_none_before_the_handshake(pair):
    protocol = tls.implicit(Factory.forProtocol(Recorder), tls.ServerTLS(section(pair))).buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert tls.session_info(protocol.wrappedProtocol.transport) is None


def test_an_idle_connection_holds_no_tls_buffers_and_no_session_is_cached(pair):
    """Memory per idle client (10,000 IMAP IDLE connections in one process): OpenSSL gives back
    its read and write buffers between records, and keeps no session cache or tickets per client."""
    context = tls.make_context(section(pair))
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS, "set_mode(0) returns the modes in force"
    assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert context.set_options(0) & SSL.OP_NO_TICKET
