"""DKIM signing (RFC 6376) of our own users' and hosts' mail, so receivers can tell it is really ours.

Intake calls `DKIMSigner.sign` once a message of ours is complete: after masquerading and our
Received line, just before the queue. The signing domain (d=) is the domain of the From: field,
the one DMARC aligns with (RFC 7489 3.1.1); its key is the one `mailappliance dkim keygen` wrote
(appliance/dkimkeys.py). No key for that domain: the message goes out as it came. Signing never
costs a message: any failure sends it unsigned with one error line in the log.

What is signed: relaxed/relaxed canonicalization (survives the header refolding and whitespace
changes of relays, RFC 6376 3.4); the fields a reader sees and that MIME needs, each listed as
often as it occurs; From, To, Subject, Date and Message-ID listed once more than they occur
("oversigned", RFC 6376 8.15), so no relay or attacker can add a second one without breaking
the signature. Never the trace fields (Received, Return-Path), which every hop adds to.

dkimpy does the RSA and ed25519 arithmetic: CPU work, so it runs in the thread pool.
"""
from __future__ import annotations

import base64
import email.utils
import os
import threading
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from appliance import dkimkeys, maillog
from appliance.message import get_all, headers

SIGNED = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References",
          "MIME-Version", "Content-Type", "Content-Transfer-Encoding")
OVERSIGNED = frozenset({"from", "to", "subject", "date", "message-id"})
CANONICALIZATION = (b"relaxed", b"relaxed")
SIGNATURE_ALGORITHMS = {dkimkeys.RSA: b"rsa-sha256", dkimkeys.ED25519: b"ed25519-sha256"}
MAX_KEY_FILE = 64 * 1024            # a 4096-bit RSA PEM is ~3.3 KB; anything far bigger is not a key
MAX_REMEMBERED = 1000               # domains without a key already logged once


def signed_headers(message: bytes) -> list[bytes]:
    """The h= list: each present field of SIGNED as often as it occurs, the OVERSIGNED ones once more.

    An oversigned field that is absent is still listed once: it signs "no such field", so one
    cannot be added later (a To: on a Bcc-only message, say).
    """
    present = [name.decode("ascii", "replace").lower() for name, _ in headers(message)]
    names: list[bytes] = []
    for name in SIGNED:
        key = name.lower()
        count = present.count(key) + (1 if key in OVERSIGNED else 0)
        names += [key.encode("ascii")] * count
    return names


def from_domain(message: bytes) -> str | None:
    """The signing domain: the domain of the From: field, lower-case, or None.

    None when there is not exactly one From: field, when its addresses are in different
    domains, or when the domain is no plain DNS name (which also keeps it safe as a folder
    name: it is outside bytes, and it picks the key file).
    """
    values = get_all(message, "From")
    if len(values) != 1:
        return None
    pairs = email.utils.getaddresses([values[0].decode("utf-8", "replace")])
    domains = {addr.rpartition("@")[2].strip().lower().rstrip(".") for _, addr in pairs if "@" in addr}
    if len(domains) != 1:
        return None
    domain = domains.pop()
    return domain if dkimkeys.is_name(domain) else None


@dataclass(frozen=True)
class SigningKey:
    """A key ready for dkimpy: the selector of its DNS record (s=), the algorithm, the private key as dkimpy reads it."""

    selector: str
    algorithm: str
    secret: bytes


class KeyCache:
    """The keys of each domain, read from the folder and read again when a file changes.

    Asked from pool threads, so it holds a lock. Checking costs one listdir and one stat per
    key file; a new or replaced key (keygen --force) is used from the next message on, no
    restart. Which selector: `[dkim] selector` when the domain has a key for it, otherwise
    the domain's most recently written key (a per-domain `keygen --selector`).
    """

    def __init__(self, folder: str, selector: str, ed25519: bool) -> None:
        self.folder = folder
        self.selector = selector
        self.ed25519 = ed25519
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, list[SigningKey]]] = {}

    def keys(self, domain: str) -> list[SigningKey]:
        """The keys to sign `domain`'s mail with, RSA first; [] when it has none.

        Raises dkimkeys.DKIMKeyError (or OSError) for a key file that cannot be used.
        """
        chosen = self._choose(dkimkeys.stored_keys(self.folder, domain))
        stamp = tuple((k.path, *_file_stamp(k.path)) for k in chosen)
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        loaded = [_load(k) for k in chosen]
        with self._lock:
            if loaded:
                self._cache[domain] = (stamp, loaded)
            else:
                self._cache.pop(domain, None)
        return loaded

    def _choose(self, stored: list[dkimkeys.StoredKey]) -> list[dkimkeys.StoredKey]:
        rsa_keys = [k for k in stored if k.algorithm == dkimkeys.RSA]
        if not rsa_keys:
            return []       # ed25519 alone is not enough: many receivers do not verify it yet (RFC 8463 5)
        preferred = [k for k in rsa_keys if k.selector == self.selector]
        selector = (preferred or sorted(rsa_keys, key=lambda k: _file_stamp(k.path)[0]))[-1].selector
        wanted = {dkimkeys.RSA, dkimkeys.ED25519} if self.ed25519 else {dkimkeys.RSA}
        return [k for k in stored if k.selector == selector and k.algorithm in wanted]


def _file_stamp(path: str) -> tuple[int, int, int]:
    """(mtime_ns, size, inode): changes whenever keygen writes the file (it renames a new one in)."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return info.st_mtime_ns, info.st_size, info.st_ino


def _load(key: dkimkeys.StoredKey) -> SigningKey:
    """Read and check one key file; dkimpy wants RSA as PKCS#1 PEM and ed25519 as its base64 seed."""
    with open(key.path, "rb") as handle:
        pem = handle.read(MAX_KEY_FILE)
    try:
        private = dkimkeys.load_private(pem)
    except dkimkeys.DKIMKeyError as exc:
        raise dkimkeys.DKIMKeyError(f"{key.path}: {exc}") from None
    if key.algorithm == dkimkeys.RSA and isinstance(private, rsa.RSAPrivateKey):
        secret = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())
    elif key.algorithm == dkimkeys.ED25519 and isinstance(private, ed25519.Ed25519PrivateKey):
        secret = base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                        serialization.NoEncryption()))
    else:
        raise dkimkeys.DKIMKeyError(f"{key.path}: holds a {type(private).__name__}, not an {key.algorithm} key")
    return SigningKey(key.dns_selector, key.algorithm, secret)


class DKIMSigner:
    """`Intake.signer`: `sign(sender, message)` -> Deferred[the message with DKIM-Signature fields on top]."""

    def __init__(self, folder: str, selector: str, ed25519: bool, reactor: Any, pool: Any) -> None:
        self.keys = KeyCache(folder, selector, ed25519)
        self.reactor = reactor
        self.pool = pool
        self._unkeyed: set[str] = set()      # domains whose missing key was logged (once each)

    def sign(self, sender: str, message: bytes) -> defer.Deferred:
        """Never fails: a message that cannot be signed comes back unchanged (and logged)."""
        d = deferToThreadPool(self.reactor, self.pool, self.signatures, message)
        d.addCallbacks(lambda fields: fields + message, self._unsigned, errbackArgs=(message,))
        return d

    def signatures(self, message: bytes) -> bytes:
        """The DKIM-Signature fields for `message` (RSA, then ed25519), or b"": runs in a pool thread."""
        domain = from_domain(message)
        if domain is None:
            return b""
        keys = self.keys.keys(domain)
        if not keys:
            self.reactor.callFromThread(self._no_key, domain)
            return b""
        # RSA on top: a verifier that checks only the first signature (dkimpy's verify does) and
        # one that does not know ed25519 yet (RFC 8463 5) both find the one they can use.
        return b"".join(sign_with(message, domain, key) for key in keys)

    def _no_key(self, domain: str) -> None:
        if domain in self._unkeyed or len(self._unkeyed) >= MAX_REMEMBERED:
            return
        self._unkeyed.add(domain)
        maillog.emit("dkim-unsigned", domain=domain, reason=f"no key in {self.keys.folder}; "
                     f"`mailappliance dkim keygen {domain}` makes one (logged once per domain)")

    @staticmethod
    def _unsigned(failure: Failure, message: bytes) -> bytes:
        domain = from_domain(message) or ""
        maillog.error("dkim-sign", domain=domain, reason=failure.getErrorMessage()[:300],
                      action="sent unsigned")
        return message


def sign_with(message: bytes, domain: str, key: SigningKey) -> bytes:
    """One DKIM-Signature field, CRLF-terminated, as dkimpy makes it."""
    return dkim.sign(message, key.selector.encode("ascii"), domain.encode("ascii"), key.secret,
                     canonicalize=CANONICALIZATION, signature_algorithm=SIGNATURE_ALGORITHMS[key.algorithm],
                     include_headers=signed_headers(message), linesep=b"\r\n")
