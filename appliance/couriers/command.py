"""Delivery to the `|command` and `/file` targets of aliases(5): a child shell, or an mbox append.

Only reached when `[aliases] allow_commands = yes` let such targets into the aliases table.
Commands get what Postfix's local(8) gives them: the message with Return-Path and Delivered-To
on top and LF line ends on standard input, and SENDER/RECIPIENT/LOCAL/DOMAIN in a minimal
environment. Exit 0 is delivered, 75 (EX_TEMPFAIL) is retried, anything else bounces.
"""
from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import shutil
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import maillog
from appliance.aliases import COMMAND
from appliance.couriers.local import trace_headers
from appliance.envelope import Envelope, Recipient
from appliance.errors import PermanentFailure, TemporaryFailure
from appliance.interfaces import ICourier
from appliance.store import mbox

DEFAULT_TIME_LIMIT = 60.0    # seconds a command may run before it is killed and retried later
OUTPUT_LIMIT = 4096          # bytes of stdout+stderr read and kept from a command
LOG_OUTPUT_LIMIT = 1000      # bytes of that output quoted in the log line (one line)
FAILURE_TEXT_LIMIT = 200     # bytes of it carried into the failure, so into the bounce (first line only)
EX_TEMPFAIL = 75             # sysexits.h: "try again later", as sendmail and Postfix read it
SHELL = "/bin/sh"
CHILD_PATH = "/usr/bin:/bin"
UNPRIVILEGED_USER, UNPRIVILEGED_GROUP = "nobody", "nogroup"
# setsid(1) makes the shell a process-group leader, so a timeout kills its children too.
SETSID = shutil.which("setsid", path="/usr/bin:/bin")

Credentials = tuple[int, int] | None   # (uid, gid) for the child; None keeps our own user


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """How one command ended, and what it printed."""

    status: int | None       # exit status; None when a signal ended it
    signal: int | None
    output: bytes            # stdout and stderr as they came, at most the output limit
    timed_out: bool = False

    def first_line(self, limit: int = FAILURE_TEXT_LIMIT) -> str:
        """The first non-empty output line, printable characters only, at most `limit` bytes: the
        bounce goes to an outsider, who must not get a program's output at length."""
        for line in self.output.split(b"\n"):
            text = _one_line(line[:limit * 4].decode("utf-8", "replace"))
            if text:
                return _cut(text, limit)
        return ""

    def logged_output(self, limit: int = LOG_OUTPUT_LIMIT) -> str:
        """The output on one line for the log, at most `limit` bytes."""
        return _cut(_one_line(self.output[:limit * 4].decode("utf-8", "replace")), limit)


def _one_line(text: str) -> str:
    """Whitespace runs become one space; other control characters (escapes, NUL, DEL) go."""
    return " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())


def _cut(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, never splitting a character; "..." marks a cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode("utf-8", "ignore") + "..."


class _CommandProtocol(ProcessProtocol):
    """Feeds the message to the child, keeps a bounded copy of its output, and reports its end."""

    def __init__(self, stdin: bytes, output_limit: int) -> None:
        self._stdin = stdin
        self._limit = output_limit
        self._output = bytearray()
        self._timed_out = False
        self.ended: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._stdin)     # a child that exits unread just closes the pipe
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        room = self._limit - len(self._output)
        if room > 0:
            self._output += data[:room]       # the rest is read and dropped, so the child never blocks

    def kill(self) -> None:
        """Time is up: SIGKILL the shell's whole process group, and stop waiting for its pipes."""
        self._timed_out = True
        pid = self.transport.pid
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:                   # not a group leader (no setsid): the shell alone
                self.transport.signalProcess("KILL")
        for fd in (0, 1, 2):
            self.transport.closeChildFD(fd)   # a grandchild holding a pipe must not hold us

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(CommandResult(status=getattr(reason.value, "exitCode", None),
                                          signal=getattr(reason.value, "signal", None),
                                          output=bytes(self._output), timed_out=self._timed_out))


def run_command(reactor: Any, command: str, stdin: bytes, environment: dict[str, str], *,
                time_limit: float = DEFAULT_TIME_LIMIT, output_limit: int = OUTPUT_LIMIT,
                credentials: Credentials = None) -> Deferred:
    """Deferred[CommandResult]: `/bin/sh -c command` in /, without blocking the reactor."""
    protocol = _CommandProtocol(stdin, output_limit)
    argv = [SHELL, "-c", command]
    if SETSID:
        argv.insert(0, SETSID)
    uid, gid = credentials if credentials is not None else (None, None)
    reactor.spawnProcess(protocol, argv[0], argv, env=environment, path="/", uid=uid, gid=gid)
    timer = reactor.callLater(time_limit, protocol.kill)
    return protocol.ended.addBoth(_cancelled, timer)


def _cancelled(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


def child_credentials() -> Credentials:
    """nobody/nogroup when we run as root; None (our own user) after twistd --uid dropped root.

    Asked at each delivery, not at start-up: twistd builds the service as root and only then
    switches to --uid, and an unprivileged process cannot switch users.
    """
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise TemporaryFailure("4.3.0", f"no user {UNPRIVILEGED_USER!r} to run commands as") from None
    try:
        gid = grp.getgrnam(UNPRIVILEGED_GROUP).gr_gid
    except KeyError:
        gid = user.pw_gid
    return user.pw_uid, gid


def _clean(value: str) -> str:
    return "".join(c for c in value if ord(c) >= 32)


def command_environment(envelope: Envelope, alias: str) -> dict[str, str]:
    """The variables a local(8) command expects, and nothing of ours (no secrets, no PYTHONPATH)."""
    local, _, domain = alias.rpartition("@")
    return {"PATH": CHILD_PATH, "HOME": "/", "SHELL": SHELL, "SENDER": _clean(envelope.sender),
            "RECIPIENT": _clean(alias), "LOCAL": _clean(local), "DOMAIN": _clean(domain)}


def _failure(result: CommandResult, time_limit: float) -> Exception | None:
    """None for success, else the Temporary- or PermanentFailure the queue retries or bounces."""
    said = f": {result.first_line()}" if result.first_line() else ""
    if result.timed_out:
        return TemporaryFailure("4.3.0", f"command timed out after {time_limit:g} s{said}")
    if result.status == 0:
        return None
    if result.status == EX_TEMPFAIL:
        return TemporaryFailure("4.3.0", f"command failed with status {EX_TEMPFAIL} (try again later){said}")
    if result.status is None:
        return PermanentFailure("5.3.0", f"command killed by signal {result.signal}{said}")
    return PermanentFailure("5.3.0", f"command failed with status {result.status}{said}")


@implementer(ICourier)
class CommandCourier:
    """Delivers to `|command` and `/file` recipients (the LocalCourier hands them over).

    Commands run as an unprivileged user (see child_credentials); files are appended to by the
    appliance itself, in a worker thread of `pool`, so as the appliance's own user.
    """

    def __init__(self, reactor: Any, pool: Any, *, time_limit: float = DEFAULT_TIME_LIMIT,
                 output_limit: int = OUTPUT_LIMIT, credentials: Callable[[], Credentials] = child_credentials):
        self._reactor = reactor
        self._pool = pool
        self._time_limit = time_limit
        self._output_limit = output_limit
        self._credentials = credentials

    def deliver(self, envelope: Envelope, recipient: Recipient, message: bytes) -> Deferred:
        """Deferred[str]: the command or file, for the `delivered ... to=` log line."""
        alias = recipient.original or recipient.address
        headers = trace_headers(envelope, dataclasses.replace(recipient, address=alias, extension=""))
        if recipient.address.startswith(COMMAND):
            return maybeDeferred(self._run, envelope, recipient.address, alias, headers + message)
        return deferToThreadPool(self._reactor, self._pool, mbox.append, recipient.address,
                                 headers + message, envelope.sender)

    def _run(self, envelope: Envelope, target: str, alias: str, message: bytes) -> Deferred:
        d = run_command(self._reactor, target[len(COMMAND):], message.replace(b"\r\n", b"\n"),
                        command_environment(envelope, alias), time_limit=self._time_limit,
                        output_limit=self._output_limit, credentials=self._credentials())
        return d.addCallback(self._outcome, envelope, target, alias)

    def _outcome(self, result: CommandResult, envelope: Envelope, target: str, alias: str) -> str:
        maillog.emit("command", id=envelope.id, rcpt=alias, to=target,
                     status="timeout" if result.timed_out else result.status, signal=result.signal,
                     output=result.logged_output())
        failure = _failure(result, self._time_limit)
        if failure is not None:
            raise failure
        return target
