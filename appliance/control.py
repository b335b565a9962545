"""The daemon side of `mailappliance queue`: one command per connection on a UNIX socket in state_dir.

Why a socket: flush, delete, hold and release must change the running queue's memory, not only
the files under it. The socket is mode 0600 (owner and root only), so it needs no password.
The protocol is one line each way: `flush` | `delete ID` | `hold ID` | `release ID` | `status`,
answered by `OK text` or `ERR text`; `status` answers `OK {json}` (appliance/status.py).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from appliance import maillog

SOCKET_NAME = "control.sock"
LOCK_SUFFIX = ".flock"      # control.sock.flock: flock'ed while a daemon listens on the socket
LEGACY_LOCK_SUFFIX = ".lock"   # the pid link twisted's wantPID used to leave
ACTIONS = {"delete": "deleted", "hold": "held", "release": "released"}   # commands taking a queue id
REPLY_TIMEOUT = 30.0
STATUS = "status"
QUIET = frozenset({STATUS})   # commands that change nothing: not logged (a monitor may poll every minute)


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


class CommandRefused(Exception):
    """A command the daemon will not run (unknown verb, bad or unknown id): the text goes back as ERR."""


def valid_id(qid: str) -> bool:
    """Queue ids are short ASCII letters and digits (envelope.new_id); anything else is refused early."""
    return 0 < len(qid) <= 64 and qid.isascii() and qid.isalnum()


class QueueCommands:
    """Runs one command line against the QueueService; returns the OK text or a Deferred of it."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def run(self, line: str) -> str | Deferred:
        verb, _, qid = line.strip().partition(" ")
        qid = qid.strip()
        if verb == "flush" and not qid:
            count = self._queue.flush()
            return f"flushing {count} message{'' if count == 1 else 's'}"
        if verb not in ACTIONS:
            raise CommandRefused(f"unknown command {line.strip()[:40]!r}")
        if not valid_id(qid):
            raise CommandRefused(f"{verb} needs a queue id (as `queue list` shows it)")
        try:
            done = getattr(self._queue, verb)(qid)
        except KeyError:
            raise CommandRefused(f"{qid}: no such message in the queue") from None
        if isinstance(done, Deferred):
            return done.addCallback(lambda _: f"{ACTIONS[verb]} {qid}")
        return f"{ACTIONS[verb]} {qid}"


class ControlCommands:
    """Every command of the socket: `status` (when a status report is wired in), else the queue's."""

    def __init__(self, queue: Any, status: Callable[[], Deferred] | None = None) -> None:
        self.queue_commands = QueueCommands(queue)
        self.status = status

    def run(self, line: str) -> str | Deferred:
        if line.strip() == STATUS:
            if self.status is None:
                raise CommandRefused("status is not available")
            return self.status().addCallback(lambda report: json.dumps(report, separators=(",", ":")))
        return self.queue_commands.run(line)


class ControlProtocol(LineReceiver):
    """One command, one reply, then the connection is closed."""

    delimiter = b"\n"
    MAX_LENGTH = 512

    def connectionMade(self) -> None:
        self._answered = False

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        self._answered = True
        text = line.rstrip(b"\r").decode("ascii", "replace")
        d = maybeDeferred(self.factory.commands.run, text)
        d.addCallbacks(self._ok, self._refused, (text,), None, (text,))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answered = True
        self._reply("ERR command too long")

    def _ok(self, text: str, line: str) -> None:
        if line.strip() not in QUIET:
            maillog.emit("queue-command", command=line[:80], result=text)
        self._reply(f"OK {text}")

    def _refused(self, failure: Failure, line: str) -> None:
        if failure.check(CommandRefused):
            maillog.emit("queue-command", command=line[:80], refused=failure.getErrorMessage())
            self._reply(f"ERR {failure.getErrorMessage()}")
            return
        maillog.log.failure("queue command {line!r} failed", failure, line=line[:80])
        self._reply("ERR the command failed; the daemon's log says why")

    def _reply(self, text: str) -> None:
        self.sendLine(text.encode("utf-8", "replace"))
        self.transport.loseConnection()


class SocketInUse(Exception):
    """Another live process holds the control socket's lock."""


def take_lock(path: str) -> int:
    """flock `path` (created 0600) for this process and return the descriptor; SocketInUse if held.

    Why flock and not a pid link (twisted's wantPID): the kernel drops the lock the moment the
    process dies, while a pid link "holds" until the dead process is reaped (a zombie still
    has its pid), so a restart right after kill -9 failed with "Cannot acquire lock".
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        os.unlink(path)     # a symlink where our lock file belongs: never follow it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SocketInUse(f"{path} is locked by another running process") from None
    return fd


class ControlService(Service):
    """Listens on state_dir/control.sock (mode 0600) while the daemon runs.

    Started after the queue, whose spool lock already guarantees that we are the only daemon on
    this state_dir. The socket has its own flock (control.sock.flock) all the same, which the
    kernel drops when the process dies: a socket file left behind by a crash is then simply
    replaced, and a pid link left by an older version is removed.
    """

    name = "control"

    def __init__(self, path: str, queue: Any, reactor: Any) -> None:
        self._path = path
        self._reactor = reactor
        self._factory = Factory.forProtocol(ControlProtocol)
        self._factory.noisy = False
        self.commands = self._factory.commands = ControlCommands(queue)   # tap wires commands.status in
        self._port: Any = None
        self._lock_fd: int | None = None

    def startService(self) -> None:
        fd = take_lock(self._path + LOCK_SUFFIX)
        try:
            for stale in (self._path, self._path + LEGACY_LOCK_SUFFIX):
                if os.path.lexists(stale):
                    os.unlink(stale)    # we hold the lock: whoever made these is gone
            self._port = self._reactor.listenUNIX(self._path, self._factory, mode=0o600)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        super().startService()

    def stopService(self) -> Deferred | None:
        super().stopService()
        port, self._port = self._port, None
        d = port.stopListening() if port is not None else None
        if d is None:
            self._unlock()
        else:
            d.addBoth(lambda result: (self._unlock(), result)[1])
        return d

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # the socket file stays; the next start replaces it
            self._lock_fd = None


# --- the client side, used by the `mailappliance queue` command -----------------------------------

class NotRunning(Exception):
    """Nobody answers on the control socket: the daemon is not running (or not for this state_dir)."""


def ask(path: str, command: str, timeout: float = REPLY_TIMEOUT) -> tuple[bool, str]:
    """Send one command line; (True, text) for OK, (False, text) for ERR. Raises NotRunning."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NotRunning(f"{path}: {e.strerror}") from None
        sock.sendall(command.encode("ascii") + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    status, _, text = reply.decode("utf-8", "replace").strip().partition(" ")
    if status not in ("OK", "ERR"):
        return False, "the daemon gave no answer"
    return status == "OK", text
