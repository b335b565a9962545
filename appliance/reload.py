"""SIGHUP: read the whole configuration again, and apply all of it or none of it.

Why all or nothing: a half-applied file (the new aliases but the old catch-all, say) is a state
the operator never wrote and cannot see. So the new file is loaded and checked exactly as at
start (config.load, then checks.check_files), every object that depends on it is built aside,
and only when all of that worked are they put in service, in one reactor turn. Sessions
already open finish on the objects they started with; new connections get the new ones.

The reading happens in the reactor thread, once per SIGHUP: the configuration, aliases,
certificate and key are small files, and the one larger read (greylisting's table, when its
keys changed) is what a start does too. Sessions wait for it a moment; none is dropped.

What cannot change without a restart (RESTART_ONLY) refuses the reload with one line naming
the keys; the server goes on with its old settings. What the reload logs, one line:

    reloaded changed="[aliases] catch_all, [limits] max_message_size"
    reload-refused keys="[listen] smtp" reason="..."
    reload-refused problem="FILE: [limits] max_recipients: must be a positive whole number, ..."
"""
from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from appliance import checks, config as configmod, maillog
from appliance.errors import ConfigError

_log = Logger(namespace="mail")

# section -> keys that need a restart ("*": the whole section), and why. Everything else reloads.
RESTART_ONLY: dict[str, tuple[tuple[str, ...], str]] = {
    # Ports are bound once, before twistd drops privileges: a running daemon may not bind 25 again.
    "listen": (("*",), "the listeners are bound at start"),
    # The queue, the pickup folder, the control socket and the checks' state file live there.
    "appliance": (("state_dir",), "the queue and the state files are opened at start"),
    # Open mailboxes, IMAP sessions and the POP3 locks belong to the one store built at start.
    "storage": (("format", "path"), "open mailboxes belong to the store built at start"),
}

Prepare = Callable[[configmod.Config], Callable[[], None]]


def restart_keys(changed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The changed keys that only a restart can apply."""
    return [(section, key) for section, key in changed
            if section in RESTART_ONLY and {"*", key} & set(RESTART_ONLY[section][0])]


def names(keys: list[tuple[str, str]]) -> str:
    return ", ".join(f"[{section}] {key}" for section, key in keys)


def read(path: str) -> tuple[configmod.Config | None, list[str]]:
    """The configuration as twistd's start-up would accept it, or the problem lines.

    Strict about the aliases file (`check`'s rules, not the lenient start): at start there is no
    older table to fall back on, at a reload there is, so a bad line keeps the old table.
    """
    try:
        cfg = configmod.load(path)
        problems = checks.check_files(cfg, starting=False)
    except ConfigError as exc:
        return None, exc.problems
    return (None, problems) if problems else (cfg, [])


class Reloader:
    """Called on SIGHUP (in the reactor thread). `prepare(new)` builds every config-derived
    object without touching the running ones and returns the function that swaps them in;
    it raises ConfigError (or anything else) when the new settings cannot be used."""

    def __init__(self, current: configmod.Config, prepare: Prepare) -> None:
        self.current = current
        self._prepare = prepare

    def __call__(self) -> bool:
        """Reload; True when the new settings are in service."""
        new, problems = read(self.current.path)
        if new is None:
            return _refused(problems)
        changed = configmod.changed(self.current, new)
        needing = restart_keys(changed)
        if needing:
            reasons = sorted({RESTART_ONLY[section][1] for section, _ in needing})
            maillog.emit("reload-refused", keys=names(needing),
                         reason=f"a restart is needed ({'; '.join(reasons)}); the old settings stay in service")
            return False
        try:
            commit = self._prepare(new)
        except ConfigError as exc:
            return _refused(exc.problems)
        except Exception as exc:          # noqa: BLE001 - a reload must never take the server down
            _log.failure("reload: building the new settings failed")
            return _refused([f"{self.current.path}: {exc}"])
        commit()
        self.current = new
        maillog.emit("reloaded", changed=names(changed) or "none")
        return True


def _refused(problems: list[str]) -> bool:
    for problem in problems:
        maillog.emit("reload-refused", problem=problem, settings="old kept")
    return False
