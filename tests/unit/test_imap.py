"""IMAP protocol rules as bytes over StringTransport: TLS and login policy, literals, bad input, ordering."""
from __future__ import annotations

import ipaddress

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from appliance.auth import AuthThrottle
from appliance.config import TLSSection
from appliance.errors import DirectoryUnavailable
from appliance.imap import IMAPFactory
from appliance.store.maildir import MaildirStore, write
from appliance.inline import InlineReactor as SyncReactor, InlinePool as SyncPool

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Checker:
    """alice@example.test / secret; the login `down@example.test` finds the directory unreachable."""

    def requestAvatarId(self, credentials):
        if credentials.username == b"down@example.test":
            return defer.fail(DirectoryUnavailable("ldap://10.0.0.1 timed out"))
        if (credentials.username, credentials.password) == (b"alice@example.test", b"secret"):
            return defer.succeed("alice@example.test")
        return defer.fail(UnauthorizedLogin("no"))


class FakeTLS:
    available = True


@implementer(ITLSTransport)
class TLSTransport(StringTransport):
    def __init__(self, peer_host: str):
        from twisted.internet.address import IPv4Address
        super().__init__(peerAddress=IPv4Address("TCP", peer_host, 40000))
        self.tls_started = False

    def startTLS(self, context):
        self.tls_started = True


@pytest.fixture
def reactor():
    return SyncReactor()


def connect(reactor, tmp_path, peer="192.0.2.1", plaintext=(), implicit=False):
    store = MaildirStore(str(tmp_path / "mail" / "{domain}" / "{local}"), reactor, SyncPool())
    factory = IMAPFactory(directory=None, checker=Checker(), throttle=AuthThrottle(reactor), store=store,
                                hostname="mail.example.test", tls=FakeTLS(),
                                tls_settings=TLSSection("", "", plaintext_auth_networks=plaintext),
                                implicit_tls=implicit, reactor=reactor, pool=SyncPool())
    protocol = factory.buildProtocol(None)
    transport = TLSTransport(peer)
    protocol.makeConnection(transport)
    return protocol, transport


def talk(protocol, transport, data: bytes) -> bytes:
    transport.clear()
    protocol.dataReceived(data)
    return transport.value()


def test_before_tls_login_is_disabled_and_not_advertised(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path)
    greeting = transport.value()
    assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting and b"AUTH=" not in greeting
    reply = talk(protocol, transport, b"a1 LOGIN alice@example.test secret\r\n")
    assert reply == b"a1 NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"
    assert b"a2 NO [PRIVACYREQUIRED]" in talk(protocol, transport, b"a2 AUTHENTICATE PLAIN\r\n")


def test_starttls_discards_pipelined_plaintext(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path)
    reply = talk(protocol, transport, b"a1 STARTTLS\r\na2 LOGIN alice@example.test secret\r\n")
    assert reply == b"a1 OK Begin TLS negotiation now\r\n"
    assert transport.tls_started
    reply = talk(protocol, transport, b"a3 CAPABILITY\r\n")
    assert b"AUTH=PLAIN" in reply and b"LOGINDISABLED" not in reply and b"STARTTLS" not in reply


def test_plaintext_network_may_log_in_and_capabilities_change(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path, peer="127.0.0.1", plaintext=LOOPBACK)
    assert b"AUTH=PLAIN" in transport.value() and b"LOGINDISABLED" not in transport.value()
    reply = talk(protocol, transport, b"a1 LOGIN alice@example.test secret\r\n")
    assert reply.startswith(b"a1 OK [CAPABILITY IMAP4rev1 ") and b"AUTH=" not in reply
    reply = talk(protocol, transport, b"a2 LIST \"\" *\r\n")
    assert b'(\\HasNoChildren \\Sent) "." "Sent"' in reply and reply.endswith(b"a2 OK LIST completed\r\n")


def test_failed_login_is_authenticationfailed_and_slowed(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path, implicit=True)
    for n in range(3):
        reply = talk(protocol, transport, b"a%d LOGIN alice@example.test wrong\r\n" % n)
    assert reply == b""                                     # the third failure waits
    assert not transport.disconnecting
    reactor.advance(1.0)
    assert transport.value() == b"a2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


def test_directory_down_is_unavailable_without_details(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path, implicit=True)
    reply = talk(protocol, transport, b"a1 LOGIN down@example.test x\r\n")
    assert reply.startswith(b"a1 NO [UNAVAILABLE] ")
    assert b"ldap" not in reply and b"10.0.0.1" not in reply


def test_authenticate_plain_with_initial_response(reactor, tmp_path):
    import base64
    protocol, transport = connect(reactor, tmp_path, implicit=True)
    token = base64.b64encode(b"\0alice@example.test\0secret")
    assert talk(protocol, transport, b"a1 AUTHENTICATE PLAIN " + token + b"\r\n").startswith(b"a1 OK")


@pytest.fixture
def logged_in(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path, implicit=True)
    for n in range(2):
        write(str(tmp_path / "mail" / "example.test" / "alice"), b"Subject: m%d\r\n\r\nbody\r\n" % n)
    talk(protocol, transport, b"a0 LOGIN alice@example.test secret\r\n")
    return protocol, transport


def test_select_reports_uids_and_fetch_uses_them(logged_in):
    protocol, transport = logged_in
    reply = talk(protocol, transport, b"s SELECT INBOX\r\n")
    for line in (b"* 2 EXISTS", b"* 2 RECENT", b"* OK [UIDNEXT 3]", b"s OK [READ-WRITE] SELECT completed"):
        assert line in reply
    reply = talk(protocol, transport, b"f UID FETCH 2:* (FLAGS RFC822.SIZE)\r\n")
    size = len(b"Subject: m1\r\n\r\nbody\r\n")
    assert reply == b"* 2 FETCH (UID 2 FLAGS (\\Recent) RFC822.SIZE %d)\r\nf OK FETCH completed\r\n" % size


def test_pipelined_commands_are_answered_in_order(logged_in):
    protocol, transport = logged_in
    reply = talk(protocol, transport, b"a SELECT INBOX\r\nb FETCH 1 BODY.PEEK[HEADER]\r\nc NOOP\r\n")
    assert reply.index(b"a OK") < reply.index(b"* 1 FETCH") < reply.index(b"b OK") < reply.index(b"c OK")


@pytest.mark.parametrize("command, reply", [
    (b"x APPEND INBOX {99999999999}", b"x BAD"),
    (b"x APPEND INBOX {-1}", b"x BAD"),
    (b"x LOGIN {70000}", b"x BAD"),
    (b"x FETCH 1:x FLAGS", b"x BAD"),
    (b"x FETCH 9 FLAGS", b"x BAD"),
    (b"x FETCH 1 (FLAGS", b"x BAD"),
    (b"x SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000, b"x BAD"),
    (b"x SEARCH " + b"NOT " * 100 + b"ALL", b"x BAD"),
    (b"x FROBNICATE", b"x BAD"),
    (b"x SELECT \"../../etc\"", b"x NO"),
    (b"x CREATE a/b", b"x NO"),
])
def test_bad_input_gets_bad_or_no(logged_in, command, reply):
    protocol, transport = logged_in
    talk(protocol, transport, b"s SELECT INBOX\r\n")
    answer = talk(protocol, transport, command + b"\r\n")
    assert answer.startswith(reply), answer
    assert b"+ " not in answer                      # no continuation: the literal is never read
    assert talk(protocol, transport, b"n NOOP\r\n").endswith(b"n OK NOOP completed\r\n")


def test_nonsynchronising_literal_too_large_hangs_up(logged_in):
    protocol, transport = logged_in
    reply = talk(protocol, transport, b"x APPEND INBOX {99999999999+}\r\n")
    assert reply.startswith(b"* BYE") and transport.disconnecting


def test_literal_plus_append(logged_in):
    protocol, transport = logged_in
    reply = talk(protocol, transport, b"x APPEND Drafts (\\Draft) {14+}\r\nSubject: d\r\n\r\n\r\n")
    assert reply.startswith(b"x OK [APPENDUID ") and b"+ " not in reply
