"""The one login path: SMTP AUTH, POP3 and IMAP share one realm, one throttle and one audit log.

The same wrong password, unknown user and unreachable directory are tried over all three
protocols against one `appliance.realm.Login`, and each protocol must give DESIGN.md's policy
table answer, with the directory asked once per login and one log line per attempt.
"""
from __future__ import annotations

import base64
import ipaddress
import shlex

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.config import LimitsSection, TLSSection
from appliance.errors import DirectoryUnavailable
from appliance.imap import IMAPFactory
from appliance.inline import InlinePool, InlineReactor
from appliance.interfaces import IDirectory, UserRecord
from appliance.pop3 import POP3Factory
from appliance.realm import make_login
from appliance.intake import Intake, RecipientResolver
from appliance.smtp.server import SMTPFactory
from appliance.smtp.submission import SubmissionPolicy
from appliance.store.maildir import MaildirStore

ALICE = UserRecord("alice@example.test", frozenset({"alice@example.test"}))
PASSWORD = "correct horse"
PEER = "192.0.2.7"
TRUSTED = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "10.0.0.0/8"))  # no TLS needed


@implementer(IDirectory)
class Directory:
    """One user; `down` makes every call fail as an unreachable LDAP server would; calls are counted."""

    supports_shared_secrets = False

    def __init__(self) -> None:
        self.down = False
        self.hold = False                # answers wait until release(), as a busy hashing pool would
        self.held: list = []
        self.calls = 0
        self.checks = 0                  # password checks (authenticate): what guessing costs

    def release(self) -> None:
        held, self.held = self.held, []
        for d, answer in held:
            if not d.called:
                d.callback(answer)

    def lookup(self, address: str) -> defer.Deferred:
        self.calls += 1
        if self.down:
            return defer.fail(DirectoryUnavailable("ldap://192.0.2.1 timed out"))
        return defer.succeed(ALICE if address == ALICE.address else None)

    def authenticate(self, login: str, password: str) -> defer.Deferred:
        self.calls += 1
        self.checks += 1
        if self.down:
            return defer.fail(DirectoryUnavailable("ldap://192.0.2.1 timed out"))
        answer = ALICE if (login, password) == (ALICE.address, PASSWORD) else None
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.held.append((d, answer))
            return d
        return defer.succeed(answer)


class Queue:
    def put(self, envelope, message):
        return defer.succeed(None)


class World:
    """Every login listener of one appliance, built over one Login as tap.py builds them."""

    def __init__(self, tmp_path) -> None:
        self.reactor = InlineReactor()
        self.directory = Directory()
        self.clients: list[Client] = []
        store = MaildirStore(str(tmp_path / "{domain}" / "{local}"), self.reactor, InlinePool())
        self.login = make_login(self.directory, store, self.reactor)
        tls = TLSSection("", "", plaintext_auth_networks=TRUSTED)
        common = dict(login=self.login, hostname="mail.example.test", tls=None, tls_settings=tls,
                      reactor=self.reactor, implicit_tls=False)
        resolver = RecipientResolver(self.directory, None, ("example.test",))
        self.factories = {
            "smtp": SMTPFactory(policy=SubmissionPolicy("submission", resolver),
                                intake=Intake(Queue(), "mail.example.test", resolver, clock=self.reactor),
                                directory=self.directory,
                                login=self.login, hostname="mail.example.test", domains=("example.test",),
                                limits=LimitsSection(), tls=None, tls_settings=tls, implicit_tls=False,
                                clock=self.reactor),
            "pop3": POP3Factory(directory=self.directory, **common),
            "imap": IMAPFactory(pool=InlinePool(), **common),
        }

    def connect(self, protocol: str, peer: str = PEER) -> "Client":
        client = Client(self.factories[protocol], peer)
        self.clients.append(client)
        return client


class Client:
    def __init__(self, factory, peer: str = PEER) -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol.makeConnection(self.transport)

    def close(self) -> None:
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def send(self, line: str) -> bytes:
        self.transport.clear()
        self.protocol.dataReceived(line.encode() + b"\r\n")
        return self.transport.value()


def _plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def smtp_login(world: World, login: str, password: str, peer: str = PEER) -> bytes:
    client = world.connect("smtp", peer)
    client.send("EHLO client.example")
    return client.send(f"AUTH PLAIN {_plain(login, password)}")


def pop3_login(world: World, login: str, password: str, peer: str = PEER) -> bytes:
    client = world.connect("pop3", peer)
    client.send(f"USER {login}")
    return client.send(f"PASS {password}")


def imap_login(world: World, login: str, password: str, peer: str = PEER) -> bytes:
    return world.connect("imap", peer).send(f'a1 LOGIN "{login}" "{password}"')


LOGINS = {"smtp": smtp_login, "pop3": pop3_login, "imap": imap_login}
# DESIGN.md, reply and error policy: bad credentials, directory unreachable, success.
ANSWERS = {
    "smtp": (b"535 5.7.8 ", b"454 4.7.0 ", b"235 2.7.0 "),
    "pop3": (b"-ERR [AUTH] ", b"-ERR [SYS/TEMP] ", b"+OK Maildrop has 0 messages"),
    "imap": (b"a1 NO [AUTHENTICATIONFAILED] ", b"a1 NO [UNAVAILABLE] ", b"a1 OK [CAPABILITY "),
}


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


@pytest.fixture
def auth_log():
    """The auth-ok / auth-failed lines the login path writes."""
    lines: list[dict] = []

    def observe(event: dict) -> None:
        words = shlex.split(formatEvent(event))
        if words and words[0] in ("auth-ok", "auth-failed"):
            lines.append({"event": words[0], **dict(word.split("=", 1) for word in words[1:])})
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("protocol", LOGINS)
@pytest.mark.parametrize("login, password", [
    (ALICE.address, "wrong"),                   # wrong password
    ("nobody@example.test", PASSWORD),          # unknown user: the very same answer
])
def test_bad_credentials_get_the_policy_answer(world, auth_log, protocol, login, password):
    reply = LOGINS[protocol](world, login, password)
    assert reply.startswith(ANSWERS[protocol][0]), reply
    assert world.directory.calls == 1
    assert [(e["event"], e["service"], e["reason"]) for e in auth_log] == [
        ("auth-failed", world.factories[protocol].service if protocol != "smtp" else "submission",
         "bad credentials")]


@pytest.mark.parametrize("protocol", LOGINS)
def test_unreachable_directory_is_temporary_never_bad_password(world, auth_log, protocol):
    world.directory.down = True
    reply = LOGINS[protocol](world, ALICE.address, PASSWORD)
    assert reply.startswith(ANSWERS[protocol][1]), reply
    assert b"ldap" not in reply and b"192.0.2.1" not in reply      # the story goes to the log only
    assert [e["reason"] for e in auth_log] == ["directory unavailable"]
    # "could not tell" is no failed guess: it does not count towards the throttle
    assert world.login.throttle.failures("address", PEER) == 0


@pytest.mark.parametrize("protocol", LOGINS)
def test_good_password_asks_the_directory_once(world, auth_log, protocol):
    reply = LOGINS[protocol](world, ALICE.address, PASSWORD)
    assert reply.startswith(ANSWERS[protocol][2]), reply
    assert world.directory.calls == 1
    assert [(e["event"], e["login"]) for e in auth_log] == [("auth-ok", ALICE.address)]


def test_one_throttle_for_every_protocol(world):
    """Guessing over SMTP slows IMAP and POP3 from the same address: there is one throttle."""
    for _ in range(6):                                                    # the limit, then one slot
        assert smtp_login(world, ALICE.address, "guess").startswith(b"535")
    assert imap_login(world, ALICE.address, "guess") == b""               # waits for its slot
    assert pop3_login(world, ALICE.address, "guess") == b""               # waits longer
    assert world.directory.calls == 6                                     # neither was checked yet
    assert smtp_login(world, ALICE.address, PASSWORD, peer=ELSEWHERE).startswith(b"235")   # at once


# -- issue 10, defect 5: throttle BEFORE checking ---------------------------------------------------

ELSEWHERE = "198.51.100.1"          # another /24: the real user at home
THROTTLED = {                       # the temporary refusal, given without a password check
    "smtp": b"454 4.7.0 ",
    "pop3": b"-ERR [SYS/TEMP] ",
    "imap": b"a1 NO [UNAVAILABLE] ",
}


@pytest.mark.parametrize("protocol", LOGINS)
def test_parallel_guesses_are_throttled_before_any_password_check(world, auth_log, protocol):
    """20 wrong guesses on 20 connections from one address, all sent before any answer: only a
    handful reach the directory; the others wait for a slot or get the temporary refusal at once;
    the real user from another address logs in at once meanwhile; a client that leaves while
    waiting costs no check."""
    world.directory.hold = True                   # checks take time, as scrypt in the pool does
    replies = [LOGINS[protocol](world, ALICE.address, f"guess{n}") for n in range(20)]   # SMTP's per-IP cap
    assert world.directory.checks <= 7
    attackers = list(world.clients)
    world.reactor.advance(1)                      # refusals come after a second: no spinning client
    assert world.directory.checks <= 8
    refused = [c for c in attackers if c.transport.value().endswith(b"\n") and
               c.transport.value().splitlines()[-1].startswith(THROTTLED[protocol].strip())]
    assert len(refused) >= 8, [c.transport.value() for c in attackers]
    assert [e.get("reason") for e in auth_log if e.get("reason", "").startswith("throttled")] == ["throttled"]
    world.directory.hold = False
    world.directory.release()
    assert LOGINS[protocol](world, ALICE.address, PASSWORD, peer=ELSEWHERE).startswith(ANSWERS[protocol][2])
    world.clients[-2].close()                     # a waiting guesser leaves
    for _ in range(60):
        world.reactor.advance(1)
    assert world.directory.checks <= 12           # one minute of a 20-connection attack


@pytest.mark.parametrize("protocol", LOGINS)
def test_the_real_user_is_never_locked_out_by_guessing_from_elsewhere(world, protocol):
    for n in range(40):                           # a botnet: one guess per /24, all for alice
        assert LOGINS[protocol](world, ALICE.address, "guess", peer=f"10.{n}.0.1").startswith(
            ANSWERS[protocol][0])
    assert LOGINS[protocol](world, ALICE.address, PASSWORD, peer=ELSEWHERE).startswith(ANSWERS[protocol][2])
