"""Issue 10, defect 10: what was learnt before STARTTLS, the login included, is forgotten (RFC 3207 4.2).

The same class in POP3 (STLS, RFC 2595 4) and IMAP (STARTTLS, RFC 3501 6.2.1) is checked too:
there the state machine allows STLS/STARTTLS only before login, so a login cannot carry over.
"""
from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from appliance import address
from appliance.config import TLSSection
from tests.unit.test_smtp_server import Rig, codes, plain


class FakeTLS:
    available = True


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):
    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 4321))
        self.tls_started = False

    def startTLS(self, context) -> None:
        self.tls_started = True


def tls_rig(kind: str) -> Rig:
    """A session from a plaintext_auth_network on a listener that offers STARTTLS."""
    rig = Rig(kind, plaintext_ok="192.0.2.0/24")
    rig.factory.tls = FakeTLS()
    rig.factory.tls_settings = TLSSection("", "", plaintext_auth_networks=address.parse_networks("192.0.2.0/24"))
    rig.proto = rig.factory.buildProtocol(None)
    rig.transport = TLSCapableTransport("192.0.2.9")
    rig.proto.makeConnection(rig.transport)
    rig.take()
    return rig


def test_submission_login_before_starttls_is_forgotten():
    rig = tls_rig("submission")
    rig.send(b"EHLO c\r\n")
    assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")[0].startswith(b"235")
    assert rig.send(b"STARTTLS\r\n")[0].startswith(b"220")
    assert rig.transport.tls_started
    out = rig.send(b"EHLO c\r\n")
    assert b"250 AUTH PLAIN LOGIN" in out                       # offered again: nobody is logged in
    assert rig.send(b"MAIL FROM:<alice@example.test>\r\n")[0].startswith(b"530 5.7.0")
    assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")[0].startswith(b"235")
    assert rig.send(b"MAIL FROM:<alice@example.test>\r\n")[0].startswith(b"250")


def test_mx_relay_allowed_by_login_does_not_survive_starttls():
    rig = tls_rig("submission")
    rig.factory.policy.offers_auth = True
    rig.send(b"EHLO c\r\nAUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")
    rig.send(b"STARTTLS\r\n")
    rig.send(b"EHLO c\r\n")
    out = rig.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<friend@elsewhere.test>\r\n")
    assert codes(out) == [b"530", b"503"]


def test_received_protocol_after_starttls_has_no_a_without_new_auth():
    rig = tls_rig("submission")
    rig.send(b"EHLO c\r\nAUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\nSTARTTLS\r\n")
    rig.send(b"EHLO c\r\n")
    assert rig.proto.user is None and rig.proto.protocol_name == "ESMTPS"


def test_imap_starttls_is_refused_after_login(tmp_path):
    """IMAP: STARTTLS exists only in the not-authenticated state, so no login can cross it."""
    from tests.unit.imap.harness import SyncReactor, connect, talk
    protocol, transport = connect(SyncReactor(), tmp_path, plaintext=address.parse_networks("192.0.2.0/24"))
    assert b"a OK" in talk(protocol, transport, b"a LOGIN alice@example.test secret\r\n")
    assert b"b BAD" in talk(protocol, transport, b"b STARTTLS\r\n")
    assert not transport.tls_started
