"""Password guessing and abandoned AUTH attempts against a running appliance, over raw sockets.

Shared by tests/integration/test_login_throttle.py and bench/login_attack. Standard library only.
Every client binds its own loopback source address (127.0.0.0/8 is all loopback on Linux), so one
machine can play one address, a /24, or many networks. Every loop is bounded by a count or a deadline.
"""
from __future__ import annotations

import base64
import glob
import re
import selectors
import socket
import time

from tests.integration.harness import Appliance

def plain(login: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode()) + b"\r\n"


def _log_lines(appliance: Appliance):
    """Every line twistd logged, rotated files (twistd.log.1, ...) included: a flood rotates the log."""
    for path in sorted(glob.glob(glob.escape(appliance.log_path) + ".*")) + [appliance.log_path]:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                yield from handle
        except FileNotFoundError:
            continue


def checks_logged(appliance: Appliance) -> int:
    """Password checks the appliance has made so far: auth-ok lines (but those answered from the
    credential cache, `cached=yes`) and 'bad credentials' failures."""
    return sum(1 for line in _log_lines(appliance)
               if (" auth-ok " in line and " cached=yes" not in line) or 'reason="bad credentials"' in line)


def throttled_logged(appliance: Appliance) -> int:
    """Attempts refused as throttled; one line may stand for several ('throttled, N more not logged')."""
    total = 0
    for line in _log_lines(appliance):
        if " auth-failed " in line and "reason=throttled" in line or 'reason="throttled, ' in line:
            more = re.search(r'throttled, (\d+) more', line)
            total += 1 + (int(more.group(1)) if more else 0)
    return total


class Session:
    """One SMTP connection from `source`, greeted and past EHLO, reading replies without blocking."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        self.read_reply()                                   # 220
        self.sock.sendall(b"EHLO attacker.example\r\n")
        self.read_reply()                                   # 250 ...
        self.sock.setblocking(False)

    def read_reply(self) -> bytes:
        """Blocking: the next complete (possibly multiline) reply."""
        while True:
            reply = self.take_reply()
            if reply is not None:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.buffer += data

    def take_reply(self) -> bytes | None:
        """A complete reply already buffered, or None."""
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end < 0:
                return None
            line = self.buffer[start:end]
            if len(line) < 4 or line[3:4] != b"-":
                reply, self.buffer = self.buffer[:end + 2], self.buffer[end + 2:]
                return reply
            start = end + 2

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def open_sessions(port: int, sources: list[str]) -> list[Session]:
    return [Session(port, source) for source in sources]


def guess_until(sessions: list[Session], login: str, deadline: float, keep_guessing: bool = True) -> dict[bytes, int]:
    """Send one wrong guess on every session, then (keep_guessing) a new one on each session as
    soon as it is answered, until `deadline` (time.monotonic()). Returns reply codes seen."""
    codes: dict[bytes, int] = {}
    selector = selectors.DefaultSelector()
    counter = 0
    for session in sessions:
        session.send(plain(login, f"guess-{counter}"))
        counter += 1
        selector.register(session.sock, selectors.EVENT_READ, session)
    try:
        while time.monotonic() < deadline and selector.get_map():
            for key, _ in selector.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                session = key.data
                try:
                    data = session.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(session.sock)
                    continue
                session.buffer += data
                while (reply := session.take_reply()) is not None:
                    code = reply[:3]
                    codes[code] = codes.get(code, 0) + 1
                    if code == b"421":                      # too many errors: the server said goodbye
                        selector.unregister(session.sock)
                        break
                    if keep_guessing:
                        session.send(plain(login, f"guess-{counter}"))
                        counter += 1
    finally:
        selector.close()
    return codes


def abandoned_auth(port: int, login: str, count: int, first_network: int = 1) -> int:
    """`count` AUTH attempts, each from its own /24 (127.N.M.1), whose client leaves at once.

    The sessions are opened first, then every AUTH is sent and every connection closed in one
    quick loop, as a flood does. Returns how many were sent (a refused connection is skipped)."""
    sessions = []
    for n in range(count):
        network = first_network + n
        try:
            sessions.append(Session(port, f"127.{(network >> 8) % 250 + 1}.{network & 255}.1"))
        except OSError:
            continue
    for n, session in enumerate(sessions):
        try:
            session.send(plain(login, f"abandoned-{n}"))
        except OSError:
            pass
    for session in sessions:
        session.close()
    return len(sessions)


def rcpt_latency(port: int, recipient: str, source: str = "127.0.0.1") -> float:
    """Seconds from RCPT TO to its reply, on a fresh session (MAIL already accepted)."""
    session = Session(port, source)
    try:
        session.sock.setblocking(True)
        session.sock.sendall(b"MAIL FROM:<someone@outside.example>\r\n")
        session.read_reply()
        start = time.monotonic()
        session.sock.sendall(f"RCPT TO:<{recipient}>\r\n".encode())
        reply = session.read_reply()
        elapsed = time.monotonic() - start
        if not reply.startswith(b"250"):
            raise AssertionError(f"RCPT refused: {reply!r}")
        return elapsed
    finally:
        session.close()


def login_latency(port: int, login: str, password: str, source: str) -> tuple[bytes, float]:
    """(reply, seconds) of one AUTH PLAIN on a fresh session from `source`."""
    session = Session(port, source)
    try:
        session.sock.setblocking(True)
        start = time.monotonic()
        session.sock.sendall(plain(login, password))
        reply = session.read_reply()
        return reply, time.monotonic() - start
    finally:
        session.close()
