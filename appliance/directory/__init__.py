"""Directory backends (who the users are, and their passwords) and the factory that picks one."""
from __future__ import annotations

from appliance.config import Config
from appliance.directory.file import FileDirectory
from appliance.interfaces import IDirectory


def make_directory(config: Config, reactor, pool) -> IDirectory:
    """The directory named by `[directory] backend`, doing its blocking work in `pool`."""
    backend = config.directory.backend
    if backend == "file":
        return FileDirectory(config.directory.users_file, reactor, pool)
    if backend == "ldap":
        raise NotImplementedError("[directory] backend = ldap is not available yet; use backend = file")
    raise ValueError(f"[directory] backend: unknown backend {backend!r} (expected file or ldap)")
