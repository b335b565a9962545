"""Password hashing for the file directory: scrypt from the standard library, compared in constant time.

Stored form: `$scrypt$ln=14,r=8,p=1$<b64 salt>$<b64 hash>` (standard base64, no padding), the
same layout passlib and Dovecot-style tools use, so the cost can be raised later without
invalidating old hashes: every hash carries its own parameters.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SCHEME = "scrypt"
LOG2_N = 14
BLOCK_SIZE = 8
PARALLELISM = 1
SALT_BYTES = 16
HASH_BYTES = 32

# Refuse stored parameters that would make one verification eat the machine (a hand-edited
# users file with ln=30 must not turn every login into a 128 GiB allocation).
_MAX_LOG2_N = 17
_MAX_R = 16
_MAX_P = 4


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    # surrogatepass: a password is whatever the client sent; odd text must hash, never raise.
    secret = password.encode("utf-8", "surrogatepass")
    n = 2 ** log2_n
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES, maxmem=256 * n * r * p + 2**20)


def hash_password(password: str) -> str:
    """A fresh salted scrypt hash of `password` in the stored form."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, LOG2_N, BLOCK_SIZE, PARALLELISM)
    params = f"ln={LOG2_N},r={BLOCK_SIZE},p={PARALLELISM}"
    return f"${SCHEME}${params}${_b64encode(salt)}${_b64encode(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(log2_n, r, p, salt, hash) of a stored hash, or None when it is not one we understand."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != SCHEME:
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        log2_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, digest = _b64decode(parts[3]), _b64decode(parts[4])
    except (ValueError, KeyError, binascii.Error):
        return None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P) or not salt or not digest:
        return None
    return log2_n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; an unknown or damaged scheme is simply False."""
    parsed = _parse(stored)
    if parsed is None:
        return False
    log2_n, r, p, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), expected)


# A hash of a random password nobody knows: checking an unknown login against it costs the same
# scrypt work as a real check, so response time does not tell which logins exist.
DUMMY_HASH = hash_password(_b64encode(os.urandom(24)))


def verify_unknown_user(password: str) -> bool:
    """Spend one real verification's time for a login that does not exist; always False."""
    verify_password(password, DUMMY_HASH)
    return False
