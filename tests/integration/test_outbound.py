"""Outbound delivery against a real DNS server and real SMTP peers on loopback.

MX routing resolves through `twistd dns` (dnsserver.py); the receiving MX hosts are Postfix's
smtp-sink, each on its own 127.0.0.x address and the same port; STARTTLS and the smarthost
(verified TLS and AUTH PLAIN) are exercised against a small Twisted ESMTP server in this process.
"""
from __future__ import annotations

import datetime
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.cred import checkers, portal
from twisted.internet import defer, reactor, ssl, task
from twisted.mail import smtp
from twisted.mail.imap4 import PLAINCredentials
from twisted.names import client
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from appliance.couriers.mxroute import MXRouter
from appliance.couriers.outbound import OutboundCourier
from appliance.couriers.sessions import Limits
from appliance.couriers.smtpclient import Timeouts
from appliance.envelope import Envelope, Recipient, new_id
from appliance.errors import PermanentFailure, TemporaryFailure
from tests.integration.dnsserver import DNSServer, a, mx
from tests.integration.harness import free_port, require_program

HOSTNAME = "mail.example.test"
MX1, MX2, IMPLICIT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
ZONES = {
    "example.org": [mx("example.org", 10, "mx1.example.org"), mx("example.org", 20, "mx2.example.org"),
                    a("mx1.example.org", MX1), a("mx2.example.org", MX2)],
    "implicit.test": [a("implicit.test", IMPLICIT)],
    "nullmx.test": [mx("nullmx.test", 0, "")],
}
TIMEOUTS = Timeouts(connect=5, greeting=10, command=10, data_init=10, data_block=10, data_end=10)
MESSAGE = b"From: alice@example.test\r\nSubject: outbound test\r\n\r\nHello from the appliance.\r\n.dot line\r\n"


@pytest.fixture(scope="class")
def dns_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    server = DNSServer(str(tmp_path_factory.mktemp("dns")), ZONES)
    server.start()
    request.cls.dns = server
    yield server
    server.stop()


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class SMTPSink:
    """Postfix's smtp-sink on one address; each mail transaction it takes is dumped to a file."""

    def __init__(self, root: str, address: str, port: int, *options: str) -> None:
        self.folder = os.path.join(root, f"sink-{address}")
        os.makedirs(self.folder)
        command = [require_program("smtp-sink"), "-h", f"sink-{address}", "-d", f"{self.folder}/%M.", *options]
        if os.geteuid() == 0:                      # smtp-sink refuses to keep root privileges
            os.chmod(self.folder, 0o777)
            command[1:1] = ["-u", "nobody"]
        self.log = open(self.folder + ".log", "wb")
        self.process = subprocess.Popen([*command, f"{address}:{port}", "10"], stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _accepts(address, port):
            assert self.process.poll() is None and time.monotonic() < deadline, "smtp-sink did not start"
            time.sleep(0.05)

    def transactions(self) -> list[str]:
        """The dumped transactions (X-Rcpt-Args lines, then the message).

        smtp-sink creates a dump before it has written it: an empty one, or one not ending its
        last line, is still being written and is not counted yet.
        """
        texts = []
        for path in sorted(glob.glob(os.path.join(self.folder, "*"))):
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            if text.endswith("\n"):
                texts.append(text)
        return texts

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        self.log.close()


# -- an in-process ESMTP peer for STARTTLS and the smarthost ------------------------------------

@implementer(smtp.IMessage)
class _Message:
    def __init__(self, peer: "ESMTPPeer", protocol: smtp.ESMTP, user: smtp.User) -> None:
        self.peer, self.protocol, self.user, self.lines = peer, protocol, user, []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        self.peer.received.append({"rcpt": str(self.user.dest), "body": b"\n".join(self.lines),
                                   "tls": self.protocol.startedTLS, "login": self.peer.logins.get(self.protocol),
                                   "connection": self.protocol.number})
        if self.peer.delay:                        # a slow disk: lets deliveries overlap
            return task.deferLater(reactor, self.peer.delay, lambda: b"ok")
        return defer.succeed(b"ok")

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, peer: "ESMTPPeer", protocol: smtp.ESMTP) -> None:
        self.peer, self.protocol = peer, protocol

    def receivedHeader(self, helo, origin, recipients) -> bytes:
        return b"Received: by test peer"

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        refusal = self.peer.refuse.get(str(user.dest))
        if refusal:
            raise smtp.SMTPServerError(*refusal)
        return lambda: _Message(self.peer, self.protocol, user)


class _PeerESMTP(smtp.ESMTP):
    """Twisted's ESMTP that tells its factory when it comes and goes, and on request hangs up a
    session at its second MAIL, as a server does with a connection it has timed out."""

    number = 0
    mails = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.opened(self)

    def connectionLost(self, reason) -> None:
        self.factory.open_now -= 1
        super().connectionLost(reason)

    def do_MAIL(self, rest):
        self.mails += 1
        if self.mails > 1 and self.factory.on_reuse == "drop":
            self.transport.loseConnection()
            return None
        if self.mails > 1 and self.factory.on_reuse == "421":
            self.sendCode(421, b"4.4.2 idle too long, closing")
            self.transport.loseConnection()
            return None
        return super().do_MAIL(rest)


class ESMTPPeer(smtp.SMTPFactory):
    """Twisted's ESMTP with STARTTLS; with `users`, AUTH PLAIN is required before MAIL."""

    def __init__(self, tls_options, users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.tls_options = tls_options
        self.users = users
        self.received: list[dict] = []
        self.logins: dict[smtp.ESMTP, str] = {}
        self.connections = self.open_now = self.most_open = 0
        self.delay = 0.0                           # seconds before the reply to the final "."
        self.refuse: dict[str, tuple[int, str]] = {}   # recipient -> (code, text) for its RCPT
        self.on_reuse = ""                         # "drop" or "421": hang up at a session's second MAIL
        self.protocols: list[smtp.ESMTP] = []

    def opened(self, protocol: "_PeerESMTP") -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        protocol.number = self.connections
        self.protocols.append(protocol)

    def buildProtocol(self, addr):
        protocol = _PeerESMTP({b"PLAIN": PLAINCredentials} if self.users else {}, self.tls_options)
        protocol.factory = self
        protocol.host = b"peer.example.org"
        if self.users:
            protocol.portal = portal.Portal(_Realm(self, protocol),
                                            [checkers.InMemoryUsernamePasswordDatabaseDontUse(**self.users)])
        else:
            protocol.delivery = _Delivery(self, protocol)
        return protocol


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, peer: ESMTPPeer, protocol: smtp.ESMTP) -> None:
        self.peer, self.protocol = peer, protocol

    def requestAvatar(self, avatar_id, mind, *interfaces):
        self.peer.logins[self.protocol] = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
        return smtp.IMessageDelivery, _Delivery(self.peer, self.protocol), lambda: None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(hostname: str) -> tuple[ssl.Certificate, ssl.CertificateOptions]:
    """A throwaway CA and a server certificate for `hostname` signed by it: (CA, server TLS options)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def build(subject, issuer, public_key, signer, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca = build(_name("Test CA"), _name("Test CA"), ca_key.public_key(), ca_key,
               [x509.BasicConstraints(ca=True, path_length=None)])
    server = build(_name(hostname), _name("Test CA"), key.public_key(), ca_key,
                   [x509.SubjectAlternativeName([x509.DNSName(hostname)])])
    pem = server.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return (ssl.Certificate.loadPEM(ca.public_bytes(serialization.Encoding.PEM)),
            ssl.PrivateCertificate.loadPEM(pem).options())


# -- the tests ----------------------------------------------------------------------------------

class _OutboundCase(TestCase):
    """A courier, its router asking the class's DNS server, and the peers a test starts."""

    dns: DNSServer

    def setUp(self) -> None:
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="outbound-")
        os.chmod(self.root, 0o755)                 # smtp-sink may run as nobody and write below it
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        resolver = client.Resolver(servers=[("127.0.0.1", self.dns.port)])
        self.router = MXRouter(resolver, HOSTNAME, clock=reactor)
        self.courier = self.make_courier()

    def make_courier(self, router: MXRouter | None = None, **options) -> OutboundCourier:
        """A courier whose kept sessions are closed (QUIT) when the test ends."""
        options.setdefault("port", self.port)
        courier = OutboundCourier(router or self.router, reactor, HOSTNAME, timeouts=TIMEOUTS, **options)
        self.addCleanup(courier.close)
        return courier

    def sink(self, address: str, *options: str) -> SMTPSink:
        sink = SMTPSink(self.root, address, self.port, *options)
        self.addCleanup(sink.stop)
        return sink

    def listen(self, address: str, factory: ESMTPPeer, port: int | None = None) -> None:
        listening = reactor.listenTCP(port or self.port, factory, interface=address)
        self.addCleanup(listening.stopListening)

    async def deliver(self, *recipients: str, courier: OutboundCourier | None = None) -> list:
        """Hand every recipient to the courier in the same turn, as the queue does; outcomes in order."""
        envelope = Envelope(new_id(), "alice@example.test", [Recipient(r, local=False) for r in recipients])
        courier = courier or self.courier
        attempts = [courier.deliver(envelope, recipient, MESSAGE) for recipient in envelope.recipients]
        results = await defer.DeferredList(attempts, consumeErrors=True)
        return [value if ok else value.value for ok, value in results]


    def smarthost_courier(self, trust: ssl.Certificate, password: str = "relay-secret", **options) -> OutboundCourier:
        return self.make_courier(smarthost=("localhost", self.port), smarthost_auth=("relay", password),
                                 client_tls_options=ssl.optionsForClientTLS("localhost", trustRoot=trust), **options)


@pytest.mark.usefixtures("dns_server")
class OutboundDeliveryTests(_OutboundCase):

    async def test_mail_goes_to_the_most_preferred_mx(self):
        first, second = self.sink(MX1), self.sink(MX2)
        [outcome] = await self.deliver("bob@example.org")
        assert outcome.startswith(f"mx1.example.org[{MX1}]:{self.port} 250 ")
        [transaction] = first.transactions()
        assert "X-Rcpt-Args: <bob@example.org>" in transaction
        assert "\n.dot line\n" in transaction, "the peer got the message back unstuffed"
        assert second.transactions() == []

    async def test_refused_connection_moves_on_to_the_next_mx(self):
        second = self.sink(MX2)
        [outcome] = await self.deliver("bob@example.org")
        assert outcome.startswith(f"mx2.example.org[{MX2}]:{self.port} 250 ")
        assert len(second.transactions()) == 1

    async def test_4xx_moves_on_to_the_next_mx(self):
        first = self.sink(MX1, "-r", "RCPT", "-b", "450 4.2.0 mailbox busy")
        second = self.sink(MX2)
        [outcome] = await self.deliver("bob@example.org")
        assert outcome.startswith(f"mx2.example.org[{MX2}]:{self.port} 250 ")
        assert (first.transactions(), len(second.transactions())) == ([], 1)

    async def test_every_mx_failing_is_temporary_with_the_last_error(self):
        self.sink(MX1, "-r", "RCPT", "-b", "450 4.2.0 mailbox busy")
        self.sink(MX2, "-r", "RCPT", "-b", "451 4.3.0 disk full")
        [outcome] = await self.deliver("bob@example.org")
        assert isinstance(outcome, TemporaryFailure)
        assert str(outcome) == f"4.3.0 mx2.example.org[{MX2}]:{self.port} said: 451 4.3.0 disk full"

    async def test_5xx_is_permanent_with_the_remote_reply_and_no_other_mx_is_tried(self):
        self.sink(MX1, "-f", "RCPT", "-B", "550 5.1.1 no such user here")
        second = self.sink(MX2)
        [outcome] = await self.deliver("nobody@example.org")
        assert isinstance(outcome, PermanentFailure)
        assert str(outcome) == f"5.1.1 mx1.example.org[{MX1}]:{self.port} said: 550 5.1.1 no such user here"
        assert second.transactions() == []

    async def test_recipients_of_one_message_share_one_transaction(self):
        first = self.sink(MX1)
        outcomes = await self.deliver("bob@example.org", "carol@example.org", "dave@example.org")
        assert all(isinstance(outcome, str) and " 250 " in outcome for outcome in outcomes), outcomes
        [transaction] = first.transactions()
        assert transaction.count("X-Rcpt-Args:") == 3

    async def test_domain_without_mx_gets_mail_at_its_address(self):
        sink = self.sink(IMPLICIT)
        [outcome] = await self.deliver("bob@implicit.test")
        assert outcome.startswith(f"implicit.test[{IMPLICIT}]:{self.port} 250 ")
        assert len(sink.transactions()) == 1

    async def test_null_mx_is_permanent(self):
        [outcome] = await self.deliver("bob@nullmx.test")
        assert isinstance(outcome, PermanentFailure)
        assert str(outcome) == "5.1.10 domain nullmx.test does not accept mail (null MX)"

    async def test_unknown_domain_is_permanent(self):
        [outcome] = await self.deliver("bob@nowhere.example.org")
        assert isinstance(outcome, PermanentFailure)
        assert str(outcome).startswith("5.1.2 ")

    async def test_dead_nameserver_is_temporary(self):
        resolver = client.Resolver(servers=[("127.0.0.1", free_port())], timeout=(1,))
        courier = self.make_courier(MXRouter(resolver, HOSTNAME, clock=reactor))
        [outcome] = await self.deliver("bob@example.org", courier=courier)
        assert isinstance(outcome, TemporaryFailure)
        assert str(outcome).startswith("4.4.3 MX lookup for example.org failed")

    async def test_starttls_is_used_when_the_mx_offers_it(self):
        _, server_tls = make_certificates("peer.example.org")     # an MX certificate is not verified
        peer = ESMTPPeer(server_tls)
        self.listen(IMPLICIT, peer)
        [outcome] = await self.deliver("bob@implicit.test")
        assert outcome.startswith(f"implicit.test[{IMPLICIT}]:{self.port} 250 ")
        assert [(m["rcpt"], m["tls"]) for m in peer.received] == [("bob@implicit.test", True)]

    async def test_smarthost_with_verified_tls_and_auth(self):
        ca, server_tls = make_certificates("localhost")
        peer = ESMTPPeer(server_tls, users={"relay": b"relay-secret"})
        self.listen("127.0.0.1", peer)
        outcomes = await self.deliver("bob@example.org", "carol@implicit.test", courier=self.smarthost_courier(ca))
        assert all(outcome.startswith(f"localhost:{self.port} 250 ") for outcome in outcomes), outcomes
        assert sorted((m["rcpt"], m["tls"], m["login"]) for m in peer.received) == [
            ("bob@example.org", True, "relay"), ("carol@implicit.test", True, "relay")]

    async def test_smarthost_with_an_untrusted_certificate_gets_nothing(self):
        other_ca, _ = make_certificates("localhost")
        _, server_tls = make_certificates("localhost")
        peer = ESMTPPeer(server_tls, users={"relay": b"relay-secret"})
        self.listen("127.0.0.1", peer)
        [outcome] = await self.deliver("bob@example.org", courier=self.smarthost_courier(other_ca))
        assert isinstance(outcome, TemporaryFailure)
        assert str(outcome).startswith(f"4.7.5 TLS with localhost:{self.port} failed: "), str(outcome)
        assert "certificate verify failed" in str(outcome)
        assert peer.received == [] and peer.logins == {}

    async def test_smarthost_refusing_our_password_is_temporary(self):
        ca, server_tls = make_certificates("localhost")
        peer = ESMTPPeer(server_tls, users={"relay": b"relay-secret"})
        self.listen("127.0.0.1", peer)
        [outcome] = await self.deliver("bob@example.org", courier=self.smarthost_courier(ca, password="wrong"))
        assert isinstance(outcome, TemporaryFailure)
        assert str(outcome) == f"4.7.0 localhost:{self.port} refused our credentials: 535 Authentication failed"
        assert peer.received == []


# -- sessions kept for the next message, and deliveries in parallel -----------------------------

@pytest.mark.usefixtures("dns_server")
class SessionReuseTests(_OutboundCase):
    """Several messages to one MX host, each its own envelope, as the queue hands them over."""

    def make_peer(self) -> ESMTPPeer:
        peer = ESMTPPeer(None)                     # no STARTTLS: the plain path, every reply visible
        self.listen(IMPLICIT, peer)
        return peer

    async def send_each(self, *recipients: str, courier: OutboundCourier | None = None) -> list:
        """One message per recipient, all handed to the courier at once; their outcomes in order."""
        batches = [self.deliver(rcpt, courier=courier) for rcpt in recipients]
        results = await defer.gatherResults([defer.ensureDeferred(b) for b in batches])
        return [outcome for [outcome] in results]

    async def test_messages_to_one_host_share_one_session(self):
        peer = self.make_peer()
        courier = self.make_courier(limits=Limits(idle_time=60))
        outcomes = [(await self.deliver(f"user{n}@implicit.test", courier=courier))[0] for n in range(4)]
        assert all(outcome.startswith(f"implicit.test[{IMPLICIT}]:{self.port} 250 ") for outcome in outcomes)
        assert [m["rcpt"] for m in peer.received] == [f"user{n}@implicit.test" for n in range(4)]
        assert peer.connections == 1, "four messages, one after another, over one session"

    async def test_without_a_cache_time_each_message_has_its_own_session(self):
        peer = self.make_peer()
        courier = self.make_courier(limits=Limits(idle_time=0))
        for n in range(3):
            await self.deliver(f"user{n}@implicit.test", courier=courier)
        assert (len(peer.received), peer.connections) == (3, 3)

    async def test_a_session_carries_at_most_the_reuse_limit(self):
        peer = self.make_peer()
        courier = self.make_courier(limits=Limits(idle_time=60, reuse_limit=2))
        for n in range(5):
            await self.deliver(f"user{n}@implicit.test", courier=courier)
        assert [m["connection"] for m in peer.received] == [1, 1, 2, 2, 3]

    async def test_parallel_deliveries_to_one_destination_stay_within_its_limit(self):
        peer = self.make_peer()
        peer.delay = 0.2
        courier = self.make_courier(limits=Limits(destination_concurrency=2, idle_time=60))
        outcomes = await self.send_each(*(f"user{n}@implicit.test" for n in range(6)), courier=courier)
        assert all(" 250 " in outcome for outcome in outcomes), outcomes
        assert peer.most_open == 2, "two at once, never more"

    async def test_deliveries_run_in_parallel_up_to_the_limit(self):
        peer = self.make_peer()
        peer.delay = 0.2
        courier = self.make_courier(limits=Limits(destination_concurrency=3, idle_time=60))
        await self.send_each(*(f"user{n}@implicit.test" for n in range(6)), courier=courier)
        assert len(peer.received) == 6
        assert (peer.most_open, peer.connections) == (3, 3), "three sessions, each carrying two messages"

    async def reuse_a_session_the_peer_hangs_up(self, how: str) -> None:
        peer = self.make_peer()
        peer.on_reuse = how
        courier = self.make_courier(limits=Limits(idle_time=60))
        first = await self.deliver("bob@implicit.test", courier=courier)
        second = await self.deliver("carol@implicit.test", courier=courier)
        delivered = f"implicit.test[{IMPLICIT}]:{self.port} 250 "
        assert first[0].startswith(delivered) and second[0].startswith(delivered), (first, second)
        assert [(m["rcpt"], m["connection"]) for m in peer.received] == [
            ("bob@implicit.test", 1), ("carol@implicit.test", 2)], "carol went on a fresh session, once"

    async def test_a_session_dropped_by_the_peer_is_replaced_without_a_failure(self):
        await self.reuse_a_session_the_peer_hangs_up("drop")

    async def test_a_session_closed_with_421_is_replaced_without_a_failure(self):
        await self.reuse_a_session_the_peer_hangs_up("421")

    async def test_a_session_the_peer_closes_while_kept_is_not_offered_again(self):
        peer = self.make_peer()
        courier = self.make_courier(limits=Limits(idle_time=60))
        await self.deliver("bob@implicit.test", courier=courier)
        assert courier.sessions.idle == 1
        for protocol in peer.protocols:            # the peer times the kept session out
            protocol.transport.loseConnection()
        await task.deferLater(reactor, 0.1, lambda: None)
        assert courier.sessions.idle == 0
        [outcome] = await self.deliver("carol@implicit.test", courier=courier)
        assert " 250 " in outcome and peer.connections == 2

    async def test_a_4xx_on_a_kept_session_is_temporary_as_before_and_the_session_goes_on(self):
        peer = self.make_peer()
        peer.refuse["busy@implicit.test"] = (450, "4.2.0 mailbox busy")
        courier = self.make_courier(limits=Limits(idle_time=60))
        [first] = await self.deliver("bob@implicit.test", courier=courier)
        [busy] = await self.deliver("busy@implicit.test", courier=courier)
        [third] = await self.deliver("carol@implicit.test", courier=courier)
        assert isinstance(busy, TemporaryFailure)
        assert str(busy) == f"4.2.0 implicit.test[{IMPLICIT}]:{self.port} said: 450 4.2.0 mailbox busy"
        assert " 250 " in first and " 250 " in third
        assert [(m["rcpt"], m["connection"]) for m in peer.received] == [
            ("bob@implicit.test", 1), ("carol@implicit.test", 1)], "RSET after the refusal, then the next message"

    async def test_a_5xx_on_a_kept_session_bounces_as_before(self):
        peer = self.make_peer()
        peer.refuse["nobody@implicit.test"] = (550, "5.1.1 no such user")
        courier = self.make_courier(limits=Limits(idle_time=60))
        await self.deliver("bob@implicit.test", courier=courier)
        [outcome] = await self.deliver("nobody@implicit.test", courier=courier)
        assert isinstance(outcome, PermanentFailure)
        assert str(outcome) == f"5.1.1 implicit.test[{IMPLICIT}]:{self.port} said: 550 5.1.1 no such user"
        assert peer.connections == 1

    async def test_the_smarthost_session_is_authenticated_once_for_several_messages(self):
        ca, server_tls = make_certificates("localhost")
        peer = ESMTPPeer(server_tls, users={"relay": b"relay-secret"})
        self.listen("127.0.0.1", peer)
        courier = self.smarthost_courier(ca, limits=Limits(idle_time=60))
        for rcpt in ("bob@example.org", "carol@implicit.test", "dave@example.org"):
            [outcome] = await self.deliver(rcpt, courier=courier)
            assert outcome.startswith(f"localhost:{self.port} 250 "), outcome
        assert [(m["tls"], m["login"], m["connection"]) for m in peer.received] == [(True, "relay", 1)] * 3

    async def test_closing_the_courier_ends_every_kept_session(self):
        peer = self.make_peer()
        courier = self.make_courier(limits=Limits(idle_time=60))
        await self.deliver("bob@implicit.test", courier=courier)
        assert peer.open_now == 1
        await courier.close()
        await task.deferLater(reactor, 0.05, lambda: None)
        assert peer.open_now == 0
