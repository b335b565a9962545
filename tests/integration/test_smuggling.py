"""Byte-level attacks over raw sockets: SMTP smuggling with odd end-of-data sequences, and
STARTTLS command injection (CVE-2011-0411)."""
from __future__ import annotations

import email
import socket
import ssl

import pytest

from tests.integration.harness import DOMAIN, HOSTNAME, Appliance, make_message, wait_for

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SMUGGLED = (b"MAIL FROM:<evil@outside.example>\r\nRCPT TO:<" + BOB.encode() + b">\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil payload\r\n")


class RawSMTP:
    """Just enough of an SMTP client to send exact bytes and read whole (multi-line) replies."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, list[bytes]]:
        lines = [self._line()]
        while lines[-1][3:4] == b"-":
            lines.append(self._line())
        return int(lines[-1][:3]), lines

    def command(self, line: bytes) -> tuple[int, list[bytes]]:
        self.send(line + b"\r\n")
        return self.reply()

    def replies_until_close(self) -> list[int]:
        codes = []
        try:
            while True:
                codes.append(self.reply()[0])
        except (EOFError, OSError):
            return codes

    def close(self) -> None:
        self.sock.close()


def subjects(appliance: Appliance, user: str) -> list[str]:
    return [email.message_from_bytes(raw)["Subject"] for raw in appliance.messages(user)]


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n"], ids=["LF.LF", "CR.CR", "LF.CRLF"])
def test_odd_end_of_data_does_not_end_the_message(appliance, fake_end):
    client = RawSMTP(appliance.ports["smtp"])
    try:
        assert client.reply()[0] == 220
        assert client.command(b"EHLO client.example.test")[0] == 250
        assert client.command(b"MAIL FROM:<someone@outside.example>")[0] == 250
        assert client.command(b"RCPT TO:<" + ALICE.encode() + b">")[0] == 250
        assert client.command(b"DATA")[0] == 354
        client.send(b"Subject: smuggling\r\n\r\nbefore" + fake_end + SMUGGLED + b".\r\nQUIT\r\n")
        codes = client.replies_until_close()
    finally:
        client.close()

    assert 354 not in codes, f"a smuggled DATA was accepted: replies {codes}"
    assert codes, "no reply at all to the end of DATA"
    if codes[0] == 250:                       # accepted as ONE message, the smuggled text inside it
        [raw] = wait_for(lambda: appliance.messages(ALICE), timeout=15)
        assert b"evil@outside.example" in raw and b"evil payload" in raw
    else:                                     # or refused outright
        assert 500 <= codes[0] < 600, codes
    with appliance.smtp() as sentinel:
        sentinel.sendmail("someone@outside.example", [BOB], make_message("sentinel", to=BOB))
    wait_for(lambda: "sentinel" in subjects(appliance, BOB), timeout=15)
    assert subjects(appliance, BOB) == ["sentinel"]
    assert len(appliance.messages(ALICE)) == (1 if codes[0] == 250 else 0)


@pytest.mark.parametrize("service", ["smtp", "submission"])
def test_commands_sent_before_the_tls_handshake_are_not_run_after_it(appliance, service):
    client = RawSMTP(appliance.ports[service])
    try:
        assert client.reply()[0] == 220
        assert client.command(b"EHLO client.example.test")[0] == 250
        client.send(b"STARTTLS\r\nRSET\r\n")
        code, lines = client.reply()
        if code != 220:                       # refusing pipelined STARTTLS outright is safe too
            assert 400 <= code < 600, lines
            return
        assert client.buffer == b"", f"plaintext bytes after 220: {client.buffer!r}"
        client.sock = appliance.tls_context().wrap_socket(client.sock, server_hostname=HOSTNAME)
        code, lines = client.command(b"EHLO client.example.test")
    finally:
        client.close()
    assert code == 250
    assert len(lines) > 1 and HOSTNAME.encode() in lines[0], \
        f"first reply over TLS is not EHLO's (the injected RSET ran?): {lines}"
