"""`mailappliance user show ADDRESS`: what the appliance sees for one address, without any secret.

Blocking, for the CLI only: it reads the users file or asks LDAP directly (no reactor, no pool),
and reads the aliases file the way the daemon does, so the operator sees the daemon's view:
which entry holds the address, its primary address and mailbox, its other addresses, whether
logins are enabled, whether a shared secret exists (never the secret), a forward, and what the
address expands to when it is an alias or a list.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from appliance import address as addr
from appliance.aliases import AliasesError, AliasLoopError, load_aliases
from appliance.config import Config, format_size
from appliance.directory.file import UserEntry, index_entries, parse_line
from appliance.directory.ldap import LDAPClient, read_bind_password
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import UserRecord
from appliance.store import FORMATS, mailbox_path
from appliance.store.quota import UsageMeter


class ShowError(Exception):
    """Nothing to show; the message is one line for the terminal."""


@dataclass(frozen=True)
class Found:
    """What a directory backend says about one address."""

    entry: str                         # where the user is defined: a DN, or `FILE line N`
    record: UserRecord | None          # None: the address is no user (it may be an alias)
    forward: str = ""
    directory_targets: tuple[str, ...] | None = None   # LDAP alias/group members, None = not one


def show_user(cfg: Config, address: str) -> list[str]:
    """The lines `user show` prints; ShowError when the address is unusable or unknown here."""
    if not addr.is_valid(address.strip()):
        raise ShowError(f"{address!r} is not a mail address; write user@domain")
    key = addr.normalise(address.strip())
    if not addr.in_domains(key, cfg.appliance.domains):
        raise ShowError(f"{key}: {addr.domain_of(key)} is not one of [appliance] domains "
                        f"({', '.join(cfg.appliance.domains)})")
    found = _from_ldap(cfg, key) if cfg.directory.backend == "ldap" else _from_users_file(cfg.directory.users_file, key)
    file_targets = _file_alias_targets(cfg, key)
    if found.record is None and found.directory_targets is None and file_targets is None:
        raise ShowError(f"{key}: no user, alias or list has this address")
    return [f"{'address':<14} {key}", *_user_lines(cfg, found), *_alias_lines(found, file_targets)]


def _user_lines(cfg: Config, found: Found) -> list[str]:
    record = found.record
    if record is None:
        return [f"{'user':<14} none: {found.entry}"]
    lines = [f"{'entry':<14} {found.entry}",
             f"{'primary':<14} {record.address}",
             f"{'addresses':<14} {', '.join(sorted(record.addresses))}",
             f"{'mailbox':<14} {_mailbox(cfg, record.address)}",
             f"{'logins':<14} {'enabled' if record.enabled else 'disabled'}",
             f"{'shared secret':<14} {'set' if record.shared_secret else 'none'}",
             f"{'quota':<14} {_quota(cfg, record)}"]
    if found.forward:
        lines.append(f"{'forward':<14} {found.forward} (mail goes there, not to the mailbox)")
    return lines


def _quota(cfg: Config, record: UserRecord) -> str:
    """`used of limit (share), where the limit comes from`: the mailbox is measured as the daemon does."""
    own = record.quota is not None
    limit = record.quota if own else cfg.storage.quota
    source = "the user's own" if own else "[storage] quota"
    try:
        path = mailbox_path(cfg.storage.path, record.address, FORMATS[cfg.storage.format].side_files)
        used = UsageMeter().mailbox(FORMATS[cfg.storage.format].account_class(path))
    except (ValueError, OSError) as exc:
        return f"{format_size(limit)} ({source}); usage unknown: {exc}"
    if not limit:
        return f"unlimited ({source}); {_kib(used)} used"
    return f"{_kib(used)} used of {format_size(limit)} ({used * 100 // limit}%; {source})"


def _kib(octets: int) -> str:
    return f"{(octets + 1023) // 1024} KiB"


def _alias_lines(found: Found, file_targets: list[str] | str | None) -> list[str]:
    lines = []
    if file_targets is not None:
        targets = file_targets if isinstance(file_targets, str) else ", ".join(file_targets)
        lines.append(f"{'expands to':<14} {targets} (aliases file)")
    if found.directory_targets is not None:
        note = "" if file_targets is None else "; the aliases file takes precedence"
        lines.append(f"{'expands to':<14} {', '.join(found.directory_targets)} (directory{note})")
    return lines


def _mailbox(cfg: Config, primary: str) -> str:
    try:
        return f"{mailbox_path(cfg.storage.path, primary, FORMATS[cfg.storage.format].side_files)} ({cfg.storage.format})"
    except ValueError as exc:
        return f"none: {exc}"


def _file_alias_targets(cfg: Config, key: str) -> list[str] | str | None:
    """The aliases file's final targets for `key`, a one-line problem, or None when it is no alias."""
    if not cfg.aliases.file:
        return None
    try:
        return load_aliases(cfg.aliases.file, cfg.appliance.domains, cfg.aliases.allow_commands).resolve(key)
    except AliasesError as exc:
        return f"unknown: the aliases file has problems ({exc.problems[0]}); run `mailappliance check`"
    except AliasLoopError as exc:
        return f"nothing: {exc}"


# ---- the backends --------------------------------------------------------------------------------

def _from_users_file(users_file: str, key: str) -> Found:
    """The daemon's view of the users file (first owner of an address wins), with the line number."""
    try:
        with open(users_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as exc:
        raise ShowError(f"{users_file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    entry = index_entries(users_file, lines)[0].get(key)
    if entry is None:
        return Found(entry=f"not in {users_file}", record=None)
    return Found(entry=f"{users_file} line {_line_number(lines, entry)}", record=entry.record())


def _line_number(lines: list[str], entry: UserEntry) -> int:
    for number, line in enumerate(lines, start=1):
        try:
            if parse_line(line) == entry:
                return number
        except ValueError:
            continue
    return 0        # not reached: the entry came from these lines


def _from_ldap(cfg: Config, key: str) -> Found:
    """Ask the directory now, as the service account (no cache), the way the daemon's workers do."""
    settings = cfg.ldap
    client = LDAPClient(settings, read_bind_password(settings.bind_password_file))
    try:
        user = client.find_user(key, time.monotonic() + settings.timeout)
        targets = client.find_alias(key, time.monotonic() + settings.timeout)
    except DirectoryUnavailable as exc:
        raise ShowError(f"the directory could not tell: {exc}") from None
    finally:
        client.close()
    directory_targets = tuple(targets) if targets is not None else None
    if user is None:
        return Found(entry="no user entry in the directory", record=None, directory_targets=directory_targets)
    return Found(entry=user.dn, record=user.record, forward=user.forward, directory_targets=directory_targets)
