"""An in-process SMTP session (bytes over StringTransport, a task.Clock) with a pipeline of checks.

The checks' unit tests drive the real ApplianceSMTP through it: `rig.send(b"EHLO x\\r\\n")`
returns the reply lines, `rig.clock.advance(s)` moves time, `rig.queue.items` holds what was
queued, and `rig.log` the `check` log lines.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from appliance import address
from appliance.config import ChecksSection, LimitsSection, TLSSection
from appliance.filters.pipeline import DataStage, Pipeline
from appliance.intake import Intake, RecipientResolver
from appliance.smtp.mx import MXPolicy
from appliance.smtp.server import SMTPFactory
from tests.unit.test_smtp_server import FakeDirectory, FakeQueue

NO_CHECKS = ChecksSection(pregreet="off")


class LogLines:
    """The mail log lines written while it is open (`with LogLines() as log:`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _observe(self, event: dict) -> None:
        if event.get("log_namespace") == "mail":
            self.lines.append(event.get("log_format", "").replace("{{", "{").replace("}}", "}"))

    def __enter__(self) -> "LogLines":
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def matching(self, start: str) -> list[str]:
        return [line for line in self.lines if line.startswith(start)]


class CheckRig:
    """An MX session from `peer` whose factory runs `checks` (and the data stage through intake)."""

    def __init__(self, checks: list[Any], peer: str = "192.0.2.9", settings: ChecksSection = NO_CHECKS,
                 trusted: str = "", clock: task.Clock | None = None, connect: bool = True, signer: Any = None,
                 **limits: Any) -> None:
        self.directory = FakeDirectory()
        self.queue = FakeQueue()
        self.clock = clock or task.Clock()
        self.pipeline = Pipeline(checks)
        resolver = RecipientResolver(self.directory, None, ("example.test",))
        intake = Intake(self.queue, "mail.example.test", resolver, clock=self.clock,
                        checks=[DataStage(self.pipeline)], signer=signer)
        self.factory = SMTPFactory(
            policy=MXPolicy(resolver, address.parse_networks(trusted)), intake=intake, directory=self.directory,
            login=None, hostname="mail.example.test", domains=("example.test",), limits=LimitsSection(**limits),
            tls=None, tls_settings=TLSSection("", ""), implicit_tls=False, clock=self.clock,
            checks=self.pipeline, checks_settings=settings)
        self.peer = peer
        self.greeting: list[bytes] = []
        if connect:
            self.connect()

    def connect(self) -> list[bytes]:
        self.proto = self.factory.buildProtocol(None)
        family = IPv6Address if ":" in self.peer else IPv4Address
        self.transport = StringTransport(peerAddress=family("TCP", self.peer, 4321))
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()
        return self.greeting

    def send(self, data: bytes) -> list[bytes]:
        self.proto.dataReceived(data)
        return self.take()

    def take(self) -> list[bytes]:
        out = self.transport.value().split(b"\r\n")[:-1]
        self.transport.clear()
        return out

    def close(self) -> None:
        self.proto.connectionLost(None)

    def mail(self, sender: str = "x@remote.test", rcpts: tuple[str, ...] = ("alice@example.test",),
             body: bytes = b"Subject: hi\r\n\r\nbody\r\n", helo: str = "client.test") -> list[bytes]:
        """A whole transaction; the reply lines."""
        lines = [f"EHLO {helo}".encode(), f"MAIL FROM:<{sender}>".encode()]
        lines += [f"RCPT TO:<{rcpt}>".encode() for rcpt in rcpts]
        out = self.send(b"\r\n".join(lines) + b"\r\n")
        if not any(line.startswith(b"250 2.1.5") for line in out):
            return out
        return out + self.send(b"DATA\r\n" + body.replace(b"\r\n.", b"\r\n..") + b".\r\n")


def settings(**changes: Any) -> ChecksSection:
    return replace(NO_CHECKS, **changes)


def codes(lines: list[bytes]) -> list[bytes]:
    """Final reply codes only (multi-line replies count once)."""
    return [line[:3] for line in lines if line[3:4] == b" "]
