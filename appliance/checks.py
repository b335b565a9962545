"""What `mailappliance check` and twistd's start-up verify beyond the configuration's syntax.

appliance.config says whether the file is well formed, without looking further. This module
looks at what the file names: folders that must be writable, the certificate and its key, the
users and aliases files, the smarthost's and LDAP's files, and (for `check`) whether the LDAP
directory answers. Problems read `FILE: [section] key: what is wrong`, like config's, so the
operator reads one form of line whichever of the two found the mistake.
"""
from __future__ import annotations

import os
import time

from appliance import aliases, queue, tls
from appliance.config import Config, Problems
from appliance.directory.file import check_users_file
from appliance.directory.ldap import LDAPClient, read_bind_password
from appliance.errors import ConfigError, DirectoryUnavailable

TLS_SERVICES = ("submission", "smtps", "pop3s", "imaps", "web")   # services that cannot run without a certificate


def check_files(config: Config, *, starting: bool = False) -> list[str]:
    """Problems with the files and folders the configuration names; [] when all is usable.

    twistd runs this before anything binds (`starting`), and `check` before it reaches the
    directory: a file that cannot be read at start is reported as one line, never as a
    traceback. A bad aliases line or an alias loop is a problem for `check` but does not stop a
    start: the daemon logs it and defers (451) or refuses (550 5.4.6) mail for those names only.
    """
    problems = Problems(config.path)
    _check_folder(config.appliance.state_dir, "appliance", "state_dir", problems)
    _check_folder(_template_root(config.storage.path), "storage", "path", problems)
    _check_tls(config, problems)
    _check_users_file(config, problems)
    problems.lines += check_ldap_files(config)
    _check_aliases(config, problems, starting=starting)
    _check_relay_files(config, problems)
    _check_hooks(config, problems)
    return problems.lines


def check_ldap_files(config: Config) -> list[str]:
    """The LDAP password and CA files must be readable: both are read before the first search."""
    problems = Problems(config.path)
    if config.ldap is not None:
        for key in ("bind_password_file", "ca_file"):
            path = getattr(config.ldap, key)
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                problems.add("ldap", key, f"{path}: not a readable file")
    return problems.lines


def check_ldap(config: Config) -> str:
    """Bind and search as the appliance will; a summary line, or ConfigError when it cannot.

    Only `check` asks the directory: at start-up an LDAP server that is down is a temporary
    failure the daemon rides out (451/454), not a reason to refuse to start.
    """
    settings = config.ldap
    if settings is None:
        raise ValueError("check_ldap needs [directory] backend = ldap")
    client = LDAPClient(settings, read_bind_password(settings.bind_password_file))
    try:
        return client.check(time.monotonic() + settings.timeout)
    except DirectoryUnavailable as exc:
        raise ConfigError([f"{config.path}: [ldap] url: the directory does not answer as needed: {exc}"]) from None
    finally:
        client.close()


def role_warnings(config: Config, known_users: set[str]) -> list[str]:
    """postmaster and abuse must reach a person (RFC 2142, RFC 5321 4.5.1); say when they do not.

    Warnings, not errors: the server runs, but complaints about it would go nowhere.
    """
    table = (aliases.load_aliases(config.aliases.file, config.appliance.domains, config.aliases.allow_commands)
             if config.aliases.file else None)
    warnings = []
    for domain in config.appliance.domains:
        for role in aliases.ALWAYS_ANSWERED:
            addr = f"{role}@{domain}"
            targets = (table.resolve(addr) if table else None) or [addr]
            if not any(t in known_users or not t.endswith("@" + domain) and "@" in t for t in targets):
                warnings.append(f"warning: {addr} reaches no user; add `{role}: someone` to the aliases file")
    return warnings


def mailbox_warnings(config: Config, users: list[str]) -> list[str]:
    """Users the store will not deliver to, because their mailbox path is refused: a name that
    would be another mailbox's side file (mbox: `bob.lock` is bob's dot-lock) or could leave the
    mail tree. Their mail waits in the queue (4.2.0 retries) until the name is changed.
    """
    from appliance.store import FORMATS, mailbox_path
    side_files = FORMATS[config.storage.format].side_files
    warnings = []
    for user in users:
        try:
            mailbox_path(config.storage.path, user, side_files)
        except ValueError as exc:
            warnings.append(f"warning: {user} gets no {config.storage.format} mailbox: {exc}; "
                            "rename the user (mail for it is retried, then bounced)")
    return warnings


def queue_warnings(config: Config) -> list[str]:
    """Damaged records the spool found and kept aside (queue/corrupt/), one warning line each.

    Warnings, not errors: the daemon starts and delivers everything intact; the operator should
    look at what could not be read. Reading only, safe while the daemon runs.
    """
    spool_dir = os.path.join(config.appliance.state_dir, "queue")
    try:
        _, damaged = queue.read_spool(spool_dir)
    except OSError as exc:
        return [f"warning: {spool_dir}: cannot be read: {exc.strerror or exc}"]
    return [f"warning: {line}" for line in queue.damage_lines(damaged)]


def _check_relay_files(config: Config, problems: Problems) -> None:
    """The smarthost's password and CA files are read at start: say so now, not with a traceback."""
    for key in ("smarthost_password_file", "smarthost_ca_file"):
        path = getattr(config.relay, key)
        if path and not os.access(path, os.R_OK):
            problems.add("relay", key, f"{path} cannot be read")


def _check_hooks(config: Config, problems: Problems) -> None:
    """[checks] hooks are imported at start: a typo is reported here, never a crash mid-session."""
    from appliance.filters import hooks
    for problem in hooks.problems(config.checks.hooks):
        problems.add("checks", "hooks", problem)


def _template_root(template: str) -> str:
    """The fixed folder above every mailbox: the template's path before its first placeholder."""
    return os.path.dirname(template[:template.index("{")]) if "{" in template else os.path.dirname(template)


def _check_folder(path: str, section: str, key: str, problems: Problems) -> None:
    """The appliance must be able to create `path` (or write into it when it exists)."""
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        problems.add(section, key, f"{existing} is not a folder")
    elif not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"is not writable, so {path} cannot be created"
        problems.add(section, key, f"{existing} {what}")


def _check_tls(config: Config, problems: Problems) -> None:
    """The certificate must load and match its key; TLS-only services cannot run without one."""
    needing = [service for service in TLS_SERVICES if getattr(config.listen, service)]
    if not config.tls.certificate:
        if needing:
            problems.add("tls", "certificate", f"empty, but [listen] {', '.join(needing)} need TLS; "
                         "set it and run `mailappliance gen-cert` for a self-signed one")
        return
    try:
        tls.load_pair(config.tls.certificate, config.tls.key)
    except tls.TLSFileError as exc:
        problems.add("tls", exc.key, str(exc))


def _check_users_file(config: Config, problems: Problems) -> None:
    """A missing users file only means "no users yet"; one that cannot be read or parsed is a problem."""
    if config.directory.backend != "file":
        return
    for problem in check_users_file(config.directory.users_file):
        problems.add("directory", "users_file", problem)


def _check_aliases(config: Config, problems: Problems, starting: bool = False) -> None:
    """The aliases file must be readable, parse and hold no loops: the daemon expands it on every RCPT.

    At start only a file that cannot be read is fatal: a bad line or a loop affects only the names
    concerned (aliases.AliasResolver logs them and defers or refuses those names), so a machine
    rebooted with a mistake in the file still takes mail. `check` reports every problem.
    """
    path = config.aliases.file
    if not path:
        return
    if not os.path.exists(path):  # a file named in [aliases] must be there; the default is optional
        problems.add("aliases", "file", f"{path} does not exist; create it, or write `file =` for no aliases")
        return
    try:
        table = aliases.load_aliases(path, config.appliance.domains, config.aliases.allow_commands,
                                     lenient=starting)
    except aliases.AliasesError as exc:
        for problem in exc.problems:
            problems.add("aliases", "file", problem)
        return
    for problem in () if starting else table.loop_problems():
        problems.add("aliases", "file", problem)
