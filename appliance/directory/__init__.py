"""Directory backends (who the users are, and their passwords) and the factory that picks one."""
from __future__ import annotations

from appliance.config import Config
from appliance.directory.file import FileDirectory
from appliance.directory.ldap import LDAPDirectory
from appliance.interfaces import IDirectory
from appliance.passwords import CheckQueue


def make_directory(config: Config, reactor, pool, checks: CheckQueue | None = None) -> IDirectory:
    """The directory named by `[directory] backend`, doing its lookups in `pool` and its
    password checks (scrypt, LDAP binds) in `checks`.

    For LDAP, `pool` should have `[ldap] pool_size` threads: each keeps one service connection.
    """
    backend = config.directory.backend
    if backend == "file":
        return FileDirectory(config.directory.users_file, reactor, pool, checks)
    if backend == "ldap" and config.ldap is not None:
        return LDAPDirectory(config.ldap, reactor, pool, checks=checks)
    raise ValueError(f"[directory] backend: unknown backend {backend!r} (expected file or ldap)")
