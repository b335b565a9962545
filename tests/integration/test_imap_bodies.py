"""Downloading a whole mailbox (`FETCH 1:* (BODY.PEEK[])`, what every client does first) from a real
`twistd mailappliance`, over plain IMAP (bodies sent uncopied with sendmsg, appliance/bulkwrite.py),
STARTTLS, IMAPS and COMPRESS=DEFLATE, for Maildir and mbox: every message comes back exactly as it
was delivered, with exact octet counts, big ones (more than a socket buffer holds) included; PEEK
leaves \\Seen alone and BODY[] sets it; a partial BODY[]<a.b> is the right slice.
"""
from __future__ import annotations

import random
import re
import socket
import zlib

import pytest

from appliance.store import maildir as maildir_store, mbox as mbox_store
from tests.integration.harness import DOMAIN, HOSTNAME, Appliance
from tests.integration.test_imap import IMAP, IMAPS

ALICE = f"alice@{DOMAIN}"
PLAIN_LOGIN = {"tls": {"plaintext_auth_networks": "127.0.0.1/32"}}


def corpus() -> list[bytes]:
    """Wire-form messages: small and big (up to 1.5 MB), a `From ` line to quote in mbox, bare CRs."""
    rng = random.Random(14)
    out = []
    for n in range(24):
        size = rng.choice([200, 5_000, 60_000, 300_000, 1_500_000])
        line = ("".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(0, 90)))).encode()
        body = (line + b"\r\n") * (size // (len(line) + 2) + 1)
        if n % 7 == 3:
            body = b"From the start of a line\r\n>From quoted once\r\n" + body
        if n % 11 == 5:
            body = b"a bare \r carriage return\r\n" + body
        out.append(b"From: sender%d@example.org\r\nTo: %s\r\nSubject: message %d\r\n\r\n%s"
                   % (n, ALICE.encode(), n, body))
    return out


@pytest.fixture
def mailbox(make_appliance, storage) -> tuple[Appliance, list[bytes]]:
    """An appliance whose INBOX holds the corpus, written as another delivery program would."""
    app = make_appliance(storage=storage, services=("smtp", "imap", "imaps"), **PLAIN_LOGIN)
    messages = corpus()
    path = app.mailbox_path(ALICE)
    for data in messages:
        if storage == "maildir":
            maildir_store.write(path, data)
        else:
            mbox_store.append(path, data, "someone@outside.example")
    return app, messages


def bodies(data: list) -> list[bytes]:
    return [item[1] for item in data if isinstance(item, tuple)]


def test_plain_download_is_every_message_exactly_and_peek_keeps_unseen(mailbox):
    app, messages = mailbox
    client = IMAP(HOSTNAME, app.ports["imap"], timeout=60)
    client.login(ALICE, app.users["alice"])
    client.select("INBOX")
    typ, data = client.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK" and bodies(data) == messages
    heads = [item[0] for item in data if isinstance(item, tuple)]
    assert heads[0] == b"1 (BODY[] {%d}" % len(messages[0])
    typ, data = client.fetch("1:*", "(FLAGS)")
    assert not any(b"\\Seen" in line for line in data)
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[]<10.20>)")
    assert bodies(data) == [m[10:30] for m in messages]
    typ, data = client.fetch("2:3", "(BODY[])")
    assert bodies(data) == messages[1:3] and all(b"\\Seen" in item[0] + b"".join(
        x for x in data if isinstance(x, bytes)) for item in data if isinstance(item, tuple))
    typ, data = client.fetch("1:*", "(FLAGS)")
    assert [b"\\Seen" in line for line in data] == [n in (1, 2) for n in range(len(messages))]
    client.logout()


@pytest.mark.parametrize("how", ["starttls", "imaps"])
def test_download_over_tls_is_every_message_exactly(mailbox, how):
    app, messages = mailbox
    if how == "imaps":
        client: IMAP = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=60)
    else:
        client = IMAP(HOSTNAME, app.ports["imap"], timeout=60)
        client.starttls(ssl_context=app.tls_context())
    client.login(ALICE, app.users["alice"])
    client.select("INBOX", readonly=True)
    typ, data = client.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK" and bodies(data) == messages
    client.logout()


class Deflated:
    """A minimal IMAP client after `COMPRESS DEFLATE` (RFC 4978): raw deflate both ways."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.buffer = b""

    def send(self, line: bytes) -> None:
        self.sock.sendall(self.out.compress(line) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, end: bytes) -> bytes:
        """Everything the server sends up to and including the line that starts with `end`."""
        for _ in range(100_000):
            at = self.buffer.find(b"\r\n" + end)
            if at >= 0 and self.buffer.find(b"\r\n", at + 2) >= 0:
                stop = self.buffer.index(b"\r\n", at + 2) + 2
                reply, self.buffer = self.buffer[:stop], self.buffer[stop:]
                return reply
            chunk = self.sock.recv(1 << 16)
            assert chunk, "connection closed"
            self.buffer += self.inflate.decompress(chunk)
        raise AssertionError("no end")


def literals(reply: bytes) -> list[bytes]:
    """The literal octets of each `* n FETCH (BODY[] {size}` in order, cut by their announced size."""
    out, at = [], 0
    pattern = re.compile(rb"\* \d+ FETCH \(BODY\[\] \{(\d+)\}\r\n")
    while match := pattern.search(reply, at):
        size = int(match.group(1))
        out.append(reply[match.end():match.end() + size])
        at = match.end() + size
        assert reply[at:at + 3] == b")\r\n"
    return out


def test_download_under_compress_is_every_message_exactly(mailbox):
    app, messages = mailbox
    sock = socket.create_connection(("127.0.0.1", app.ports["imap"]), timeout=60)
    greeting = sock.recv(4096)
    assert greeting.startswith(b"* OK")
    sock.sendall(b"a LOGIN %s %s\r\nb SELECT INBOX\r\n" % (ALICE.encode(), app.users["alice"].encode()))
    received = b""
    while b"b OK" not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    sock.sendall(b"c COMPRESS DEFLATE\r\n")
    received = b""
    while not received.endswith(b"\r\n") or b"c OK" not in received:
        received += sock.recv(4096)
    client = Deflated(sock)
    client.send(b"d FETCH 1:* (BODY.PEEK[])\r\n")
    reply = client.until(b"d ")
    assert reply.endswith(b"d OK FETCH completed\r\n") and literals(b"\r\n" + reply) == messages
    sock.close()
