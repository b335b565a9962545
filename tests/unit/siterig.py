"""A real twisted.web Site on a loopback port, served by a private reactor in a thread.

Why a private reactor: tests then talk HTTP with plain blocking clients (urllib, raw sockets),
hypothesis included, and the global reactor stays untouched for the trial-based tests that run
in the same process (a reactor cannot be restarted once stopped).
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.selectreactor import SelectReactor
from twisted.web.resource import Resource
from twisted.web.server import Site

TIMEOUT = 10.0


@contextmanager
def serving(root: Resource) -> Iterator[int]:
    """Serve `root` on 127.0.0.1; yields the port. The reactor stops and its thread ends on exit."""
    reactor = SelectReactor()
    port = reactor.listenTCP(0, Site(root, reactor=reactor), interface="127.0.0.1")
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    try:
        yield port.getHost().port
    finally:
        reactor.callFromThread(port.stopListening)
        reactor.callFromThread(reactor.stop)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the test reactor did not stop"


def raw(port: int, request: bytes) -> bytes:
    """Send `request` as is and read the whole answer (the server closes: `Connection: close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    return int(answer.split(b" ", 2)[1])
