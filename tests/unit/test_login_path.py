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
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from appliance.config import LimitsSection, TLSSection
from appliance.errors import DirectoryUnavailable
from appliance.imap import IMAPFactory
from appliance.inline import InlinePool, InlineReactor
from appliance.interfaces import IDirectory, UserRecord
from appliance.pop3 import POP3Factory
from appliance.realm import AuthThrottle, make_login
from appliance.intake import Intake, RecipientResolver
from appliance.smtp.server import SMTPFactory
from appliance.smtp.submission import SubmissionPolicy
from appliance.store.maildir import MaildirStore

ALICE = UserRecord("alice@example.test", frozenset({"alice@example.test"}))
PASSWORD = "correct horse"
PEER = "192.0.2.7"
TRUSTED = (ipaddress.ip_network("192.0.2.0/24"),)       # passwords allowed without TLS from here


@implementer(IDirectory)
class Directory:
    """One user; `down` makes every call fail as an unreachable LDAP server would; calls are counted."""

    supports_shared_secrets = False

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def lookup(self, address: str) -> defer.Deferred:
        self.calls += 1
        if self.down:
            return defer.fail(DirectoryUnavailable("ldap://192.0.2.1 timed out"))
        return defer.succeed(ALICE if address == ALICE.address else None)

    def authenticate(self, login: str, password: str) -> defer.Deferred:
        self.calls += 1
        if self.down:
            return defer.fail(DirectoryUnavailable("ldap://192.0.2.1 timed out"))
        return defer.succeed(ALICE if (login, password) == (ALICE.address, PASSWORD) else None)


class Queue:
    def put(self, envelope, message):
        return defer.succeed(None)


class World:
    """Every login listener of one appliance, built over one Login as tap.py builds them."""

    def __init__(self, tmp_path) -> None:
        self.reactor = InlineReactor()
        self.directory = Directory()
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

    def connect(self, protocol: str) -> "Client":
        return Client(self.factories[protocol])


class Client:
    def __init__(self, factory) -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", PEER, 40000))
        self.protocol.makeConnection(self.transport)

    def send(self, line: str) -> bytes:
        self.transport.clear()
        self.protocol.dataReceived(line.encode() + b"\r\n")
        return self.transport.value()


def _plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def smtp_login(world: World, login: str, password: str) -> bytes:
    client = world.connect("smtp")
    client.send("EHLO client.example")
    return client.send(f"AUTH PLAIN {_plain(login, password)}")


def pop3_login(world: World, login: str, password: str) -> bytes:
    client = world.connect("pop3")
    client.send(f"USER {login}")
    return client.send(f"PASS {password}")


def imap_login(world: World, login: str, password: str) -> bytes:
    return world.connect("imap").send(f'a1 LOGIN "{login}" "{password}"')


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
    assert world.login.throttle.delay(PEER) == 0


@pytest.mark.parametrize("protocol", LOGINS)
def test_good_password_asks_the_directory_once(world, auth_log, protocol):
    reply = LOGINS[protocol](world, ALICE.address, PASSWORD)
    assert reply.startswith(ANSWERS[protocol][2]), reply
    assert world.directory.calls == 1
    assert [(e["event"], e["login"]) for e in auth_log] == [("auth-ok", ALICE.address)]


def test_one_throttle_for_every_protocol(world):
    """Guessing over SMTP slows IMAP and POP3 from the same address: there is one throttle."""
    for _ in range(AuthThrottle.FREE_FAILURES):
        assert smtp_login(world, ALICE.address, "guess").startswith(b"535")
    assert imap_login(world, ALICE.address, "guess") == b""               # held back
    world.reactor.advance(AuthThrottle.FIRST_DELAY)
    assert pop3_login(world, ALICE.address, "guess") == b""               # held back longer
    assert world.login.throttle.delay(PEER) == 2 * AuthThrottle.FIRST_DELAY
    assert world.login.throttle.delay("198.51.100.1") == 0                # another address: at once
