"""The IMAP test harness: a session over StringTransport on a temporary Maildir, driven as bytes."""
from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from appliance.config import TLSSection
from appliance.errors import DirectoryUnavailable
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.inline import InlinePool as SyncPool, InlineReactor as SyncReactor
from appliance.interfaces import UserRecord
from appliance.realm import AuthThrottle, Login, MailRealm
# The store the sessions read (the one place the IMAP tests name the mailbox layer).
from appliance.store.maildir import MaildirStore, write

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
USER = b"alice@example.test"
PASSWORD = b"secret"
PLAIN_TOKEN = base64.b64encode(b"\0" + USER + b"\0" + PASSWORD)

class Checker:
    """alice@example.test / secret; the login `down@example.test` finds the directory unreachable."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        if credentials.username == b"down@example.test":
            return defer.fail(DirectoryUnavailable("ldap://10.0.0.1 timed out"))
        if (credentials.username, credentials.password) == (USER, PASSWORD):
            return defer.succeed(UserRecord("alice@example.test"))
        return defer.fail(UnauthorizedLogin("no"))


class FakeTLS:
    available = True


@implementer(ITLSTransport)
class TLSTransport(StringTransport):
    def __init__(self, peer_host: str):
        super().__init__(peerAddress=IPv4Address("TCP", peer_host, 40000))
        self.tls_started = False

    def startTLS(self, context):
        self.tls_started = True


def connect(reactor, tmp_path, peer="192.0.2.1", plaintext=(), implicit=False):
    """A new connection: (protocol, transport), the greeting already in transport.value()."""
    store = MaildirStore(str(tmp_path / "mail" / "{domain}" / "{local}"), reactor, SyncPool())
    pool = SyncPool()
    login = Login(Portal(MailRealm(store), [Checker()]), AuthThrottle(reactor), reactor)
    factory = IMAPFactory(login=login, hostname="mail.example.test", tls=FakeTLS(),
                          tls_settings=TLSSection("", "", plaintext_auth_networks=plaintext),
                          implicit_tls=implicit, reactor=reactor, pool=pool,
                          watcher=FolderWatcher(reactor, pool))
    protocol = factory.buildProtocol(None)
    transport = TLSTransport(peer)
    protocol.makeConnection(transport)
    return protocol, transport


def talk(protocol, transport, data: bytes) -> bytes:
    """Send `data` and return everything the server wrote in answer."""
    transport.clear()
    protocol.dataReceived(data)
    return transport.value()


class Session:
    """One client: `cmd(b"a1 NOOP")` sends a line and returns the server's answer."""

    def __init__(self, reactor, tmp_path: Path, **options):
        self.reactor = reactor
        self.maildir = tmp_path / "mail" / "example.test" / "alice"
        self.protocol, self.transport = connect(reactor, tmp_path, **options)
        self.greeting = self.transport.value()

    def send(self, data: bytes) -> bytes:
        return talk(self.protocol, self.transport, data)

    def cmd(self, line: bytes) -> bytes:
        return self.send(line + b"\r\n")

    def ok(self, line: bytes) -> bytes:
        """Send a command that must succeed; return its answer."""
        reply = self.cmd(line)
        tag = line.split(b" ", 1)[0]
        assert tagged(reply, tag).startswith(tag + b" OK"), reply
        return reply

    def deliver(self, message: bytes) -> None:
        """A message arriving in the INBOX by delivery, as another program would write it."""
        write(str(self.maildir), message)

    def login(self) -> "Session":
        self.ok(b"a0 LOGIN " + USER + b" " + PASSWORD)
        return self

    def select(self, name: bytes = b"INBOX") -> bytes:
        return self.ok(b"s0 SELECT " + name)

    @property
    def alive(self) -> bool:
        """Whether the session still answers: a NOOP gets its OK."""
        return self.cmd(b"zz NOOP").endswith(b"zz OK NOOP completed\r\n")


def other_session(reactor, tmp_path: Path) -> Session:
    """A second session of alice over the same store, INBOX selected: the other client of a change."""
    other = Session(reactor, tmp_path, implicit=True).login()
    other.select()
    return other


def tagged(reply: bytes, tag: bytes) -> bytes:
    """The tagged status line answering `tag` in `reply`, or b"" when there is none."""
    for line in reply.split(b"\r\n"):
        if line.startswith(tag + b" "):
            return line
    return b""


def untagged(reply: bytes) -> list[bytes]:
    """The untagged lines of `reply` (literals inside FETCH responses stay on their first line)."""
    return [line for line in reply.split(b"\r\n") if line.startswith(b"* ")]


def messages(count: int) -> list[bytes]:
    return [b"Subject: m%d\r\nFrom: bob@example.test\r\n\r\nbody %d\r\n" % (n, n) for n in range(count)]
