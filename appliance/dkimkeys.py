"""Where the DKIM signing keys live, how `mailappliance dkim keygen` makes them, and their DNS records.

Layout of the key folder (`[dkim] keys`, "" = state_dir/dkim), one folder per signing domain:

    dkim/                                  0700, owned like state_dir
        example.test/                      0700
            mail.rsa.pem                   0600, RSA 2048, PKCS#1 PEM ("BEGIN RSA PRIVATE KEY")
            mail.ed25519.pem               0600, ed25519, PKCS#8 PEM (only with [dkim] ed25519 = yes)

The file name is `<selector>.<algorithm>.pem`: a new selector for a key rotation sits next to
the old one. The RSA key is published at `<selector>._domainkey.<domain>`, the ed25519 key at
`<selector>-ed25519._domainkey.<domain>` (`dns_selector`): each key needs a DNS name of its own,
since several key records under one name give undefined results (RFC 6376 3.6.2.2; opendkim
takes the first and fails the other signature). PKCS#1 for RSA because that is what dkimpy and opendkim
both read. Only private keys are stored: the public half (and so the DNS record) is derived
from them whenever it is asked for, so the two can never disagree.

The daemon reads these files after dropping root's privileges, so a key written by root is
given the owner of state_dir (the daemon's user), as the users file and the pickup folder are.
"""
from __future__ import annotations

import base64
import contextlib
import os
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from appliance import durable

RSA_BITS = 2048              # RFC 8301 3.2: at least 1024, 2048 recommended; 4096 does not fit many DNS UIs
RSA, ED25519 = "rsa", "ed25519"
ALGORITHMS = (RSA, ED25519)
FOLDER_MODE = 0o700
FILE_MODE = 0o600
TTL = 3600
MAX_STRING = 255             # RFC 1035 3.3: a character-string holds at most 255 octets (RFC 6376 3.6.2.2)
FOLDER_NAME = "dkim"         # below state_dir when [dkim] keys is empty

# A domain or selector that may become a path component: DNS labels only, never "..", "/", "".
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


class DKIMKeyError(Exception):
    """A key cannot be written or read (exists already, unreadable, not a key); the text says which."""


def is_name(text: str) -> bool:
    """True for a lower-case DNS name fit to be a folder or file name (what a From: domain must pass)."""
    return len(text) <= 253 and bool(_NAME.fullmatch(text))


def keys_folder(state_dir: str, configured: str) -> str:
    """`[dkim] keys`, or state_dir/dkim when it is empty."""
    return configured or os.path.join(state_dir, FOLDER_NAME)


def dns_selector(selector: str, algorithm: str) -> str:
    """The selector (s=) a key signs with and is published under: `mail`, or `mail-ed25519`."""
    return selector if algorithm == RSA else f"{selector}-{algorithm}"


def key_path(folder: str, domain: str, selector: str, algorithm: str) -> str:
    """folder/<domain>/<selector>.<algorithm>.pem; ValueError for a name that is no DNS name."""
    if algorithm not in ALGORITHMS or not (is_name(domain) and is_name(dns_selector(selector, algorithm))):
        raise ValueError(f"not a DKIM key name: {domain!r} {selector!r} {algorithm!r}")
    return os.path.join(folder, domain, f"{selector}.{algorithm}.pem")


# ---------------------------------------------------------------- making keys

def new_private_pem(algorithm: str) -> bytes:
    """A fresh private key in PEM, unencrypted (the daemon must read it unattended; 0600 protects it)."""
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    if algorithm == ED25519:
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    raise ValueError(f"unknown DKIM algorithm {algorithm!r}")


def generate(folder: str, domain: str, selector: str, algorithms: tuple[str, ...], *, force: bool = False,
             owner: tuple[int, int] | None = None) -> list[str]:
    """Write one new key per algorithm for domain/selector; the paths written, in order.

    Refuses (DKIMKeyError) when any of them exists unless `force`: a replaced key breaks every
    signature made with the old one until the new DNS record is published, so it must be asked
    for. Nothing is written when one of them would be refused. `owner` (uid, gid) is given to
    the folders made and the files written (root running the command for a daemon that is not).
    """
    paths = [key_path(folder, domain, selector, algorithm) for algorithm in algorithms]
    existing = [path for path in paths if os.path.exists(path)]
    if existing and not force:
        raise DKIMKeyError(f"{', '.join(existing)} already exists; add --force to replace "
                        f"(then publish the new DNS record: mail signed with the old key stops verifying)")
    _make_folder(folder, owner)
    _make_folder(os.path.join(folder, domain), owner)
    for path, algorithm in zip(paths, algorithms):
        durable.replace_file(path, new_private_pem(algorithm), FILE_MODE, owner=owner)
    return paths


def _make_folder(path: str, owner: tuple[int, int] | None) -> None:
    """Create `path` 0700 (and chown it) if missing; an existing folder is left as the operator made it."""
    if os.path.isdir(path):
        return
    os.makedirs(path, mode=FOLDER_MODE, exist_ok=True)
    os.chmod(path, FOLDER_MODE)        # makedirs' mode is masked by the umask
    if owner is not None:
        os.chown(path, *owner)


def owner_for(state_dir: str, folder: str) -> tuple[int, int] | None:
    """(uid, gid) to give new key files: state_dir's owner when run as root, else None (keep ours).

    When state_dir does not exist yet, the nearest existing folder above the key folder decides.
    """
    if os.geteuid() != 0:
        return None
    for candidate in (state_dir, *_ancestors(folder)):
        with contextlib.suppress(OSError):
            info = os.stat(candidate)
            return info.st_uid, info.st_gid
    return None


def _ancestors(path: str) -> list[str]:
    found = []
    path = os.path.abspath(path)
    for _ in range(64):                      # bounded: a path has few components
        parent = os.path.dirname(path)
        found.append(parent)
        if parent == path:
            break
        path = parent
    return found


# ---------------------------------------------------------------- reading keys and their records

@dataclass(frozen=True)
class StoredKey:
    """One private key file of a domain, as found in the folder."""

    domain: str
    selector: str
    algorithm: str
    path: str

    @property
    def dns_selector(self) -> str:
        return dns_selector(self.selector, self.algorithm)


def stored_keys(folder: str, domain: str) -> list[StoredKey]:
    """The well-named key files in folder/domain, sorted by selector then algorithm; [] if none."""
    if not is_name(domain):
        return []
    try:
        names = os.listdir(os.path.join(folder, domain))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        parts = name[:-len(".pem")].rsplit(".", 1) if name.endswith(".pem") else []
        if len(parts) != 2 or parts[1] not in ALGORITHMS or not is_name(parts[0]):
            continue        # temporary files, notes, backups: not keys
        found.append(StoredKey(domain, parts[0], parts[1], os.path.join(folder, domain, name)))
    return sorted(found, key=lambda k: (k.selector, ALGORITHMS.index(k.algorithm)))


def load_private(pem: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """The key in a PEM file; DKIMKeyError when it is not an unencrypted RSA or ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DKIMKeyError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise DKIMKeyError(f"a {type(key).__name__}, not an RSA or ed25519 key")
    return key


def record_value(pem: bytes) -> str:
    """The DKIM key record's text (RFC 6376 3.6.1): `v=DKIM1; k=rsa; p=<base64>`.

    RSA: p= is the DER SubjectPublicKeyInfo. ed25519 (RFC 8463 4.2): the raw 32-byte public key.
    """
    key = load_private(pem)
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def character_strings(value: str) -> list[str]:
    """`value` cut into TXT character-strings of at most 255 octets, the tags in a first one.

    A resolver joins them back without separators (RFC 6376 3.6.2.2), so the cut may fall
    anywhere; it is made before p= only so the record reads well.
    """
    head, sep, key = value.rpartition("p=")
    parts = [head] if sep and head else []
    rest = sep + key if sep else value
    parts += [rest[i:i + MAX_STRING] for i in range(0, len(rest), MAX_STRING)]
    return [part for part in parts if part] or [""]


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}."


def zone_record(domain: str, selector: str, value: str, ttl: int = TTL) -> str:
    """The record in zone-file form (RFC 1035 5.1), for BIND, NSD, Knot or a provider's import:

        mail._domainkey.example.test. 3600 IN TXT ( "v=DKIM1; k=rsa; "
                "p=MIIB..."
                "...AQAB" )
    """
    strings = [f'"{part}"' for part in character_strings(value)]
    return f"{record_name(domain, selector)} {ttl} IN TXT ( " + "\n\t".join(strings) + " )"


def read_record(key: StoredKey) -> str:
    """The zone-file record publishing `key`'s public half; DKIMKeyError if the file is unreadable or no key."""
    try:
        with open(key.path, "rb") as handle:
            pem = handle.read(64 * 1024)
    except OSError as exc:
        raise DKIMKeyError(f"{key.path}: {exc.strerror}") from None
    try:
        return zone_record(key.domain, key.dns_selector, record_value(pem))
    except DKIMKeyError as exc:
        raise DKIMKeyError(f"{key.path}: {exc}") from None


def records(folder: str, domain: str) -> list[str]:
    """Zone-file records of all of `domain`'s keys ([] when it has none): what `dkim show` prints,
    and the DKIM part of the `dns DOMAIN` command's output. DKIMKeyError for an unreadable key."""
    return [read_record(key) for key in stored_keys(folder, domain)]
