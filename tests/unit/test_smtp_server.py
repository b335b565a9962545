"""The SMTP protocol driven as bytes over StringTransport: ordering, DATA framing, limits, AUTH."""
from __future__ import annotations

import base64

import pytest
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from appliance import address
from appliance.config import LimitsSection, TLSSection
from appliance.errors import DirectoryUnavailable, QueueWriteError
from appliance.interfaces import UserRecord
from appliance.intake import Intake, RecipientResolver
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.smtp.mx import MXPolicy
from appliance.smtp.server import SMTPFactory, unstuff
from appliance.smtp.submission import SubmissionPolicy

ALICE = UserRecord("alice@example.test", frozenset({"alice@example.test", "a@example.test"}))


class FakeDirectory:
    supports_shared_secrets = False

    def __init__(self) -> None:
        self.users = {"alice@example.test": ALICE, "a@example.test": ALICE}
        self.down = False
        self.pending: defer.Deferred | None = None

    def lookup(self, addr: str) -> defer.Deferred:
        if self.down:
            return defer.fail(DirectoryUnavailable("down"))
        if self.pending is not None:
            return self.pending
        return defer.succeed(self.users.get(address.normalise(addr)))


class FakeChecker:
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def requestAvatarId(self, creds):
        if creds.username == b"alice@example.test" and creds.checkPassword(b"secret"):
            return defer.succeed(ALICE)
        return defer.fail(UnauthorizedLogin())


class FakeQueue:
    def __init__(self) -> None:
        self.items: list = []
        self.hold: defer.Deferred | None = None
        self.fail = False

    def put(self, envelope, message):
        if self.fail:
            return defer.fail(QueueWriteError("disk full"))
        self.items.append((envelope, message))
        return self.hold if self.hold is not None else defer.succeed(None)


class Rig:
    def __init__(self, kind: str = "mx", peer: str = "192.0.2.9", plaintext_ok: str = "", **limits) -> None:
        self.directory = FakeDirectory()
        self.queue = FakeQueue()
        self.clock = task.Clock()
        self.throttle = AuthThrottle(self.clock)
        resolver = RecipientResolver(self.directory, None, ("example.test",))
        if kind == "mx":
            policy = MXPolicy(resolver, address.parse_networks("127.0.0.1/32"))
        else:
            policy = SubmissionPolicy("submission", resolver)
        self.factory = SMTPFactory(
            policy=policy, intake=Intake(self.queue, "mail.example.test", resolver, clock=self.clock),
            directory=self.directory,
            login=Login(Portal(MailRealm(store=None), [FakeChecker()]), self.throttle, self.clock),
            hostname="mail.example.test",
            domains=("example.test",), limits=LimitsSection(**limits),
            tls=None, tls_settings=TLSSection("", "", plaintext_auth_networks=address.parse_networks(plaintext_ok)),
            implicit_tls=False, clock=self.clock)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 4321))
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()

    def send(self, data: bytes) -> list[bytes]:
        self.proto.dataReceived(data)
        return self.take()

    def take(self) -> list[bytes]:
        out = self.transport.value().split(b"\r\n")[:-1]
        self.transport.clear()
        return out

    def close(self) -> None:
        self.proto.connectionLost(None)


def codes(lines: list[bytes]) -> list[bytes]:
    """Final reply codes only (multi-line replies count once)."""
    return [line[:3] for line in lines if line[3:4] == b" "]


def test_greeting_names_host():
    rig = Rig()
    assert rig.greeting == [b"220 mail.example.test ESMTP mailappliance"]


def test_pipelined_transaction_delivers_one_message():
    rig = Rig()
    out = rig.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                   b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert codes(out) == [b"250", b"250", b"250", b"354", b"250", b"221"]
    assert out[-2].startswith(b"250 2.0.0 Ok: queued as ")
    (envelope, message), = rig.queue.items
    assert envelope.sender == "x@remote.test"
    assert [r.address for r in envelope.recipients] == ["alice@example.test"]
    assert message.startswith(b"Received: from client.test ([192.0.2.9])\r\n\tby mail.example.test")
    assert message.endswith(b"Subject: hi\r\n\r\nbody\r\n")


def test_ehlo_advertises_extensions_but_no_auth_on_mx():
    rig = Rig()
    out = rig.send(b"EHLO c\r\n")
    text = b"\n".join(out)
    for ext in (b"PIPELINING", b"SIZE 26214400", b"8BITMIME", b"ENHANCEDSTATUSCODES"):
        assert ext in text
    assert b"AUTH" not in text


def test_replies_stay_in_order_while_a_lookup_is_pending():
    rig = Rig()
    rig.send(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\n")
    rig.directory.pending = defer.Deferred()
    out = rig.send(b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert out == []                           # DATA waits for RCPT's answer
    pending, rig.directory.pending = rig.directory.pending, None
    pending.callback(ALICE)
    assert codes(rig.take()) == [b"250", b"354"]


def test_unknown_user_550_and_relay_denied():
    rig = Rig()
    out = rig.send(b"HELO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<nobody@example.test>\r\n"
                   b"RCPT TO:<someone@elsewhere.test>\r\n")
    assert out[2].startswith(b"550 5.1.1")
    assert out[3].startswith(b"554 5.7.1")


def test_directory_down_is_temporary():
    rig = Rig()
    rig.directory.down = True
    out = rig.send(b"HELO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert out[2].startswith(b"451 4.4.3")


def test_queue_failure_is_451_and_nothing_promised():
    rig = Rig()
    rig.queue.fail = True
    out = rig.send(b"HELO c\r\nMAIL FROM:<x@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert out[-1].startswith(b"451 4.3.0")


def test_250_waits_for_the_queue():
    rig = Rig()
    rig.queue.hold = defer.Deferred()
    out = rig.send(b"HELO c\r\nMAIL FROM:<x@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert codes(out) == [b"250", b"250", b"250", b"354"]
    rig.queue.hold.callback(None)
    assert codes(rig.take()) == [b"250", b"250"]


@pytest.mark.parametrize("sneaky", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"])
def test_only_crlf_dot_crlf_ends_data(sneaky):
    rig = Rig()
    rig.send(b"HELO c\r\nMAIL FROM:<x@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    out = rig.send(b"Subject: a\r\n\r\nfirst" + sneaky + b"MAIL FROM:<evil@r.test>\r\n")
    assert out == [] and rig.queue.items == []
    out = rig.send(b"tail\r\n.\r\n")
    assert codes(out) == [b"250"]
    (_, message), = rig.queue.items
    assert b"MAIL FROM:<evil@r.test>" in message
    assert message.count(b"\n") == message.count(b"\r\n")


def test_data_split_across_chunks_and_dot_unstuffing():
    rig = Rig()
    rig.send(b"HELO c\r\nMAIL FROM:<x@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    payload = b"..leading dot\r\nmiddle\r\n...\r\nend\r\n.\r\n"
    for i in range(len(payload)):
        rig.proto.dataReceived(payload[i:i + 1])
    assert codes(rig.take()) == [b"250"]
    body = rig.queue.items[0][1].split(b"\r\n", 3)[3]
    assert body.endswith(b".leading dot\r\nmiddle\r\n..\r\nend\r\n")


def test_empty_message_and_leading_dot_line():
    assert unstuff(b"") == b""
    assert unstuff(b"..x\r\n") == b".x\r\n"
    assert unstuff(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n"


def test_size_declared_and_actual():
    rig = Rig(max_message_size=100)
    out = rig.send(b"EHLO c\r\nMAIL FROM:<x@r.test> SIZE=5000\r\n")
    assert out[-1].startswith(b"552 5.3.4")
    rig.send(b"MAIL FROM:<x@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    out = rig.send(b"x" * 3000 + b"\r\n" + b"y" * 3000 + b"\r\n.\r\n")
    assert out[-1].startswith(b"552 5.3.4")
    assert rig.queue.items == []


def test_overlong_command_line_is_refused_not_fatal():
    rig = Rig()
    out = rig.send(b"HELO " + b"a" * 5000 + b"\r\nNOOP\r\n")
    assert out[0].startswith(b"500 5.5.2") and out[-1].startswith(b"250")


def test_too_many_errors_closes_with_421():
    rig = Rig(max_errors=3)
    out = rig.send(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    assert out[-1].startswith(b"421 4.7.0")
    assert rig.transport.disconnecting


def test_nul_in_command_and_in_message():
    rig = Rig()
    assert rig.send(b"HE\0LO c\r\n")[0].startswith(b"500 5.5.2")
    rig.send(b"HELO c\r\nMAIL FROM:<x@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert rig.send(b"a\0b\r\n.\r\n")[-1].startswith(b"554 5.6.0")


def test_vrfy_reveals_nothing_expn_refused():
    rig = Rig()
    assert rig.send(b"VRFY alice\r\n")[0].startswith(b"252")
    assert rig.send(b"VRFY nobody\r\n")[0].startswith(b"252")
    assert rig.send(b"EXPN staff\r\n")[0].startswith(b"502")


def test_sequence_errors():
    rig = Rig()
    assert rig.send(b"MAIL FROM:<a@b.test>\r\n")[0].startswith(b"503")
    rig.send(b"HELO c\r\n")
    assert rig.send(b"RCPT TO:<alice@example.test>\r\n")[0].startswith(b"503")
    assert rig.send(b"DATA\r\n")[0].startswith(b"503")


def test_postmaster_without_domain_is_accepted_as_ours():
    rig = Rig()
    rig.directory.users["postmaster@example.test"] = UserRecord("postmaster@example.test")
    out = rig.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n")
    assert codes(out) == [b"250", b"250", b"250"]


# ---- submission -------------------------------------------------------------------------------
def plain(user: bytes, pw: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + pw)


def test_auth_not_offered_or_accepted_in_cleartext():
    rig = Rig("submission")
    out = rig.send(b"EHLO c\r\n")
    assert not any(b"AUTH" in line for line in out)
    assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")[0].startswith(b"530 5.7.0")


def test_submission_requires_auth_then_owned_sender():
    rig = Rig("submission", plaintext_ok="192.0.2.0/24")
    out = rig.send(b"EHLO c\r\n")
    assert b"250 AUTH PLAIN LOGIN" in out
    assert rig.send(b"MAIL FROM:<alice@example.test>\r\n")[0].startswith(b"530 5.7.0")
    assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")[0].startswith(b"235")
    assert rig.send(b"MAIL FROM:<bob@example.test>\r\n")[0].startswith(b"553 5.7.1")
    assert rig.send(b"MAIL FROM:<A@Example.TEST>\r\n")[0].startswith(b"250")
    assert rig.send(b"RCPT TO:<friend@elsewhere.test>\r\n")[0].startswith(b"250")
    out = rig.send(b"DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\n")
    assert out[-1].startswith(b"250")
    envelope, message = rig.queue.items[0]
    assert envelope.protocol == "ESMTPA" and envelope.login == "alice@example.test"
    assert envelope.recipients[0].local is False
    assert b"\r\nMessage-ID: <" in message and b"\r\nDate: " in message


def test_auth_login_and_wrong_password_slowed():
    rig = Rig("submission", plaintext_ok="192.0.2.0/24")
    rig.send(b"EHLO c\r\n")
    assert rig.send(b"AUTH LOGIN\r\n") == [b"334 " + base64.b64encode(b"Username:")]
    assert rig.send(base64.b64encode(b"alice@example.test") + b"\r\n") == [b"334 " + base64.b64encode(b"Password:")]
    assert rig.send(base64.b64encode(b"wrong") + b"\r\n")[0].startswith(b"535 5.7.8")
    for _ in range(5):          # [logins] failures_per_address, then the first throttled slot at once
        assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"bad") + b"\r\n")[0].startswith(b"535")
    assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"bad") + b"\r\nNOOP\r\n") == []
    rig.clock.advance(1)        # the attempt waited for its slot, and NOOP behind it
    assert codes(rig.take()) == [b"535", b"250"]
    assert rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n") == []
    rig.clock.advance(2)        # the next slot, twice as far
    assert rig.take()[0].startswith(b"235")


def test_auth_garbage_is_a_syntax_error():
    rig = Rig("submission", plaintext_ok="192.0.2.0/24")
    rig.send(b"EHLO c\r\n")
    assert rig.send(b"AUTH PLAIN !!!\r\n")[0].startswith(b"501")
    assert rig.send(b"AUTH PLAIN " + base64.b64encode(b"no-nul") + b"\r\n")[0].startswith(b"501")
    assert rig.send(b"AUTH XOAUTH9\r\n")[0].startswith(b"504")
    assert rig.send(b"AUTH LOGIN\r\n*\r\n")[-1].startswith(b"501")


def test_user_may_send_as_an_alias_that_points_only_at_them(tmp_path):
    from appliance import aliases as aliasesmod
    path = tmp_path / "aliases"
    path.write_text("contact: alice\nstaff: alice, bob@example.test\n")
    rig = Rig("submission", plaintext_ok="192.0.2.0/24")
    rig.factory.policy.resolver.aliases = aliasesmod.AliasResolver(str(path), ("example.test",))
    rig.send(b"EHLO c\r\nAUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")
    assert rig.send(b"MAIL FROM:<contact@example.test>\r\n")[0].startswith(b"250")
    rig.send(b"RSET\r\n")
    assert rig.send(b"MAIL FROM:<staff@example.test>\r\n")[0].startswith(b"553 5.7.1")


def test_fired_reads_a_fired_deferred_and_takes_over_its_failure():
    """server.fired: the RCPT fast path answers at once from a Deferred that has fired; one still
    waiting (an LDAP lookup) is left alone, its result going down its chain as before."""
    from twisted.python.failure import Failure
    from appliance.smtp import server as smtp_server
    assert smtp_server.fired(defer.succeed(["alice"])) == ["alice"]
    failed = smtp_server.fired(defer.fail(ValueError("no")))
    assert isinstance(failed, Failure) and failed.check(ValueError)
    waiting: defer.Deferred = defer.Deferred()
    assert smtp_server.fired(waiting) is smtp_server.PENDING
    results: list[object] = []
    waiting.addCallback(results.append)
    waiting.callback("later")
    assert results == ["later"]
