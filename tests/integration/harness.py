"""A throwaway appliance: its own folder, config, certificate, users and real `twistd` process.

Used by the integration tests and by bench/. It only drives the operator interface
(the `mailappliance` CLI and `twistd mailappliance`), so it tests what a sysadmin runs.
Standard library only, so bench/ can use it without the test dependencies.
"""
from __future__ import annotations

import glob
import mailbox
import os
import random
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}
SMTP_SERVICES = ("smtp", "submission", "smtps")
ALL_SERVICES = SMTP_SERVICES + ("pop3", "pop3s", "imap", "imaps")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0      # SIGTERM to SIGKILL: a shutdown saves counters and closes the queue with fsyncs, slow on a busy CI disk
STARTED = "[mail#info] started hostname="     # appliance.service logs it once every service has started


CHECKS_OFF = {"greylist": "off", "pregreet": "off", "spf": "off", "dkim_verify": "no", "dmarc": "off",
              "client_messages_per_minute": "0", "client_recipients_per_minute": "0",
              "user_messages_per_day": "0", "user_new_recipients_per_day": "0", "bad_recipients_before_delay": "0"}


class ApplianceError(RuntimeError):
    """The appliance could not be set up or started; the message carries the log tail."""


def default_bindir() -> str:
    """The folder of the interpreter running us: the venv holding `mailappliance` and `twistd`."""
    return os.path.dirname(sys.executable)


_handed_out: set[int] = set()


def end_process(process: "subprocess.Popen | None", timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`: a helper daemon the tests started (DNS, spamd, ...)."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.terminate()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout)


def log_tail(path: str, lines: int = 30) -> str:
    """The last lines of a helper daemon's log, for the message of a test that failed to start it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    """A loopback port nobody listens on right now.

    Chosen below the kernel's ephemeral range (32768 and up), where the kernel never puts the
    client side of the tests' own connections, and never the same one twice in one run: port 0
    would hand out ephemeral ports that a client socket may take before the appliance binds.
    """
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    """Poll until predicate() is truthy and return its value; raise AssertionError on timeout.

    Delivery happens after the 250 (the queue runner), so tests poll the mailbox.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate!r}")
        time.sleep(interval)


def require_program(name: str) -> str:
    """The full path of an outside program; a missing one fails under CI and skips elsewhere.

    A missing program must never let a test pass silently.
    """
    import pytest

    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path:
        return path
    message = f"required program {name!r} is not installed (Debian: see .ci/test)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render_config(sections: dict[str, dict[str, str]]) -> str:
    lines: list[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


class Appliance:
    """One appliance under test, in `root`; `start()` runs it, `stop()` ends it."""

    def __init__(self, root: str, storage: str = "maildir", services: Iterable[str] = ALL_SERVICES,
                 overrides: dict[str, dict[str, str]] | None = None, bindir: str | None = None,
                 users: dict[str, str] | None = None) -> None:
        self.root = os.path.abspath(root)
        self.storage = storage
        self.bindir = bindir or default_bindir()
        self.users = dict(PASSWORDS if users is None else users)
        self.ports = {name: free_port() for name in services}
        self.config_path = os.path.join(self.root, "mailappliance.conf")
        self.log_path = os.path.join(self.root, "twistd.log")
        self.output_path = os.path.join(self.root, "twistd.out")
        self.cert_path = os.path.join(self.root, "tls", "cert.pem")
        self.process: subprocess.Popen | None = None
        self.sections = self._sections(overrides or {})

    # -- setting up -------------------------------------------------------------------------

    def _sections(self, overrides: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        """The test config: nobody trusted for relay, no AUTH without TLS, even from loopback."""
        sections = {
            "appliance": {"hostname": HOSTNAME, "domains": DOMAIN, "state_dir": "var"},
            "tls": {"certificate": "tls/cert.pem", "key": "tls/key.pem", "min_version": "TLSv1.2",
                    "plaintext_auth_networks": ""},
            "listen": {name: f"tcp:{port}:interface=127.0.0.1" for name, port in self.ports.items()},
            "directory": {"backend": "file", "users_file": "users"},
            "storage": {"format": self.storage, "path": "var/mail/{domain}/{local}"},
            "relay": {"trusted_networks": ""},
            # The anti-abuse checks are off unless a test turns on the ones it is about: the tests
            # send from 127.0.0.1 with no DNS, which the defaults would greylist and rate-limit.
            "checks": dict(CHECKS_OFF),
        }
        for section, keys in overrides.items():
            sections.setdefault(section, {}).update(keys)
        return sections

    def program(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def cli(self, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        """Run `mailappliance --config C ARGS...` the way an operator would."""
        result = subprocess.run([self.program("mailappliance"), "--config", self.config_path, *args],
                                input=stdin, capture_output=True, text=True, cwd=self.root, timeout=60)
        if check and result.returncode != 0:
            raise ApplianceError(f"mailappliance {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def setup(self) -> None:
        """Write the config, generate the certificate and add the users (passwords on stdin)."""
        os.makedirs(self.root, exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(render_config(self.sections))
        self.cli("gen-cert")
        for local, password in self.users.items():
            self.cli("user", "add", f"{local}@{DOMAIN}", stdin=password + "\n")

    # -- running ----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Run `twistd -n mailappliance` and wait until every configured port accepts and the
        `started` line of this run is in the log: the ports are bound before the services start
        (privilegedStartService), so a port that answers does not yet mean a started queue,
        pickup folder or control socket (on a busy disk, the queue's start can take seconds)."""
        runs_before = self.starts_logged()
        command = [self.program("twistd"), "-n", "--pidfile=", f"--logfile={self.log_path}",
                   "mailappliance", "--config", self.config_path]
        with open(self.output_path, "ab") as output:
            self.process = subprocess.Popen(command, cwd=self.root, stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        closed = set(self.ports.values())
        while True:
            if self.process.poll() is not None:
                raise ApplianceError(f"twistd exited with {self.process.returncode} before listening\n"
                                     + self.diagnostics())
            closed = {port for port in closed if not port_accepts(port)}
            if not closed and self.starts_logged() > runs_before:
                return
            if time.monotonic() > deadline:
                self.stop()
                waiting = f"ports {sorted(closed)}" if closed else "the `started` line"
                raise ApplianceError(f"not ready after {timeout} s: waiting for {waiting}\n" + self.diagnostics())
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit status."""
        return end_process(self.process, STOP_TIMEOUT)

    def kill9(self) -> None:
        """Simulate a crash or power loss of the process: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    # -- looking at it ----------------------------------------------------------------------

    def log(self) -> str:
        """Everything twistd logged so far (all runs of this appliance)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def starts_logged(self) -> int:
        """How many `started` lines every run wrote, rotated logs included (twistd rotates the log
        at 1 MB and keeps the old ones, so the total only grows)."""
        marker = STARTED.encode()
        count = 0
        for path in glob.glob(glob.escape(self.log_path) + "*"):
            try:
                with open(path, "rb") as handle:
                    count += handle.read().count(marker)
            except FileNotFoundError:      # rotated away between the listing and the open
                pass
        return count

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of twistd's log and of its stdout/stderr, for failure messages."""
        try:
            with open(self.output_path, encoding="utf-8", errors="replace") as handle:
                output = handle.read()
        except FileNotFoundError:
            output = ""
        tail = "\n".join(self.log().splitlines()[-lines:])
        out_tail = "\n".join(output.splitlines()[-lines:])
        return f"--- twistd log tail ({self.log_path}) ---\n{tail}\n--- twistd stdout/stderr ---\n{out_tail}"

    def mailbox_path(self, user: str) -> str:
        """The storage path template var/mail/{domain}/{local} filled in for `user`."""
        local, _, domain = user.partition("@")
        return os.path.join(self.root, "var", "mail", domain or DOMAIN, local)

    def maildir_messages(self, user: str) -> list[bytes]:
        """Raw messages in the user's Maildir (new/ and cur/; never tmp/, which is not delivered)."""
        found = []
        for sub in ("new", "cur"):
            folder = os.path.join(self.mailbox_path(user), sub)
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    with open(os.path.join(folder, name), "rb") as handle:
                        found.append(handle.read())
                except FileNotFoundError:      # moved new/ -> cur/ while we looked
                    continue
        return found

    def mbox_messages(self, user: str) -> list[bytes]:
        """Raw messages in the user's mbox file (without the From_ separator line)."""
        return read_mbox(self.mailbox_path(user))

    def messages(self, user: str) -> list[bytes]:
        return self.mbox_messages(user) if self.storage == "mbox" else self.maildir_messages(user)

    # -- clients ----------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        """A client context that trusts only the appliance's generated self-signed certificate."""
        return ssl.create_default_context(cafile=self.cert_path)

    def smtp(self, service: str = "smtp", timeout: float = 10.0) -> "SMTP":
        """A plaintext smtplib session (already past the banner) on one of the SMTP ports."""
        return SMTP(HOSTNAME, self.ports[service], local_hostname=CLIENT_NAME, timeout=timeout)

    def smtps(self, timeout: float = 10.0) -> "SMTP_SSL":
        """An implicit-TLS smtplib session on the smtps port, verifying the certificate."""
        return SMTP_SSL(HOSTNAME, self.ports["smtps"], local_hostname=CLIENT_NAME, timeout=timeout,
                        context=self.tls_context())

    def submit(self, local: str = "alice", timeout: float = 10.0) -> "SMTP":
        """A submission session after STARTTLS and AUTH as `local`@DOMAIN, ready for MAIL FROM."""
        client = self.smtp("submission", timeout)
        client.starttls(context=self.tls_context())
        client.login(f"{local}@{DOMAIN}", self.users[local])
        return client


CLIENT_NAME = "client.example.test"


class _Loopback:
    """Connect to 127.0.0.1 whatever the host name, so TLS still checks the name HOSTNAME."""

    def _get_socket(self, host, port, timeout):  # smtplib's hook; the name stays in self._host
        return super()._get_socket("127.0.0.1", port, timeout)


class SMTP(_Loopback, smtplib.SMTP):
    pass


class SMTP_SSL(_Loopback, smtplib.SMTP_SSL):
    pass


def read_mbox(path: str) -> list[bytes]:
    """Raw messages of an mbox file (without the From_ separator lines); [] when there is none."""
    if not os.path.isfile(path):
        return []
    box = mailbox.mbox(path, create=False)
    try:
        return [box.get_bytes(key) for key in box.iterkeys()]
    finally:
        box.close()


def make_message(subject: str, body: str = "Hello.\r\n", sender: str = "someone@outside.example",
                 to: str = f"alice@{DOMAIN}", extra_headers: str = "") -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    head = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra_headers}"
    return (head + "\r\n" + body).encode("utf-8")
