"""The embedded default directory: users in one text file, managed with `mailappliance user ...`.

The users file holds one user per line::

    address:hash:secret:extra-addresses

- ``address``: the primary address (normalised), which is the login and the mailbox key;
- ``hash``: the scrypt hash from appliance.passwords (``$scrypt$ln=14,r=8,p=1$salt$hash``);
  a leading ``!`` disables the user's logins (all mechanisms) while mail is still delivered;
- ``secret``: empty, unless the user was added with ``--shared-secret``; then the password itself,
  base64-encoded, because CRAM-MD5 and APOP can only be checked against the cleartext. It is
  cleartext-equivalent, which is why the file is written with mode 0600;
- ``extra-addresses``: a comma-separated list of further addresses delivered to the same
  mailbox (may be empty; edited by hand);
- an optional fifth field ``quota=SIZE`` (`mailappliance user quota`): the user's own storage
  limit instead of ``[storage] quota`` (``quota=0``: unlimited). It is written only for users
  who have one, so a file without quotas keeps the four-field form older versions read. It
  cannot be mistaken for the extra addresses: those always hold an ``@``, this field never does.

Lines starting with ``#`` and blank lines are ignored, and the admin commands keep them.
A missing file means "no users yet".

The admin functions are blocking and meant for the CLI: they take an fcntl lock on
``<users_file>.lock`` and replace the file atomically, so two admins never lose each other's
change and the daemon never reads half a file. `FileDirectory` serves the running daemon and
notices such changes by itself, without a restart.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import address as addr
from appliance import maillog
from appliance.config import format_size, parse_size
from appliance.interfaces import IDirectory, UserRecord
from appliance.passwords import CheckQueue, credential_fingerprint, hash_password, verify_password, verify_unknown_user
from appliance.durable import fsync_dir

FILE_MODE = 0o600
DISABLED = "!"            # in front of a hash: logins refused, mail still delivered
QUOTA_FIELD = "quota="    # the optional fifth field
CHECK_INTERVAL = 1.0      # seconds between two looks at the file's mtime/size/inode


class UserFileError(Exception):
    """An operator mistake or an unusable users file; the message is one line for the terminal."""


@dataclass(frozen=True)
class UserEntry:
    """One parsed line of the users file."""

    address: str
    password_hash: str
    shared_secret: str | None = None
    extra_addresses: tuple[str, ...] = ()
    quota: int | None = None          # bytes, 0 = unlimited; None = [storage] quota applies

    def record(self) -> UserRecord:
        """The UserRecord, built once per entry: RCPT, the quota check and the delivery each ask for
        it for every message, and both it and the entry are immutable."""
        built = self.__dict__.get("_record")
        if built is None:
            built = UserRecord(address=self.address, addresses=frozenset((self.address, *self.extra_addresses)),
                               shared_secret=self.shared_secret,
                               enabled=not self.password_hash.startswith(DISABLED), quota=self.quota,
                               credential=credential_fingerprint(self.password_hash))
            self.__dict__["_record"] = built      # frozen dataclass: set beside its fields, not through them
        return built


# -- the line format ---------------------------------------------------------------------------

def _is_ignored(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _checked_address(text: str) -> str:
    """The normalised form of an address, or ValueError saying why it is not acceptable."""
    text = text.strip()
    if not addr.is_valid(text) or "," in text or text.startswith("#"):
        raise ValueError(f"not a valid address: {text!r}")
    return addr.normalise(text)


def parse_line(line: str) -> UserEntry:
    """Parse one user line; ValueError with a short reason when it is malformed."""
    line = line.rstrip("\r\n")
    quota = None
    head, _, last = line.rpartition(":")
    if last.startswith(QUOTA_FIELD) and "@" not in last:
        try:
            quota = parse_size(last[len(QUOTA_FIELD):])
        except ValueError as e:
            raise ValueError(f"bad quota: {e}") from None
        line = head
    # Split from the right: hash, secret and extra addresses never contain a colon.
    fields = line.rsplit(":", 3)
    if len(fields) != 4:
        raise ValueError("expected address:hash:secret:extra-addresses")
    primary_text, password_hash, secret_text, extras_text = fields
    if not password_hash:
        raise ValueError("empty password hash")
    try:
        secret = _decode_secret(secret_text) if secret_text else None
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("the shared secret is not valid base64") from None
    extras = tuple(_checked_address(a) for a in extras_text.split(",") if a.strip())
    return UserEntry(_checked_address(primary_text), password_hash, secret, extras, quota)


def format_entry(entry: UserEntry) -> str:
    """The line for `entry`, without its newline."""
    secret = _encode_secret(entry.shared_secret) if entry.shared_secret is not None else ""
    line = f"{entry.address}:{entry.password_hash}:{secret}:{','.join(entry.extra_addresses)}"
    if entry.quota is not None:
        line += f":{QUOTA_FIELD}{format_size(entry.quota) if entry.quota else 0}"
    return line


def _encode_secret(secret: str) -> str:
    return base64.b64encode(secret.encode("utf-8", "surrogatepass")).decode("ascii")


def _decode_secret(text: str) -> str:
    return base64.b64decode(text, validate=True).decode("utf-8", "surrogatepass")


def _new_entry(address: str, password: str, shared_secret: bool, extras: tuple[str, ...] = ()) -> UserEntry:
    return UserEntry(address, hash_password(password), password if shared_secret else None, extras)


def index_entries(path: str, lines: list[str]) -> tuple[dict[str, UserEntry], list[str]]:
    """Map every address (primary and extra) to its entry; problems as `FILE:LINE: reason`.

    A bad line is skipped rather than failing the whole file, so one typo locks out one user,
    not everybody; an address claimed twice keeps its first owner.
    """
    table: dict[str, UserEntry] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if _is_ignored(line):
            continue
        try:
            entry = parse_line(line)
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
            continue
        for address in (entry.address, *entry.extra_addresses):
            if address in table:
                problems.append(f"{path}:{number}: {address} already belongs to a user on line {first_line[address]}")
            else:
                table[address] = entry
                first_line[address] = number
    return table, problems


# -- blocking file access for the admin commands ---------------------------------------------

def _read_lines(users_file: str) -> list[str]:
    try:
        with open(users_file, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserFileError(f"{users_file}: cannot read: {_reason(e)}") from None


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


@contextlib.contextmanager
def _locked(users_file: str) -> Iterator[None]:
    """Hold an exclusive lock on `<users_file>.lock` (a separate file, as the users file is replaced)."""
    try:
        fd = os.open(users_file + ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as e:
        raise UserFileError(f"{users_file}.lock: cannot open: {_reason(e)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(users_file: str, lines: list[str]) -> None:
    """Replace the file by write-to-temp, fsync, rename: readers see the old or the new file, never half."""
    folder = os.path.dirname(os.path.abspath(users_file))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".users.", suffix=".tmp")
    except OSError as e:
        raise UserFileError(f"{users_file}: cannot write: {_reason(e)}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            _keep_owner(users_file, f.fileno())
            os.fsync(f.fileno())
        os.replace(tmp, users_file)
        fsync_dir(folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserFileError(f"{users_file}: cannot write: {_reason(e)}") from None


def _keep_owner(users_file: str, fd: int) -> None:
    """Give the new file the old one's owner, so root running the CLI does not lock the daemon out."""
    try:
        st = os.stat(users_file)
        os.fchown(fd, st.st_uid, st.st_gid)
    except OSError:
        pass


def _edit(users_file: str, change: Callable[[list[str]], list[str]]) -> None:
    """Read, change and atomically rewrite the file under the lock."""
    with _locked(users_file):
        _write_atomically(users_file, change(_read_lines(users_file)))


def _find(lines: list[str], address: str, *, primary_only: bool) -> int | None:
    """Index of the line whose user has `address` (primary, or also extra unless primary_only)."""
    for i, line in enumerate(lines):
        if _is_ignored(line):
            continue
        try:
            entry = parse_line(line)
        except ValueError:
            continue
        if entry.address == address or (not primary_only and address in entry.extra_addresses):
            return i
    return None


def _operator_address(address: str) -> str:
    try:
        return _checked_address(address)
    except ValueError as e:
        raise UserFileError(str(e)) from None


def add_user(users_file: str, address: str, password: str, *, shared_secret: bool = False) -> None:
    """Add a user; UserFileError when the address is invalid or already someone's."""
    primary = _operator_address(address)
    line = format_entry(_new_entry(primary, password, shared_secret))

    def change(lines: list[str]) -> list[str]:
        if _find(lines, primary, primary_only=False) is not None:
            raise UserFileError(f"{primary}: user already exists")
        return [*lines, line]

    _edit(users_file, change)


def set_password(users_file: str, address: str, password: str, *, shared_secret: bool | None = None) -> None:
    """Change a user's password; shared_secret None keeps whether a secret is stored (re-derived)."""
    primary = _operator_address(address)

    def change(lines: list[str]) -> list[str]:
        i = _find(lines, primary, primary_only=True)
        if i is None:
            raise UserFileError(f"{primary}: no such user")
        old = parse_line(lines[i])
        keep_secret = old.shared_secret is not None if shared_secret is None else shared_secret
        lines[i] = format_entry(replace(_new_entry(primary, password, keep_secret, old.extra_addresses),
                                        quota=old.quota))
        return lines

    _edit(users_file, change)


def grant_address(users_file: str, address: str, extra: str, *, granted: bool = True) -> None:
    """Give a user one more address (or take it back): mail to it reaches them, and they may send
    as it. An address already someone else's is refused."""
    primary, extra = _operator_address(address), _operator_address(extra)

    def change(lines: list[str]) -> list[str]:
        i = _find(lines, primary, primary_only=True)
        if i is None:
            raise UserFileError(f"{primary}: no such user")
        old = parse_line(lines[i])
        owner = _find(lines, extra, primary_only=False)
        if granted and owner is not None:
            raise UserFileError(f"{extra}: already belongs to {parse_line(lines[owner]).address}")
        if not granted and extra not in old.extra_addresses:
            raise UserFileError(f"{extra}: not one of {primary}'s addresses")
        extras = (*old.extra_addresses, extra) if granted else tuple(a for a in old.extra_addresses if a != extra)
        lines[i] = format_entry(replace(old, extra_addresses=extras))
        return lines

    _edit(users_file, change)


def set_quota(users_file: str, address: str, quota: int | None) -> None:
    """Give a user their own storage limit in bytes (0: unlimited), or None to follow [storage] quota again.

    The running daemon reads the change within CHECK_INTERVAL, like every other edit here."""
    primary = _operator_address(address)

    def change(lines: list[str]) -> list[str]:
        i = _find(lines, primary, primary_only=True)
        if i is None:
            raise UserFileError(f"{primary}: no such user")
        lines[i] = format_entry(replace(parse_line(lines[i]), quota=quota))
        return lines

    _edit(users_file, change)


def delete_user(users_file: str, address: str) -> None:
    """Remove a user (the mailbox stays on disk); UserFileError when there is no such user."""
    primary = _operator_address(address)

    def change(lines: list[str]) -> list[str]:
        i = _find(lines, primary, primary_only=True)
        if i is None:
            raise UserFileError(f"{primary}: no such user")
        return lines[:i] + lines[i + 1:]

    _edit(users_file, change)


def list_users(users_file: str) -> list[str]:
    """Primary addresses in file order; unparseable lines are left out."""
    table, _ = index_entries(users_file, _read_lines(users_file))
    return list(dict.fromkeys(entry.address for entry in table.values()))


def own_quotas(users_file: str) -> dict[str, int]:
    """Primary address -> own quota in bytes (0 = unlimited), for the users who have one."""
    table, _ = index_entries(users_file, _read_lines(users_file))
    return {entry.address: entry.quota for entry in table.values() if entry.quota is not None}


def check_users_file(users_file: str) -> list[str]:
    """Problems (`FILE:LINE: reason`) for `mailappliance check`; a missing file is fine."""
    try:
        return index_entries(users_file, _read_lines(users_file))[1]
    except UserFileError as e:
        return [str(e)]


# -- the daemon's view -------------------------------------------------------------------------

Signature = tuple[int, int, int, int]
_MISSING: Signature = (-1, -1, -1, -1)
_UNKNOWN: Signature = (-2, -2, -2, -2)


@dataclass(frozen=True)
class _Snapshot:
    """What a worker thread read: table None means unreadable (keep the old one)."""

    signature: Signature
    table: dict[str, UserEntry] | None
    problems: list[str]


def _signature(st: os.stat_result) -> Signature:
    # ctime too, so that fixing the file's permissions is noticed as well.
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _stat_signature(path: str) -> Signature:
    try:
        return _signature(os.stat(path))
    except OSError:
        return _UNKNOWN


def _read_if_changed(path: str, old: Signature | None) -> _Snapshot | None:
    """Runs in the pool: re-read the file when it changed since `old`, else None.

    An unreadable file yields a snapshot without a table, remembered by its signature, so the
    problem is logged once per change rather than once a second.
    """
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return None if old == _MISSING else _Snapshot(_MISSING, {}, [])
    except OSError as e:
        signature = _stat_signature(path)
        return None if signature == old else _Snapshot(signature, None, [f"{path}: cannot read: {_reason(e)}"])
    with f:
        signature = _signature(os.fstat(f.fileno()))
        if signature == old:
            return None
        try:
            lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            return _Snapshot(signature, None, [f"{path}: cannot read: {_reason(e)}"])
    table, problems = index_entries(path, lines)
    return _Snapshot(signature, table, problems)


@implementer(IDirectory)
class FileDirectory:
    """Users from the users file, re-read automatically when it changes.

    Every request first makes sure the table is no more than CHECK_INTERVAL seconds stale; the
    stat and the read happen in `pool`, the scrypt verifications in `checks` (their own threads,
    bounded, dropped when the client leaves), never on the reactor and never in front of the
    reads that RCPT waits for.
    """

    def __init__(self, users_file: str, reactor, pool, checks: CheckQueue | None = None) -> None:
        self._path = users_file
        self._reactor = reactor
        self._pool = pool
        self._checks = checks if checks is not None else CheckQueue(reactor, pool)
        self._table: dict[str, UserEntry] = {}
        self._signature: Signature | None = None
        self._checked_at: float | None = None
        self._reloading = False
        self._waiters: list[Deferred] = []

    @property
    def supports_shared_secrets(self) -> bool:
        """CRAM-MD5/APOP are offered only once some user has a secret: a client that prefers
        CRAM-MD5 (swaks, Thunderbird's "encrypted password") must not be steered into a
        mechanism that cannot succeed for anyone. Asked before the table was ever read (the first
        greeting after a start), it starts the read so the next greeting knows."""
        if self._checked_at is None:
            self._fresh_table()
        return any(entry.shared_secret for entry in self._table.values())

    def lookup(self, address: str) -> Deferred:
        if self._is_fresh():
            # The common case (three lookups per received message): an answer from the table in
            # hand, without a chain of callbacks.
            entry = _entry_for(self._table, address)
            return succeed(entry.record() if entry else None)
        d = self._fresh_table()
        d.addCallback(lambda table: _entry_for(table, address))
        d.addCallback(lambda entry: entry.record() if entry else None)
        return d

    def authenticate(self, login: str, password: str) -> Deferred:
        d = self._fresh_table()
        d.addCallback(self._verify, login, password)
        return d

    def _verify(self, table: dict[str, UserEntry], login: str, password: str) -> Deferred:
        entry = _entry_for(table, login)
        if entry is None:
            d = self._checks.run(verify_unknown_user, password)
            return d.addCallback(lambda _: None)
        # A disabled user's hash is still checked, so the answer takes the usual time.
        stored = entry.password_hash.removeprefix(DISABLED)
        d = self._checks.run(verify_password, password, stored)
        record = entry.record()
        return d.addCallback(lambda ok: record if ok and record.enabled else None)

    def _is_fresh(self) -> bool:
        """The table was looked at less than CHECK_INTERVAL ago and no re-read is running."""
        checked = self._checked_at
        return (not self._reloading and checked is not None
                and self._reactor.seconds() - checked < CHECK_INTERVAL)

    def _fresh_table(self) -> Deferred:
        """Deferred[table]: the current table, after a re-read when one is due."""
        now = self._reactor.seconds()
        if not self._reloading and (self._checked_at is None or now - self._checked_at >= CHECK_INTERVAL):
            self._checked_at = now
            self._reloading = True
            d = deferToThreadPool(self._reactor, self._pool, _read_if_changed, self._path, self._signature)
            d.addBoth(self._reloaded)
        if self._reloading:
            waiter: Deferred = Deferred()
            self._waiters.append(waiter)
            return waiter
        return succeed(self._table)

    def _reloaded(self, result: _Snapshot | None | Failure) -> None:
        """Back on the reactor: adopt the new table (or log why not) and release the waiters."""
        if isinstance(result, Failure):
            maillog.error("users-file", path=self._path, reason=result.getErrorMessage())
        elif result is not None:
            self._adopt(result)
        self._reloading = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._table)

    def _adopt(self, snapshot: _Snapshot) -> None:
        self._signature = snapshot.signature
        for problem in snapshot.problems:
            maillog.error("users-file", problem=problem)
        if snapshot.table is not None:
            self._table = snapshot.table


def _entry_for(table: dict[str, UserEntry], address: str) -> UserEntry | None:
    try:
        return table.get(addr.normalise(address))
    except addr.AddressSyntaxError:
        return None
