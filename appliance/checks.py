"""What `mailappliance check` and twistd's start-up verify beyond the configuration's syntax.

appliance.config says whether the file is well formed, without looking further. This module
looks at what the file names: folders that must be writable, the certificate and its key, the
users and aliases files, the smarthost's and LDAP's files, and (for `check`) whether the LDAP
directory answers. Problems read `FILE: [section] key: what is wrong`, like config's, so the
operator reads one form of line whichever of the two found the mistake.

`warnings` is the second kind of finding: what parses and loads but will not do what the
operator meant (an alias to nobody, a user outside the domains, a certificate for another name
or about to expire). Those are `FILE:LINE: warning: ...` lines: `check` prints them and exits 0,
twistd logs them and starts.
"""
from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterator

from cryptography import x509
from cryptography.x509.oid import NameOID

from appliance import address, aliases, dkimkeys, queue, tls
from appliance.config import Config, Problems
from appliance.directory.file import UserFileError, check_users_file, list_users, parse_line
from appliance.directory.ldap import LDAPClient, read_bind_password
from appliance.errors import ConfigError, DirectoryUnavailable

TLS_SERVICES = ("submission", "smtps", "pop3s", "imaps", "web")   # services that cannot run without a certificate
EXPIRY_WARNING_DAYS = 14        # as certbot renews at 30 days left, a pair this close did not renew
# RFC 2606 and RFC 6761: names that never reach anybody, so mail to them always bounces.
RESERVED_TLDS = ("example", "test", "invalid", "localhost")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
# The definitions of etc/aliases (comments and blank lines left out), hashed: that file copied
# unchanged sends root's mail to admin@example.test. tests/unit/test_check_warnings.py keeps it current.
SAMPLE_ALIASES_SHA256 = "d40b402ca716fdb7a3fb2b3a555bb0f156c8fd11e3a19831b25182de79aebfcc"

# address -> True (a user has it), False (nobody), None (could not tell)
Known = Callable[[str], "bool | None"]


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
    if not starting:        # at start an expired certificate is logged: port 25 still takes mail
        _check_expiry(config, problems)
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
    try:
        table = (aliases.load_aliases(config.aliases.file, config.appliance.domains, config.aliases.allow_commands,
                                      lenient=True) if config.aliases.file else None)
    except aliases.AliasesError:
        return []                       # an unreadable file is check_files' error
    where = config.aliases.file or config.path     # the file to add the alias to
    warnings = []
    for domain in config.appliance.domains:
        for role in aliases.ALWAYS_ANSWERED:
            addr = f"{role}@{domain}"
            targets = (table.resolve(addr) if table else None) or [addr]
            if not any(t in known_users or not t.endswith("@" + domain) and "@" in t for t in targets):
                warnings.append(f"{where}: warning: {addr} reaches no user; add `{role}: someone` to the aliases file")
    return warnings


def mailbox_warnings(config: Config, users: list[str]) -> list[str]:
    """Users the store will not deliver to, because their mailbox path is refused: a name that
    would be another mailbox's side file (mbox: `bob.lock` is bob's dot-lock) or could leave the
    mail tree. Their mail waits in the queue (4.2.0 retries) until the name is changed.
    """
    from appliance.store import FORMATS, mailbox_path
    side_files = FORMATS[config.storage.format].side_files
    lines = _numbered_users(config.directory.users_file)
    warnings = []
    for user in users:
        try:
            mailbox_path(config.storage.path, user, side_files)
        except ValueError as exc:
            where = _at(config.directory.users_file, lines.get(user))
            warnings.append(f"{where}: warning: {user} gets no {config.storage.format} mailbox: {exc}; "
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


def _check_expiry(config: Config, problems: Problems) -> None:
    """An expired certificate is an error for `check`: every client that verifies refuses it."""
    leaf = _leaf(config)
    if leaf is not None and leaf.not_valid_after_utc.timestamp() <= time.time():
        problems.add("tls", "certificate", f"{config.tls.certificate} expired on {_date(leaf)}; renew it")


# ---------------------------------------------------------------- meaning errors: warnings

def warnings(config: Config, *, starting: bool = False, now: float | None = None,
             known: Known | None = None) -> list[str]:
    """What parses but will not do what the operator meant, one `FILE:LINE: warning: ...` each.

    Warnings, not errors: `check` prints them and exits 0, twistd logs them and starts. The
    mail concerned fails (an alias target that is nobody refuses the whole alias with 550) or
    goes somewhere unmeant (a user outside [appliance] domains is relayed out), but the rest of
    the server works. `known` says whether an address is a user; by default the users file
    answers, and with LDAP nothing does unless `check` passes a directory_probe.
    """
    now = time.time() if now is None else now
    lines = _certificate_warnings(config, now, starting)
    if config.directory.backend == "file":
        users = _numbered_users(config.directory.users_file)
        primaries = _primary_users(config.directory.users_file)
        lines += role_warnings(config, set(primaries)) + mailbox_warnings(config, primaries)
        lines += _users_outside_domains(config, users)
        known = known or users.__contains__
    lines += _alias_warnings(config, known)
    lines += _dkim_warnings(config)
    return list(dict.fromkeys(lines))


@contextlib.contextmanager
def directory_probe(config: Config) -> Iterator[Known]:
    """`known` for the LDAP backend: asks the directory, all lookups together within [ldap] timeout.

    Why ask at all: an alias to a user that LDAP does not have is the same mistake as with the
    file. Why one deadline: an aliases file of hundreds of names must not keep `check` (and
    `systemctl reload`, which runs it) waiting hundreds of timeouts; what is left unasked is
    counted in one warning line.
    """
    settings = config.ldap
    if settings is None:
        raise ValueError("directory_probe needs [directory] backend = ldap")
    client = LDAPClient(settings, read_bind_password(settings.bind_password_file))
    deadline = time.monotonic() + settings.timeout

    answers: dict[str, bool | None] = {}

    def known(address: str) -> bool | None:
        if address not in answers:
            answers[address] = _ask(client, address, deadline)
        return answers[address]
    try:
        yield known
    finally:
        client.close()


def _ask(client: LDAPClient, address: str, deadline: float) -> bool | None:
    """Whether a user entry, a nisMailAlias or a group has that address; None when LDAP does not say.

    The final targets of the aliases file (and the catch-all's) are delivered to a user, or
    expanded when they name a directory list (intake.RecipientResolver._final), so only an
    address that is neither is refused 550 5.1.1. The list's members are not looked at here:
    `user show` prints them, and the directory is theirs to keep right.
    """
    if time.monotonic() >= deadline:
        return None
    try:
        return (client.find_user(address, deadline) is not None
                or client.find_alias(address, deadline) is not None)
    except DirectoryUnavailable:
        return None


def _line_of(path: str, section: str, key: str) -> int | None:
    """The line where `key` is set in `[section]` of an INI file, None when it is not written."""
    current = None
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                header = re.match(r"\[([^\]]+)\]", line)
                if header:
                    current = header.group(1).strip()
                elif current == section and re.match(rf"{re.escape(key)}\s*[=:]", line, re.IGNORECASE):
                    return number
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _at(path: str, line: int | None) -> str:
    return f"{path}:{line}" if line else path


def _domain_list(config: Config) -> str:
    return ", ".join(config.appliance.domains)


# ---- the certificate

def _leaf(config: Config) -> x509.Certificate | None:
    """The first certificate of [tls] certificate; None when there is none (check_files says why)."""
    if not config.tls.certificate:
        return None
    try:
        with open(config.tls.certificate, "rb") as handle:
            return x509.load_pem_x509_certificates(handle.read())[0]
    except (OSError, ValueError, IndexError):
        return None


def _date(certificate: x509.Certificate) -> str:
    return certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names a client checks: subjectAltName, or the common name when there is none."""
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def name_matches(hostname: str, names: list[str]) -> bool:
    """Whether a verifying client accepts `hostname` for these names; a wildcard covers exactly
    one left-most label (RFC 6125 6.4.3), as OpenSSL checks it."""
    hostname = hostname.lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in names):
        if name == hostname:
            return True
        if name.startswith("*.") and "." in hostname and hostname.split(".", 1)[1] == name[2:] \
                and hostname.split(".", 1)[0]:
            return True
    return False


def _certificate_warnings(config: Config, now: float, starting: bool) -> list[str]:
    leaf = _leaf(config)
    if leaf is None:
        return []
    path, lines = config.tls.certificate, []
    names = certificate_names(leaf)
    if not name_matches(config.appliance.hostname, names):
        where = _at(config.path, _line_of(config.path, "appliance", "hostname"))
        lines.append(f"{where}: warning: [appliance] hostname: {config.appliance.hostname} is not among the "
                     f"names of {path} ({', '.join(names) or 'none'}); clients that verify the certificate "
                     "refuse it")
    left = leaf.not_valid_after_utc.timestamp() - now
    if left <= 0 and starting:
        lines.append(f"{path}: warning: [tls] certificate: expired on {_date(leaf)}; clients that verify "
                     "refuse it until it is renewed")
    elif 0 < left < EXPIRY_WARNING_DAYS * 86400:
        lines.append(f"{path}: warning: [tls] certificate: expires in {int(left // 86400)} days ({_date(leaf)}); "
                     "renew it, then reload (systemctl reload mailappliance)")
    return lines


# ---- users

def _numbered_users(users_file: str) -> dict[str, int]:
    """Every address of the users file (primary and granted) -> its line; bad lines are left out
    (check_users_file reports them)."""
    found: dict[str, int] = {}
    try:
        with open(users_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return found
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = parse_line(line)
        except ValueError:
            continue
        for each in (entry.address, *entry.extra_addresses):
            found.setdefault(each, number)
    return found


def _primary_users(users_file: str) -> list[str]:
    try:
        return list_users(users_file)
    except UserFileError:
        return []                       # check_files reports an unreadable users file


def _users_outside_domains(config: Config, users: dict[str, int]) -> list[str]:
    """A user whose domain is not ours gets no mail: RCPT for it is relayed out (or refused)."""
    return [f"{config.directory.users_file}:{number}: warning: {user} is not in [appliance] domains "
            f"({_domain_list(config)}): mail to it is sent out to {address.domain_of(user)}'s MX, "
            "never delivered here"
            for user, number in users.items() if not address.in_domains(user, config.appliance.domains)]


# ---- aliases and catch-all

def reserved(domain: str) -> bool:
    """A domain RFC 2606 keeps for examples: mail to it can never be delivered."""
    domain = domain.lower().rstrip(".")
    return domain.rsplit(".", 1)[-1] in RESERVED_TLDS or any(
        domain == d or domain.endswith("." + d) for d in RESERVED_DOMAINS)


def _alias_warnings(config: Config, known: Known | None) -> list[str]:
    path, domains = config.aliases.file, config.appliance.domains
    lines: list[str] = []
    unanswered: list[str] = []
    if path and os.path.exists(path):
        try:
            table = aliases.load_aliases(path, domains, config.aliases.allow_commands, lenient=True)
        except aliases.AliasesError:
            return []                   # an unreadable file is check_files' error
        if _is_sample(path):
            lines.append(f"{path}: warning: this is the sample aliases file (etc/aliases) unchanged; "
                         "its names are examples: write your own")
        for name, targets, where in table.definitions():
            if not address.in_domains(name, domains):
                lines.append(f"{where}: warning: {name} is not in [appliance] domains ({_domain_list(config)}): "
                             "this alias is never used, mail to it is relayed or refused")
                continue
            for target in targets:
                if aliases.is_command_or_file(target):
                    continue
                final = target if "@" in target else f"{target}@{address.domain_of(name)}"
                problem = _target_problem(final, name, table, config, known, unanswered)
                if problem:
                    lines.append(f"{where}: warning: {name} -> {final}: {problem}")
    lines.sort(key=_line_number)        # a bare name's domains and full addresses come in file order
    lines += _catch_all_warnings(config, known, unanswered)
    if unanswered:
        lines.append(f"{config.path}: warning: [ldap] url: {len(unanswered)} alias target(s) not looked up, "
                     f"the directory did not answer in time (first: {unanswered[0]})")
    return lines


def _line_number(warning: str) -> int:
    """The LINE of `FILE:LINE: warning: ...`; 0 for a line about the whole file."""
    match = re.match(r"[^:]*:(\d+): warning:", warning)
    return int(match.group(1)) if match else 0


def _target_problem(final: str, name: str, table: aliases.AliasTable, config: Config, known: Known | None,
                    unanswered: list[str]) -> str | None:
    """Why mail to `final` (a target of alias `name`) cannot arrive; None when it can or we cannot tell."""
    if not address.in_domains(final, config.appliance.domains):
        domain = address.domain_of(final)
        return (f"{domain} is a reserved example domain (RFC 2606), mail to it cannot be delivered"
                if reserved(domain) else None)
    if address.normalise(final) != address.normalise(name):
        try:
            if table.resolve(final) is not None:
                return None             # another alias: its own line is looked at
        except (aliases.AliasLoopError, aliases.AliasBrokenError):
            return None                 # check_files reports loops and broken lines
    if known is None:
        return None
    answer = known(address.normalise(final))
    if answer is None and final not in unanswered:
        unanswered.append(final)
    return f"no such user; mail to {name} is refused (550 5.1.1)" if answer is False else None


def _catch_all_warnings(config: Config, known: Known | None, unanswered: list[str]) -> list[str]:
    lines = []
    where = _at(config.path, _line_of(config.path, "aliases", "catch_all"))
    for domain, target in config.aliases.catch_all:
        if address.in_domains(target, config.appliance.domains) and known is not None:
            answer = known(address.normalise(target))
            if answer is None and target not in unanswered:
                unanswered.append(target)
            elif not answer:
                lines.append(f"{where}: warning: [aliases] catch_all: {domain} -> {target}: no such user; "
                             f"mail to unknown users of {domain} is refused (550 5.1.1)")
        elif reserved(address.domain_of(target)):
            lines.append(f"{where}: warning: [aliases] catch_all: {domain} -> {target}: a reserved example "
                         "domain (RFC 2606), mail to it bounces")
    return lines


def _is_sample(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return False
    return sample_digest(text) == SAMPLE_ALIASES_SHA256


def sample_digest(text: str) -> str:
    """The hash of an aliases file's definitions: comments and blank lines do not count."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# ---- DKIM keys

def _dkim_warnings(config: Config) -> list[str]:
    """Key files the server's user cannot read: that mail goes out unsigned (logged per message).

    The server's user is taken to be state_dir's owner (systemd's StateDirectory= makes it so;
    `dkim keygen` gives new keys that owner too), since `check` often runs as root, who reads
    everything and so cannot just try.
    """
    try:
        owner = os.stat(config.appliance.state_dir).st_uid
    except OSError:
        return []
    if owner == 0:
        return []
    folder = dkimkeys.keys_folder(config.appliance.state_dir, config.dkim.keys)
    groups = _groups_of(owner)
    lines = []
    for domain in config.appliance.domains:
        try:
            keys = dkimkeys.stored_keys(folder, domain)
        except OSError:
            keys = []
        for key in keys:
            reachable = all(_allowed(p, owner, groups, stat.S_IXUSR) for p in (folder, os.path.dirname(key.path)))
            if not (reachable and _allowed(key.path, owner, groups, stat.S_IRUSR)):
                lines.append(f"{key.path}: warning: [dkim] keys: not readable by uid {owner} (the owner of "
                             f"{config.appliance.state_dir}, who runs the server); mail from @{domain} goes "
                             "out unsigned")
    return lines


def _groups_of(uid: int) -> set[int]:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}


def _allowed(path: str, uid: int, groups: set[int], user_bit: int) -> bool:
    """The permission bit `user_bit` (as for the owner) for uid, from the file's mode and owner."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if info.st_uid == uid:
        return bool(info.st_mode & user_bit)
    if info.st_gid in groups:
        return bool(info.st_mode & (user_bit >> 3))
    return bool(info.st_mode & (user_bit >> 6))
