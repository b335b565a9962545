"""A throwaway spamd and clamd (Debian's spamd and clamav-daemon) on free loopback ports, for tests and bench/.

Each daemon gets its own folder made at run time and never reads the system's state:

- spamd: its own site config (the plugin .pre files of /etc/spamassassin, Bayes and auto-learning
  off, plus `rules` given by the caller), the rules Debian ships, `-L` (local tests only: no DNS,
  no network), `-x` (no per-user config), a helper home of its own. It takes a few seconds to
  load the rules, so tests share one per module.
- clamd: a database folder holding only a test signature for EICAR written at start (the EICAR
  string is built here from pieces, so no file of the project is itself a test virus), a TCP
  port and a unix socket, and a small StreamMaxLength so the size-limit answer can be met.

Run as root, both drop to `nobody`, which must be able to read their folders (mode 0755) and
write the ones they write to. A missing program fails under CI (CI set) and skips elsewhere
(harness.require_program). Nothing here uses or touches a system-wide spamd or clamd.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from tests.integration.harness import end_process, free_port, log_tail, require_program

START_TIMEOUT = 60.0           # spamd compiles its rules first: seconds on a busy 2-core machine
UNPRIVILEGED = "nobody"

# Built from pieces so that no file of the project is the EICAR test file or GTUBE itself.
EICAR = "".join(["X5O!P%@AP[4\\PZX54(P^)7CC)7}", "$EICAR-", "STANDARD-ANTIVIRUS-", "TEST-FILE!$H+H*"])
GTUBE = "".join(["XJS*C4JDBQADN1.NSBN3*2IDNEN*", "GTUBE-STANDARD-", "ANTI-UBE-TEST-EMAIL*C.34X"])
EICAR_SIGNATURE = "Eicar-Test-Signature"


class ScannerError(RuntimeError):
    """The daemon did not start; the message carries its log tail."""


def _private_folder(prefix: str) -> str:
    """A fresh folder the unprivileged daemon user can read (pytest's tmp_path is 0700 root)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    os.chmod(folder, 0o755)
    return folder


def _give_to_daemon_user(path: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _ask(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    """One request on a fresh connection; the whole answer (b"" when nobody answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks)
    except OSError:
        return b""


class _Daemon:
    """Start, wait until it answers its PING, stop; the folder is removed at stop()."""

    name = "daemon"
    ping, pong = b"", b""

    def __init__(self, prefix: str) -> None:
        self.folder = _private_folder(prefix)
        self.port = free_port()
        self.log_path = os.path.join(self.folder, "daemon.log")
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while self.pong not in _ask(self.port, self.ping):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(remove=False)
                raise ScannerError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, remove: bool = True) -> None:
        process, self.process = self.process, None
        end_process(process)
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Spamd(_Daemon):
    """A private spamd; `rules` is added to its local.cf (e.g. a rule with a known score)."""

    name = "spamd"
    ping, pong = b"PING SPAMC/1.5\r\n\r\n", b"PONG"

    def __init__(self, rules: str = "") -> None:
        self.program = require_program("spamd")
        super().__init__("mailappliance-spamd-")
        self.site = os.path.join(self.folder, "site")
        self.home = os.path.join(self.folder, "home")
        os.makedirs(self.site, mode=0o755)
        os.makedirs(self.home, mode=0o755)
        _give_to_daemon_user(self.home)
        for pre in glob.glob("/etc/spamassassin/*.pre"):      # which plugins load; rules come from the package
            shutil.copy(pre, self.site)
        with open(os.path.join(self.site, "local.cf"), "w", encoding="ascii") as handle:
            handle.write("use_bayes 0\nbayes_auto_learn 0\n" + rules)
        for path in glob.glob(os.path.join(self.site, "*")):
            os.chmod(path, 0o644)

    def command(self) -> list[str]:
        command = [self.program, f"--listen=127.0.0.1:{self.port}", "--allowed-ips=127.0.0.1", "-L", "-x",
                   f"--siteconfigpath={self.site}", "-H", self.home, "--syslog=stderr",
                   f"--pidfile={os.path.join(self.folder, 'spamd.pid')}", "--min-children=1", "--max-children=2"]
        if os.geteuid() == 0:
            command.append(f"--username={UNPRIVILEGED}")
        return command


class Clamd(_Daemon):
    """A private clamd knowing only EICAR, on a TCP port and a unix socket (`socket_path`)."""

    name = "clamd"
    ping, pong = b"zPING\0", b"PONG"

    def __init__(self, stream_max_length: str = "1M") -> None:
        self.program = require_program("clamd")
        super().__init__("mailappliance-clamd-")
        database = os.path.join(self.folder, "db")
        os.makedirs(database, mode=0o755)
        with open(os.path.join(database, "test.ndb"), "w", encoding="ascii") as handle:
            # name:target type (0 = any file):offset (* = anywhere):the bytes in hex
            handle.write(f"{EICAR_SIGNATURE}:0:*:{EICAR.encode('ascii').hex()}\n")
        os.chmod(os.path.join(database, "test.ndb"), 0o644)
        sockets = os.path.join(self.folder, "run")
        os.makedirs(sockets, mode=0o755)
        _give_to_daemon_user(sockets)
        self.socket_path = os.path.join(sockets, "clamd.ctl")
        self.config_path = os.path.join(self.folder, "clamd.conf")
        settings = {"Foreground": "yes", "TCPSocket": str(self.port), "TCPAddr": "127.0.0.1",
                    "LocalSocket": self.socket_path, "DatabaseDirectory": database,
                    "StreamMaxLength": stream_max_length, "LogTime": "yes"}
        if os.geteuid() == 0:
            settings["User"] = UNPRIVILEGED
        with open(self.config_path, "w", encoding="ascii") as handle:
            handle.writelines(f"{key} {value}\n" for key, value in settings.items())
        os.chmod(self.config_path, 0o644)

    def command(self) -> list[str]:
        return [self.program, "-c", self.config_path]


class SilentScanner:
    """A port that accepts connections (the kernel completes them) and never answers: a hung daemon."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()
