"""The IMAP server on a real loopback socket, for Python's imaplib: a reactor of its own in a thread.

The unit harness (harness.py) drives a session over a StringTransport; these tests want what a
client library sees through TCP (continuation requests, literals split across packets, pipelined
LITERAL+ octets). The reactor is a private instance (the global one belongs to trial's tests),
started once per test process and never stopped (a reactor cannot restart); each test gets its
own listener, store and thread pool, torn down after it.
"""
from __future__ import annotations

import imaplib
import socket
import threading
from pathlib import Path

from twisted.cred.portal import Portal
from twisted.internet import epollreactor
from twisted.python.threadpool import ThreadPool

from appliance.config import TLSSection
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.store.maildir import MaildirStore
from appliance.store.mbox import MboxStore
from tests.unit.imap.harness import LOOPBACK, PASSWORD, USER, Checker

FORMATS = {"maildir": MaildirStore, "mbox": MboxStore}
_reactor = None
_reactor_guard = threading.Lock()


def reactor():
    """The private reactor, running in a daemon thread."""
    global _reactor
    with _reactor_guard:
        if _reactor is None:
            _reactor = epollreactor.EPollReactor()
            threading.Thread(target=_reactor.run, kwargs={"installSignalHandlers": False}, daemon=True,
                             name="imap-live-reactor").start()
        return _reactor


def in_reactor(fn, *args, timeout: float = 10):
    """Run `fn(*args)` in the reactor thread and return its result."""
    done = threading.Event()
    box: dict = {}

    def call():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:        # handed to the test thread
            box["error"] = exc
        done.set()

    reactor().callFromThread(call)
    if not done.wait(timeout):
        raise TimeoutError("the reactor did not answer")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class LiveServer:
    """One listener on 127.0.0.1 over a fresh store of the given format."""

    def __init__(self, tmp_path: Path, mailbox_format: str = "maildir", max_message_size: int = 1 << 20):
        self.reactor = reactor()
        self.pool = ThreadPool(1, 4, name="imap-live-disk")
        self.pool.start()
        store = FORMATS[mailbox_format](str(tmp_path / "mail" / "{domain}" / "{local}"), self.reactor, self.pool)
        login = Login(Portal(MailRealm(store), [Checker()]), AuthThrottle(self.reactor), self.reactor)
        self.factory = IMAPFactory(login=login, hostname="mail.example.test", tls=None,
                                   tls_settings=TLSSection("", "", plaintext_auth_networks=LOOPBACK),
                                   implicit_tls=False, reactor=self.reactor, pool=self.pool,
                                   watcher=FolderWatcher(self.reactor, self.pool), max_message_size=max_message_size)
        self.port = in_reactor(lambda: self.reactor.listenTCP(0, self.factory, interface="127.0.0.1"))

    def client(self, login: bool = True) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port.getHost().port, timeout=10)
        # imaplib writes a literal's octets and its line end apart: without this, Nagle's algorithm
        # and delayed ACKs hold each APPEND for 40 ms.
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if login:
            client.login(USER.decode(), PASSWORD.decode())
        return client

    def close(self) -> None:
        in_reactor(self.port.stopListening)
        self.pool.stop()


def command(client: imaplib.IMAP4, data: bytes) -> list[bytes]:
    """Send raw bytes (a whole command, literals included) and read lines up to the tagged answer.

    For what imaplib cannot say itself: LITERAL+ literals, pipelined octets. `data`'s tag is its
    first word; continuation requests are answered by nothing (the caller sends what follows).
    """
    tag = data.split(b" ", 1)[0]
    client.send(data)
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


def sync_literal(client: imaplib.IMAP4, before: bytes, literal: bytes, after: bytes) -> list[bytes]:
    """`before {n}`, wait for the server's "+", then the octets and `after`: a synchronising literal."""
    tag = before.split(b" ", 1)[0]
    client.send(before + b"{%d}\r\n" % len(literal))
    go_ahead = client.readline()
    if not go_ahead.startswith(b"+"):
        return [go_ahead] + ([] if go_ahead.startswith(tag + b" ") else read_until_tagged(client, tag))
    client.send(literal + after + b"\r\n")
    return read_until_tagged(client, tag)
