"""An IMAP server on a real loopback port that can be restarted, and RFC 7162 helpers for imaplib.

Unlike live.py's one reactor for the whole test process, each server here has its own reactor
(and thread pool) in a thread, so that a test can stop it and start another over the same files:
blocking imaplib clients run in the test's thread, several at once; the global reactor stays
untouched. `restart()` stops it and starts a new one over the same files, with the
process-wide folder registry emptied, as a restarted daemon would find them.
"""
from __future__ import annotations

import gc
import imaplib
import re
import threading
from pathlib import Path

from twisted.cred.portal import Portal
from twisted.internet.selectreactor import SelectReactor
from twisted.python.threadpool import ThreadPool

from appliance.config import TLSSection
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.realm import AuthThrottle, Login, MailRealm
from appliance.store import folder as folder_registry
from appliance.store.maildir import MaildirStore, write as maildir_write
from appliance.store.mbox import MboxStore, append as mbox_append
from tests.unit.imap.harness import LOOPBACK, PASSWORD, USER, Checker

TIMEOUT = 10.0


class LiveServer:
    """`alice@example.test` / `secret` over Maildir or mbox under `tmp_path`; `client()` logs a new imaplib in."""

    def __init__(self, tmp_path: Path, storage: str):
        self.storage = storage
        self.template = str(tmp_path / "mail" / "{domain}" / "{local}")
        self.mailbox = str(tmp_path / "mail" / "example.test" / "alice")
        self.clients: list[imaplib.IMAP4] = []
        self._start()

    def _start(self) -> None:
        self.reactor = SelectReactor()
        self.pool = ThreadPool(2, 4, "imap-test")
        self.pool.start()
        store_class = MaildirStore if self.storage == "maildir" else MboxStore
        store = store_class(self.template, self.reactor, self.pool)
        login = Login(Portal(MailRealm(store), [Checker()]), AuthThrottle(self.reactor), self.reactor)
        factory = IMAPFactory(login=login, tls=None, tls_settings=TLSSection("", "", plaintext_auth_networks=LOOPBACK),
                              implicit_tls=False, reactor=self.reactor, pool=self.pool,
                              watcher=FolderWatcher(self.reactor, self.pool))
        self.listener = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listener.getHost().port
        self.thread = threading.Thread(target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
        self.thread.start()

    def client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=TIMEOUT)
        client.login(USER.decode(), PASSWORD.decode())
        self.clients.append(client)
        return client

    def deliver(self, message: bytes) -> None:
        """A message arriving by SMTP delivery (another writer than IMAP)."""
        if self.storage == "maildir":
            maildir_write(self.mailbox, message)
        else:
            mbox_append(self.mailbox, message, "bob@example.test")

    def stop(self) -> None:
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

    def restart(self) -> None:
        """A new server process over the same files: nothing of the old one's memory survives."""
        self.stop()
        gc.collect()
        with folder_registry._registry_guard:
            folder_registry._registry.clear()
        self._start()


# ---- speaking RFC 7162 with imaplib, which does not know it --------------------------------------------
class Answer:
    """One command's answer: the tagged status and text, and the untagged responses by kind."""

    def __init__(self, status: str, text: bytes, untagged: dict[str, list]):
        self.status, self.text, self.untagged = status, text, untagged


def run(client: imaplib.IMAP4, name: str, args: str = "") -> Answer:
    """Send `name args` as is (imaplib knows nothing of RFC 7162 syntax) and collect the answer."""
    client.untagged_responses.clear()
    state = client.state
    if name == "ENABLE":
        client.state = "AUTH"           # imaplib allows ENABLE before SELECT only; RFC 5161 servers need not check
    tag = client._command(name, *([args] if args else []))
    client.state = state
    try:
        status, data = client._command_complete(name, tag)
    except client.error as exc:                     # BAD
        return Answer("BAD", str(exc).encode(), {})
    if name in ("SELECT", "EXAMINE") and status == "OK":
        client.state = "SELECTED"
    return Answer(status, data[-1] or b"", {key: list(value) for key, value in client.untagged_responses.items()})


_FETCH = re.compile(rb"^(\d+) \((.*)\)$", re.S)


def fetches(answer: Answer) -> dict[int, dict]:
    """uid -> {"seq", "flags", "modseq"} of the untagged FETCH responses; \\Recent is left out of the flags
    (which session claimed it depends on who selected first)."""
    out: dict[int, dict[str, object]] = {}
    for data in answer.untagged.get("FETCH", []):
        if isinstance(data, tuple):
            data = data[0]
        match = _FETCH.match(data)
        assert match, data
        body = match.group(2)
        uid = re.search(rb"UID (\d+)", body)
        modseq = re.search(rb"MODSEQ \((\d+)\)", body)
        flags = re.search(rb"FLAGS \(([^)]*)\)", body)
        assert uid, data
        out[int(uid.group(1))] = {"seq": int(match.group(1)),
                                  "modseq": int(modseq.group(1)) if modseq else None,
                                  "flags": set(flags.group(1).decode().split()) - {"\\Recent"} if flags else None}
    return out


def number(answer: Answer, code: str) -> int:
    """The number of a response code such as HIGHESTMODSEQ, UIDVALIDITY."""
    values = answer.untagged.get(code)
    assert values, (code, answer.untagged)
    return int(values[-1])


def uid_set(text: bytes) -> set[int]:
    out: set[int] = set()
    for item in text.split(b","):
        low, _, high = item.partition(b":")
        out.update(range(int(low), int(high or low) + 1))
    return out


def vanished(answer: Answer, earlier: bool) -> set[int]:
    """The UIDs of the VANISHED responses of one kind (with or without `(EARLIER)`)."""
    out: set[int] = set()
    for data in answer.untagged.get("VANISHED", []):
        if data.startswith(b"(EARLIER) ") == earlier:
            out |= uid_set(data.removeprefix(b"(EARLIER) "))
    return out
