"""Real parts for the SPF, DKIM and DMARC tests: a thread pool, a DNS server's zone, signing keys, opendkim.

The checks run pyspf and dkimpy in a real twisted ThreadPool; its results come back through
`reactor.callFromThread`, which ThreadedClock queues for the test thread to run (`pump_until`),
so the SMTP session stays single-threaded as under the real reactor.
"""
from __future__ import annotations

import base64
import os
import queue
import re
import subprocess
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import task

from tests.integration.dnsserver import txt
from tests.integration.harness import require_program
from tests.unit.checkrig import CheckRig


class ThreadedClock(task.Clock):
    """A Clock whose callFromThread hands the call to the test thread, run by pump_until()."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):
        self.from_threads.put((f, args, kwargs))

    def pump_until(self, done: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not done within {timeout} s")
            try:
                f, args, kwargs = self.from_threads.get(timeout=min(remaining, 0.05))
            except queue.Empty:
                continue
            f(*args, **kwargs)


def has_final_reply(data: bytes) -> bool:
    return any(line[3:4] == b" " for line in data.split(b"\r\n")[:-1])


class Session:
    """Drives a CheckRig one command at a time, running the pool's results until each reply is out."""

    def __init__(self, rig: CheckRig, clock: ThreadedClock) -> None:
        self.rig, self.clock = rig, clock

    def command(self, line: bytes) -> list[bytes]:
        self.rig.proto.dataReceived(line)
        self.clock.pump_until(lambda: has_final_reply(self.rig.transport.value()))
        return self.rig.take()

    def transaction(self, sender: str, message: bytes, helo: str = "client.test",
                    rcpt: str = "alice@example.test") -> list[bytes]:
        """EHLO, MAIL, RCPT, DATA: the last reply line of each step; stops at the first refusal."""
        out = []
        for line in (f"EHLO {helo}", f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>", "DATA"):
            reply = self.command(line.encode() + b"\r\n")[-1]
            out.append(reply)
            if reply[:1] in (b"4", b"5"):
                return out
        out.append(self.command(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")[-1])
        return out


# ---- DKIM keys and signatures -----------------------------------------------------------------------

class SigningKey:
    """An RSA key made for the test: its PEM for the signers, its TXT record for the zone."""

    def __init__(self, bits: int = 2048) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public = base64.b64encode(public).decode()

    def record(self, name: str) -> str:
        """The key's TXT record, split into character-strings of at most 255 octets (RFC 1035 3.3.14)."""
        text = f"v=DKIM1; k=rsa; p={self.public}"
        return txt(name, *[text[i:i + 250] for i in range(0, len(text), 250)])

    def sign(self, message: bytes, domain: str, selector: str = "sel") -> bytes:
        """The message with a dkimpy rsa-sha256 relaxed/relaxed signature on top."""
        field = dkim.sign(message, selector.encode(), domain.encode(), self.pem,
                          canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date"])
        return field + message


def opendkim_sign(message: bytes, key: SigningKey, domain: str, selector: str, workdir: str) -> bytes:
    """The message signed by Debian's opendkim (the milter binary in its test mode, `-t`, `-b s`).

    opendkim-testmsg would be simpler but signs with rsa-sha1, which verifiers must refuse
    (RFC 8301); opendkim proper signs rsa-sha256 and prints the field it would insert.
    """
    program = require_program("opendkim")
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    key_path, message_path, conf_path = (os.path.join(workdir, n) for n in ("key.pem", "message.eml", "opendkim.conf"))
    with open(key_path, "wb") as handle:
        handle.write(key.pem)
    os.chmod(key_path, 0o600)
    with open(message_path, "wb") as handle:
        handle.write(message)
    with open(conf_path, "w", encoding="ascii") as handle:
        handle.write(f"Domain {domain}\nSelector {selector}\nKeyFile {key_path}\nMode s\n"
                     "SignatureAlgorithm rsa-sha256\nCanonicalization relaxed/relaxed\nSyslog no\n"
                     "RequireSafeKeys no\n")    # the key sits below /tmp, which opendkim calls unsafe
    done = subprocess.run([program, "-x", conf_path, "-b", "s", "-t", message_path],
                          capture_output=True, timeout=30)
    found = re.search(rb"^DKIM-Signature: (.*)\Z", done.stdout.rstrip(), re.S | re.M)
    assert done.returncode == 0 and found, done.stdout + done.stderr
    value = re.sub(rb"\r?\n", b"\r\n", found.group(1))
    return b"DKIM-Signature: " + value + b"\r\n" + message
