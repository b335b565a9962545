"""An IMAP server on a loopback port, served by a private reactor in a thread, for imaplib clients.

Why: the LIST tests talk to the server the way a client does, with Python's imaplib over a
real socket (literals, continuation requests and all), over a Maildir or an mbox store. A private
reactor keeps the global one untouched for the trial-based tests in the same process (see
tests/unit/siterig.py); a real thread pool does the disk work, as in the daemon.
"""
from __future__ import annotations

import imaplib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.cred.portal import Portal
from twisted.internet.selectreactor import SelectReactor
from twisted.python.threadpool import ThreadPool

from appliance.config import TLSSection
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore
from tests.unit.imap.harness import LOOPBACK, PASSWORD, USER, Checker, FakeTLS

TIMEOUT = 10.0
STORES = {"maildir": (MaildirStore, "{domain}/{local}"), "mbox": (MboxStore, "{domain}/{local}")}


class Server:
    """Where the test server listens, and where it keeps the mail."""

    def __init__(self, port: int, root: Path):
        self.port = port
        self.root = root

    def client(self) -> imaplib.IMAP4:
        """A new imaplib connection, logged in as alice."""
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=TIMEOUT)
        client.login(USER.decode(), PASSWORD.decode())
        return client


@contextmanager
def serving(tmp_path: Path, store_format: str) -> Iterator[Server]:
    """An IMAP listener (plaintext LOGIN allowed from loopback) over a fresh store of `store_format`."""
    reactor = SelectReactor()
    pool = ThreadPool(1, 2, "test-imap-disk")
    pool.start()
    store_class, template = STORES[store_format]
    store = store_class(str(tmp_path / "mail" / template), reactor, pool)
    login = Login(Portal(MailRealm(store), [Checker()]), AuthThrottle(reactor), reactor)
    factory = IMAPFactory(login=login, tls=FakeTLS(), tls_settings=TLSSection("", "", plaintext_auth_networks=LOOPBACK),
                          implicit_tls=False, reactor=reactor, pool=pool, watcher=FolderWatcher(reactor, pool))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    try:
        yield Server(port.getHost().port, tmp_path / "mail")
    finally:
        reactor.callFromThread(port.stopListening)
        reactor.callFromThread(reactor.stop)
        thread.join(TIMEOUT)
        pool.stop()
        assert not thread.is_alive(), "the test reactor did not stop"


class RawClient:
    """Commands sent byte for byte, for what imaplib cannot send: LITERAL+, literals where it would quote."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = self.sock.makefile("rb")
        self.reader.readline()
        self.command([b"a0 LOGIN " + USER + b" " + PASSWORD + b"\r\n"])

    def command(self, parts: list[bytes]) -> bytes:
        """Send a command in `parts`, each but the last ending in a literal's announcement; its whole answer.

        After a synchronising literal's announcement (`{5}`) the server's continuation request is
        awaited, as RFC 3501 7.5 requires of a client; after `{5+}` (RFC 7888) the octets follow at once.
        """
        tag = parts[0].split(b" ", 1)[0]
        answer = []
        for part in parts[:-1]:
            self.sock.sendall(part)
            if not part.endswith(b"+}\r\n"):
                line = self.reader.readline()
                answer.append(line)
                if not line.startswith(b"+"):
                    return b"".join(answer)
        self.sock.sendall(parts[-1])
        for _ in range(10000):
            line = self.reader.readline()
            answer.append(line)
            if not line or line.startswith(tag + b" "):
                break
        return b"".join(answer)

    def close(self) -> None:
        self.command([b"zz LOGOUT\r\n"])
        self.sock.close()
