"""LOGIN, AUTHENTICATE PLAIN and STARTTLS: the TLS policy, throttled failures, an unreachable directory."""
from __future__ import annotations

import base64

from tests.unit.imap.harness import LOOPBACK, PLAIN_TOKEN, Session, connect, talk


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
    for n in range(7):
        reply = talk(protocol, transport, b"a%d LOGIN alice@example.test wrong\r\n" % n)
        if n < 6:               # [logins] failures_per_address, then the first throttled slot at once
            assert reply == b"a%d NO [AUTHENTICATIONFAILED] Authentication failed\r\n" % n
    assert reply == b""                                     # the seventh waits for its slot, unchecked
    assert not transport.disconnecting
    reactor.advance(1.0)
    assert transport.value() == b"a6 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


def test_directory_down_is_unavailable_without_details(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path, implicit=True)
    reply = talk(protocol, transport, b"a1 LOGIN down@example.test x\r\n")
    assert reply.startswith(b"a1 NO [UNAVAILABLE] ")
    assert b"ldap" not in reply and b"10.0.0.1" not in reply


def test_authenticate_plain_with_initial_response(reactor, tmp_path):
    protocol, transport = connect(reactor, tmp_path, implicit=True)
    token = base64.b64encode(b"\0alice@example.test\0secret")
    assert talk(protocol, transport, b"a1 AUTHENTICATE PLAIN " + token + b"\r\n").startswith(b"a1 OK")


def test_login_reports_capabilities_without_auth_and_moves_to_authenticated(fresh):
    reply = fresh.cmd(b"a1 LOGIN alice@example.test secret")
    assert reply.startswith(b"a1 OK [CAPABILITY IMAP4rev1 LITERAL+ ") and reply.endswith(b"] Logged in\r\n")
    assert b"AUTH=" not in reply and b"STARTTLS" not in reply
    assert fresh.cmd(b"a2 NAMESPACE").endswith(b"a2 OK NAMESPACE completed\r\n")


def test_login_with_quoted_and_literal_arguments(fresh):
    assert fresh.cmd(b'a1 LOGIN "alice@example.test" {6}') == b"+ Ready for literal data\r\n"
    assert fresh.send(b"secret\r\n").startswith(b"a1 OK [CAPABILITY ")


def test_authenticate_plain_with_continuation(fresh):
    assert fresh.cmd(b"a1 AUTHENTICATE PLAIN") == b"+ \r\n"
    assert fresh.send(PLAIN_TOKEN + b"\r\n").startswith(b"a1 OK [CAPABILITY ")


def test_authenticate_cancelled_is_bad(fresh):
    fresh.cmd(b"a1 AUTHENTICATE PLAIN")
    assert fresh.send(b"*\r\n") == b"a1 BAD Authentication cancelled\r\n"
    assert fresh.alive


def test_authenticate_malformed_response_is_bad(fresh):
    assert fresh.cmd(b"a1 AUTHENTICATE PLAIN !!notbase64") == b"a1 BAD Malformed PLAIN response\r\n"
    assert fresh.alive


def test_authenticate_unknown_mechanism_is_no(fresh):
    assert fresh.cmd(b"a1 AUTHENTICATE CRAM-MD5") == b"a1 NO Unsupported authentication mechanism\r\n"


def test_authenticate_as_someone_else_fails(fresh):
    token = base64.b64encode(b"bob@example.test\0alice@example.test\0secret")
    reply = fresh.cmd(b"a1 AUTHENTICATE PLAIN " + token)
    assert reply == b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


def test_wrong_password_leaves_the_session_unauthenticated(fresh):
    assert fresh.cmd(b"a1 LOGIN alice@example.test wrong").startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    assert fresh.cmd(b"a2 SELECT INBOX") == b"a2 BAD Unsupported command\r\n"
    assert fresh.cmd(b"a3 LOGIN alice@example.test secret").startswith(b"a3 OK")


def test_starttls_over_implicit_tls_is_refused(fresh):
    assert b"STARTTLS" not in fresh.greeting
    assert fresh.cmd(b"a1 STARTTLS") == b"a1 BAD TLS already active\r\n"
    assert fresh.alive


def test_starttls_without_a_certificate_is_refused(reactor, tmp_path):
    session = Session(reactor, tmp_path)
    session.protocol.factory.tls = None
    assert b"STARTTLS" not in session.cmd(b"a0 CAPABILITY")
    assert session.cmd(b"a1 STARTTLS") == b"a1 BAD TLS not available\r\n"
    assert session.alive
