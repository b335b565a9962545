"""The IMAP server on a real loopback socket, for Python's imaplib, and raw commands for what imaplib cannot say.

The unit harness (harness.py) drives a session over a StringTransport; these tests want what a
client library sees through TCP (continuation requests, literals split across packets, pipelined
LITERAL+ octets, several sessions at once). Each server has a reactor of its own in a thread (the
global one belongs to trial's tests) and a thread pool for the disk work, as in the daemon; a
reactor cannot run twice, so `restart()` builds a new one over the same files.
"""
from __future__ import annotations

import gc
import imaplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from twisted.cred.portal import Portal
from twisted.internet.selectreactor import SelectReactor
from twisted.python.threadpool import ThreadPool

from appliance.config import TLSSection
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.store import folder as folder_registry
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore
from tests.unit.imap.harness import LOOPBACK, PASSWORD, USER, Checker

FORMATS = {"maildir": MaildirStore, "mbox": MboxStore}
TIMEOUT = 10.0


class LiveServer:
    """alice@example.test / secret over a Maildir or mbox under `root`, on a port of 127.0.0.1.

    No STARTTLS (no TLS context); LOGIN is allowed in plaintext because the client is on loopback
    (plaintext_auth_networks), as an operator's local clients would be. `stop()` ends the clients
    it handed out, the listener, the reactor's thread and the pool.
    """

    def __init__(self, root: Path, storage: str = "maildir"):
        self.storage = storage
        self.template = str(root / "mail" / "{domain}" / "{local}")
        self.mailbox = str(root / "mail" / "example.test" / "alice")
        self.clients: list[imaplib.IMAP4] = []
        self._start()

    def _start(self) -> None:
        self.reactor = SelectReactor()
        self.pool = ThreadPool(1, 4, "imap-live-disk")
        self.pool.start()
        self.store = FORMATS[self.storage](self.template, self.reactor, self.pool)
        login = Login(Portal(MailRealm(self.store), [Checker()]), AuthThrottle(self.reactor), self.reactor)
        factory = IMAPFactory(login=login, tls=None, tls_settings=TLSSection("", "", plaintext_auth_networks=LOOPBACK),
                              implicit_tls=False, reactor=self.reactor, pool=self.pool,
                              watcher=FolderWatcher(self.reactor, self.pool))
        self.listener = self.reactor.listenTCP(0, factory, interface="127.0.0.1")   # not running yet: safe here
        self.port = self.listener.getHost().port
        self.thread = threading.Thread(target=self.reactor.run, kwargs={"installSignalHandlers": False},
                                       daemon=True, name="imap-live-reactor")
        self.thread.start()

    def client(self, login: bool = True) -> imaplib.IMAP4:
        """A new imaplib connection (logged in as alice unless `login` is false), closed by `stop()`."""
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=TIMEOUT)
        self.clients.append(client)
        # imaplib writes a literal's octets and its line end apart: without this, Nagle's algorithm
        # and delayed ACKs hold each APPEND for 40 ms.
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if login:
            client.login(USER.decode(), PASSWORD.decode())
        return client

    def deliver(self, message: bytes) -> None:
        """A message arriving by delivery (another writer than IMAP), through the store's own writer."""
        self.store.write(self.mailbox, message, "bob@example.test")

    def stop(self) -> None:
        """End it all and check it ended: the whole unit run is one process, so nothing may outlive a test."""
        for client in self.clients:
            try:
                client.shutdown()
            except OSError:
                pass
        self.clients = []
        self.reactor.callFromThread(self.listener.stopListening)
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the test reactor did not stop"
        self.pool.stop()
        assert not self.listener.connected, "the listening socket is still open"
        self.reactor.waker.connectionLost(None)         # its wake-up pipe: a reactor never closes it

    def restart(self) -> None:
        """A new server process over the same files: nothing of the old one's memory survives."""
        self.stop()
        gc.collect()
        with folder_registry._registry_guard:
            folder_registry._registry.clear()
        self._start()


def selected_inbox(root: Path, storage: str, mail: list[tuple[str | None, str | None, bytes]]
                   ) -> Iterator[imaplib.IMAP4]:
    """For a fixture: a client with INBOX selected after appending `mail` ((flags, date, message) as
    imaplib.append takes them) and expunging those flagged \\Deleted; the server stops after."""
    server = LiveServer(root, storage)
    try:
        client = server.client()
        for flags, date, message in mail:
            assert client.append("INBOX", flags, date, message)[0] == "OK"
        client.select("INBOX")
        client.expunge()
        yield client
    finally:
        server.stop()


def command(client: imaplib.IMAP4, *parts: bytes) -> list[bytes]:
    """Send a command byte for byte and read its lines up to the tagged answer (its tag: the first word).

    For what imaplib cannot say itself: LITERAL+ literals, pipelined octets, literals where it would
    quote. Each part is one write (so one part pipelines, several arrive apart); each but the last ends
    in a literal's announcement. After a synchronising one (`{5}`) the server's continuation request
    is awaited, as RFC 3501 7.5 requires of a client, and left out of the answer; a refusal instead
    ends the command there. After `{5+}` (RFC 7888) the next part follows at once.
    """
    tag = parts[0].split(b" ", 1)[0]
    for part in parts[:-1]:
        client.send(part)
        if part.endswith(b"+}\r\n"):
            continue
        go_ahead = client.readline()
        if not go_ahead.startswith(b"+"):
            return [go_ahead] + ([] if go_ahead.startswith(tag + b" ") else read_until_tagged(client, tag))
    client.send(parts[-1])
    return read_until_tagged(client, tag)


def read_until_tagged(client: imaplib.IMAP4, tag: bytes) -> list[bytes]:
    lines = []
    for _ in range(100000):
        line = client.readline()
        if not line:
            raise EOFError(b"connection closed after " + b"".join(lines))
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines
    raise AssertionError("no tagged answer")
