"""The `mailappliance` admin command: check the configuration, make a certificate, manage users, demo."""
from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import time
from collections.abc import Callable

from appliance import address, config, tls
from appliance.directory.file import UserFileError, add_user, delete_user, list_users, set_password
from appliance.directory.ldap import LDAPClient, read_bind_password
from appliance.errors import ConfigError, DirectoryUnavailable

DEMO_USER = "demo@example.test"
DEMO_DOMAIN = "example.test"
NOT_YET = "not available yet: arrives with outbound delivery"

# service -> (port as root, unprivileged port on 127.0.0.1 otherwise)
_DEMO_PORTS = {
    "smtp": (25, 2525), "submission": (587, 5870), "smtps": (465, 4650),
    "pop3": (110, 1100), "pop3s": (995, 9950), "imap": (143, 1430), "imaps": (993, 9930),
}

_DEMO_CONFIG = """\
# Written by `mailappliance demo`. Every key, with its default, is described in
# etc/mailappliance.conf of the mailappliance sources.

[appliance]
hostname = {hostname}
domains = {domain}
state_dir = var                       # queue and mailboxes live below this folder

[tls]
certificate = tls/cert.pem            # self-signed, made by the demo command
key = tls/key.pem

[listen]
{listen}
[directory]
backend = file
users_file = users                    # manage with `mailappliance --config THIS_FILE user ...`

[storage]
format = maildir
path = var/mail/{{domain}}/{{local}}
"""


class CommandError(Exception):
    """An operator mistake on the command line; the message is printed as one line."""


def main(argv: list[str] | None = None) -> int:
    """Run one admin command; every failure is one line on standard error and a non-zero exit."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (CommandError, UserFileError) as exc:
        print(f"mailappliance: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mailappliance: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailappliance", description="Administer the mailappliance mail server.")
    parser.add_argument("--config", default=config.DEFAULT_PATH, metavar="PATH",
                        help=f"the configuration file (default: {config.DEFAULT_PATH})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(commands, "check", _check, "validate the whole configuration and print a summary")
    gen_cert = _command(commands, "gen-cert", _gen_cert, "write a self-signed certificate and key to the [tls] paths")
    gen_cert.add_argument("--force", action="store_true", help="replace existing files")

    user = _command(commands, "user", None, "manage the users of the file directory")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for name, run, text in (("add", _user_add, "add a user; password on standard input"),
                            ("passwd", _user_passwd, "change a password; password on standard input")):
        sub = _command(user_commands, name, run, text)
        sub.add_argument("address")
        sub.add_argument("--shared-secret", action="store_true", default=None,
                         help="also keep a cleartext-equivalent secret, for CRAM-MD5 and APOP")
    _command(user_commands, "del", _user_del, "delete a user (the mailbox stays)").add_argument("address")
    _command(user_commands, "list", _user_list, "list users")

    demo = _command(commands, "demo", _demo, "write a ready-to-run demo setup into a new folder")
    demo.add_argument("dir")
    demo.add_argument("--hostname", default="mail.example.test")

    queue = _command(commands, "queue", _not_yet, "inspect and act on the outbound queue")
    queue.add_argument("action", choices=("list", "flush", "delete", "hold", "release"))
    queue.add_argument("id", nargs="?")
    sendmail = _command(commands, "sendmail", _not_yet, "inject a message from standard input")
    sendmail.add_argument("-f", dest="sender")
    sendmail.add_argument("-t", action="store_true", dest="from_headers")
    sendmail.add_argument("-i", action="store_true", dest="ignore_dots")
    sendmail.add_argument("recipients", nargs="*")
    return parser


def _command(commands, name: str, run: Callable[[argparse.Namespace], int] | None, text: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=text, description=text)
    sub.set_defaults(run=run)
    return sub


# ---------------------------------------------------------------- check, gen-cert

def _check(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    problems = config.check_files(cfg)
    if problems:
        raise ConfigError(problems)
    directory = _ldap_status(cfg) if cfg.ldap else None
    for line in summary(cfg, directory):
        print(line)
    if cfg.directory.backend == "file":
        for line in config.role_warnings(cfg, set(list_users(cfg.directory.users_file))):
            print(line)
    return 0


def _ldap_status(cfg: config.Config) -> str:
    """Bind and search as the appliance will; a directory that cannot answer is a problem for `check`."""
    client = LDAPClient(cfg.ldap, read_bind_password(cfg.ldap.bind_password_file))
    try:
        return client.check(time.monotonic() + cfg.ldap.timeout)
    except DirectoryUnavailable as exc:
        raise ConfigError([f"{cfg.path}: [ldap] url: the directory does not answer as needed: {exc}"]) from None
    finally:
        client.close()


def summary(cfg: config.Config, directory: str | None = None) -> list[str]:
    """What `check` prints when all is well; `directory` is what the LDAP check found."""
    services = [(name, getattr(cfg.listen, name)) for name in _DEMO_PORTS if getattr(cfg.listen, name)]
    lines = [f"{cfg.path}: OK",
             f"hostname    {cfg.appliance.hostname}",
             f"domains     {', '.join(cfg.appliance.domains)}"]
    lines += [f"{name:<11} {endpoint}" for name, endpoint in services] or ["services    none: [listen] is empty"]
    if cfg.directory.backend == "file":
        count = len(list_users(cfg.directory.users_file))
        lines.append(f"directory   file {cfg.directory.users_file}, {count} user{'s' if count != 1 else ''}")
    else:
        lines.append(f"directory   {cfg.directory.backend}: {directory}")
    return lines


def _gen_cert(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    cert, key = cfg.tls.certificate, cfg.tls.key
    if not cert:
        raise CommandError(f"{cfg.path}: [tls] certificate is empty; set where the certificate goes")
    for path in (cert, key):
        if os.path.exists(path) and not args.force:
            raise CommandError(f"{path} already exists; add --force to replace it")
    tls.generate_self_signed(cfg.appliance.hostname, cert, key)
    print(f"wrote {cert} and {key}: self-signed for {cfg.appliance.hostname}, valid 10 years")
    return 0


# ---------------------------------------------------------------- user ...

def _users_file(cfg: config.Config) -> str:
    if cfg.directory.backend != "file":
        raise CommandError(f"[directory] backend is {cfg.directory.backend}; "
                           "user commands manage the file backend only")
    return cfg.directory.users_file


def _local_address(cfg: config.Config, text: str) -> str:
    """The normalised address, refused unless its domain is one of ours."""
    if not address.is_valid(text):
        raise CommandError(f"{text!r} is not a mail address; write user@domain")
    if not address.in_domains(text, cfg.appliance.domains):
        raise CommandError(f"{text}: {address.domain_of(text)} is not one of [appliance] domains "
                           f"({', '.join(cfg.appliance.domains)})")
    return address.normalise(text)


def _read_password() -> str:
    """One line from standard input (asked twice, unseen, on a terminal); never from argv."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password refused; give it as one line on standard input")
    return password


def _user_add(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    users_file, user = _users_file(cfg), _local_address(cfg, args.address)
    add_user(users_file, user, _read_password(), shared_secret=bool(args.shared_secret))
    print(f"added {user}")
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    users_file, user = _users_file(cfg), _local_address(cfg, args.address)
    set_password(users_file, user, _read_password(), shared_secret=args.shared_secret)
    print(f"changed the password of {user}")
    return 0


def _user_del(args: argparse.Namespace) -> int:
    # No domain check: a user left over from a domain since removed must still be deletable.
    cfg = config.load(args.config)
    delete_user(_users_file(cfg), args.address)
    print(f"deleted {args.address}; the mailbox stays on disk")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    for user in list_users(_users_file(cfg)):
        print(user)
    return 0


# ---------------------------------------------------------------- demo

def _demo(args: argparse.Namespace) -> int:
    folder = os.path.abspath(args.dir)
    path = os.path.join(folder, "mailappliance.conf")
    if os.path.exists(path):
        raise CommandError(f"{path} already exists; give a new folder")
    listen = demo_listen(as_root=os.geteuid() == 0)
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_DEMO_CONFIG.format(hostname=args.hostname, domain=DEMO_DOMAIN,
                                         listen="".join(f"{name} = {value}\n" for name, value in listen.items())))
    cfg = config.load(path)
    tls.generate_self_signed(cfg.appliance.hostname, cfg.tls.certificate, cfg.tls.key)
    password = secrets.token_urlsafe(12)
    add_user(cfg.directory.users_file, DEMO_USER, password)
    problems = config.check_files(cfg)
    if problems:
        raise ConfigError(problems)
    print("\n".join(_demo_instructions(cfg, listen, password)))
    return 0


def demo_listen(as_root: bool) -> dict[str, str]:
    """Standard ports on every interface as root; otherwise unprivileged ports on 127.0.0.1."""
    if as_root:
        return {name: f"tcp:{ports[0]}" for name, ports in _DEMO_PORTS.items()}
    return {name: f"tcp:{ports[1]}:interface=127.0.0.1" for name, ports in _DEMO_PORTS.items()}


def _demo_instructions(cfg: config.Config, listen: dict[str, str], password: str) -> list[str]:
    folder = os.path.dirname(cfg.path)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    submission_port = listen["submission"].split(":")[1]
    return [
        f"Demo written to {folder}.",
        "",
        "Start the mail server in the foreground (Ctrl-C stops it):",
        f"  {twistd if os.path.exists(twistd) else 'twistd'} -n --pidfile {folder}/twistd.pid "
        f"mailappliance --config {cfg.path}",
        "",
        f"Services (TLS uses the self-signed certificate {cfg.tls.certificate}):",
        *(f"  {name:<11} {endpoint}" for name, endpoint in listen.items()),
        "",
        f"Login:    {DEMO_USER}",
        f"Password: {password}",
        "",
        "Send yourself a message through submission, with STARTTLS and AUTH:",
        f"  swaks --server 127.0.0.1 --port {submission_port} --tls --auth-user {DEMO_USER} "
        f"--auth-password '{password}' --from {DEMO_USER} --to {DEMO_USER}",
        "",
        f"Then read it over IMAP on port {listen['imap'].split(':')[1]} (STARTTLS) "
        f"or {listen['imaps'].split(':')[1]} (TLS), or POP3.",
    ]


def _not_yet(args: argparse.Namespace) -> int:
    print(f"mailappliance: {NOT_YET}", file=sys.stderr)
    return 2
