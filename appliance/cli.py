"""The `mailappliance` admin command: check the configuration, make a certificate, manage users, demo."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.utils
import getpass
import json
import os
import pwd
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence

from appliance import (address, checks, config, control, dkimkeys, dnsrecords, listenbind, pickup, queue,
                       statusview, tls)
from appliance.directory.file import (UserFileError, add_user, delete_user, grant_address, list_users, own_quotas,
                                      set_password, set_quota)
from appliance.envelope import Envelope
from appliance.errors import ConfigError, QueueWriteError
from appliance.message import has, headers, prepend, remove
from appliance.usershow import ShowError, show_user

DEMO_USER = "demo@example.test"
DEMO_DOMAIN = "example.test"

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
    parser.add_argument("--config", type=config.chosen_path, default=config.chosen_path(None), metavar="PATH",
                        help=f"the configuration file (default: ${config.ENVIRONMENT_VARIABLE}, "
                             f"else {config.DEFAULT_PATH})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = _command(commands, "check", _check, "validate the whole configuration and print a summary")
    check.add_argument("--verbose", "-v", action="store_true", help="also print every setting, defaults included")
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
    for verb, text in (("grant", "give a user another address: mail to it arrives, and they may send as it"),
                       ("revoke", "take back an address given with grant")):
        sub = _command(user_commands, verb, _user_grant, text)
        sub.add_argument("address")
        sub.add_argument("extra")
    _command(user_commands, "list", _user_list, "list users")
    sub = _command(user_commands, "quota", _user_quota, "give a user their own storage limit instead of "
                   "[storage] quota: SIZE such as 500M or 2G, 0 for unlimited, none to follow [storage] quota again")
    sub.add_argument("address")
    sub.add_argument("size")
    _command(user_commands, "show", _user_show,
             "show what the appliance sees for an address (file or LDAP), never a password").add_argument("address")

    demo = _command(commands, "demo", _demo, "write a ready-to-run demo setup into a new folder")
    demo.add_argument("dir")
    demo.add_argument("--hostname", default="mail.example.test")

    queue_command = _command(commands, "queue", _queue, "list the queue; flush it; delete, hold or release a message")
    queue_command.add_argument("action", choices=("list", "flush", "delete", "hold", "release"))
    queue_command.add_argument("id", nargs="?", help="the queue id, as `queue list` shows it")
    sendmail = _command(commands, "sendmail", _sendmail, "send a message read from standard input (for cron "
                        "jobs and scripts; works while the daemon is stopped)")
    sendmail.add_argument("-f", dest="sender", metavar="SENDER", help="envelope sender (default: you@first domain)")
    sendmail.add_argument("-F", dest="full_name", metavar="NAME", help="full name for an added From: header")
    sendmail.add_argument("-t", action="store_true", dest="from_headers",
                          help="also send to the To, Cc and Bcc addresses; Bcc is removed")
    sendmail.add_argument("-i", "-oi", action="store_true", dest="ignore_dots",
                          help="a line with a single dot does not end the message")
    sendmail.add_argument("recipients", nargs="*", metavar="RCPT")
    _dkim_parser(commands)
    _add_backup_commands(commands)
    _dns_parser(commands)
    _command(commands, "status", _status, "one screen from the running daemon: services, queue, mail of the "
             "last hour and day, rejections, failed logins, disk, certificate")
    return parser


def _command(commands, name: str, run: Callable[[argparse.Namespace], int] | None, text: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=text, description=text)
    sub.set_defaults(run=run)
    return sub


# ---------------------------------------------------------------- check, gen-cert

def _check(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    problems = checks.check_files(cfg)
    bind_problems, bind_warnings = _trial_binds(cfg)
    problems += bind_problems
    if problems:
        raise ConfigError(problems)
    directory = checks.check_ldap(cfg) if cfg.ldap else None
    for line in summary(cfg, directory) + bind_warnings:
        print(line)
    # Warnings exit 0: `systemctl reload` runs `check` first and must not stop on them.
    with checks.directory_probe(cfg) if cfg.ldap else contextlib.nullcontext() as known:
        for line in checks.warnings(cfg, known=known):
            print(line)
    for line in checks.queue_warnings(cfg):
        print(line)
    if getattr(args, "verbose", False):
        for line in config.describe(cfg):       # the start-up log has only a summary
            print(line)
    return 0


def _trial_binds(cfg: config.Config) -> tuple[list[str], list[str]]:
    """Bind and close every [listen] address, unless our daemon runs (its own ports are busy then)."""
    if listenbind.daemon_running(cfg.appliance.state_dir):
        return [], []
    problems, warnings = listenbind.bind_problems(_listeners(cfg))
    return [f"{cfg.path}: {problem}" for problem in problems], warnings


def _listeners(cfg: config.Config) -> dict[str, str]:
    """Every [listen] key with its endpoint ("" when off): the mail services and the web listener."""
    return dataclasses.asdict(cfg.listen)


def summary(cfg: config.Config, directory: str | None = None) -> list[str]:
    """What `check` prints when all is well; `directory` is what the LDAP check found."""
    services = [(name, endpoint) for name, endpoint in _listeners(cfg).items() if endpoint]
    lines = [f"{cfg.path}: OK",
             f"hostname    {cfg.appliance.hostname}",
             f"domains     {', '.join(cfg.appliance.domains)}"]
    lines += [f"{name:<11} {endpoint}" for name, endpoint in services] or ["services    none: [listen] is empty"]
    if cfg.directory.backend == "file":
        count = len(list_users(cfg.directory.users_file))
        lines.append(f"directory   file {cfg.directory.users_file}, {count} user{'s' if count != 1 else ''}")
    else:
        lines.append(f"directory   {cfg.directory.backend}: {directory}")
    return lines + _quota_summary(cfg)


def _quota_summary(cfg: config.Config) -> list[str]:
    """One `quota` line when some limit is set: the default and where users' own limits come from.

    Usage is not measured here (that would walk every mailbox): `user show` and `status` show it."""
    default = config.format_size(cfg.storage.quota) if cfg.storage.quota else "unlimited"
    if cfg.directory.backend == "file":
        own = len(own_quotas(cfg.directory.users_file))
        if not cfg.storage.quota and not own:
            return []
        return [f"quota       {default} by default, {own} user{'s' if own != 1 else ''} with their own; "
                "`user show ADDRESS` shows usage"]
    if not cfg.storage.quota:
        return []
    source = f", or the user's {cfg.ldap.quota_attribute}" if cfg.ldap and cfg.ldap.quota_attribute else ""
    return [f"quota       {default} by default{source}; `user show ADDRESS` shows usage"]


def _gen_cert(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    cert, key = cfg.tls.certificate, cfg.tls.key
    if not cert:
        raise CommandError(f"{cfg.path}: [tls] certificate is empty; set where the certificate goes")
    for path in (cert, key):
        if os.path.exists(path) and not args.force:
            raise CommandError(f"{path} already exists; add --force to replace it")
    tls.generate_self_signed(cfg.appliance.hostname, cert, key)
    names = ", ".join((cfg.appliance.hostname, *tls.LOOPBACK_NAMES, *tls.LOOPBACK_ADDRESSES))
    print(f"wrote {cert} and {key}: self-signed for {names}, valid 10 years; clients trust it with {cert} "
          "as their CA file")
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


def _user_grant(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    granted = args.user_command == "grant"
    grant_address(_users_file(cfg), args.address, args.extra, granted=granted)
    print(f"{'gave' if granted else 'took back'} {args.extra} {'to' if granted else 'from'} {args.address}")
    return 0


def _user_quota(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.size.strip().lower() == "none":
        limit = None
    else:
        try:
            limit = config.parse_size(args.size)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    set_quota(_users_file(cfg), args.address, limit)
    if limit is None:
        print(f"{args.address} follows [storage] quota ({config.format_size(cfg.storage.quota)})")
    else:
        print(f"{args.address} may store {config.format_size(limit)}")
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


def _user_show(args: argparse.Namespace) -> int:
    """Works for both backends: unlike the other user commands it only reads."""
    cfg = config.load(args.config)
    problems = checks.check_ldap_files(cfg)    # LDAP's password is read before the first search
    if problems:
        raise ConfigError(problems)
    try:
        print("\n".join(show_user(cfg, args.address)))
    except ShowError as exc:
        raise CommandError(str(exc)) from None
    return 0


# ---------------------------------------------------------------- demo

def _demo(args: argparse.Namespace) -> int:
    folder = os.path.abspath(args.dir)
    path = os.path.join(folder, "mailappliance.conf")
    if os.path.exists(path):
        raise CommandError(f"{path} already exists; give a new folder")
    listen, notes = demo_listen(as_root=os.geteuid() == 0)
    listen["web"] = demo_web_listen()
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(_DEMO_CONFIG.format(hostname=args.hostname, domain=DEMO_DOMAIN,
                                         listen="".join(f"{name} = {value}\n" for name, value in listen.items())))
    cfg = config.load(path)
    tls.generate_self_signed(cfg.appliance.hostname, cfg.tls.certificate, cfg.tls.key)
    password = secrets.token_urlsafe(12)
    add_user(cfg.directory.users_file, DEMO_USER, password)
    problems = checks.check_files(cfg)
    if problems:
        raise ConfigError(problems)
    print("\n".join(_demo_instructions(cfg, listen, password, notes)))
    return 0


def demo_listen(as_root: bool, try_bind: Callable[[listenbind.Address], OSError | None] = listenbind.try_bind,
                ) -> tuple[dict[str, str], list[str]]:
    """The demo's [listen] values, and a note for every service that did not get its usual port.

    Standard ports on every interface as root, otherwise unprivileged ports on 127.0.0.1. A port
    something else holds (another MTA on 25, an earlier demo) is never written: the next choice
    is the unprivileged port, then any free port on 127.0.0.1, so the demo starts as written.
    """
    listen: dict[str, str] = {}
    notes: list[str] = []
    for name, (standard, unprivileged) in _DEMO_PORTS.items():
        choices = [(f"tcp:{standard}", listenbind.Address(standard, "", socket.AF_INET))] if as_root else []
        choices.append((f"tcp:{unprivileged}:interface=127.0.0.1",
                        listenbind.Address(unprivileged, "127.0.0.1", socket.AF_INET)))
        taken = []
        for description, address in choices:
            error = try_bind(address)
            if error is None:
                break
            taken.append(listenbind.reason(error, address.port))
        else:
            description = f"tcp:{listenbind.free_port('127.0.0.1')}:interface=127.0.0.1"
        listen[name] = description
        if taken:
            notes.append(f"{name}: {', '.join(taken)}; using port {_port(description)} on 127.0.0.1 instead")
    return listen, notes


_DEMO_WEB_PORT = 8443


def demo_web_listen(try_bind: Callable[[listenbind.Address], OSError | None] = listenbind.try_bind) -> str:
    """The demo's status page: on 127.0.0.1 only, as root too (loopback sees it without a login),
    port 8443 or else any free one."""
    if try_bind(listenbind.Address(_DEMO_WEB_PORT, "127.0.0.1", socket.AF_INET)) is None:
        return f"tcp:{_DEMO_WEB_PORT}:interface=127.0.0.1"
    return f"tcp:{listenbind.free_port('127.0.0.1')}:interface=127.0.0.1"


def _port(description: str) -> str:
    return description.split(":")[1]


def _demo_instructions(cfg: config.Config, listen: dict[str, str], password: str,
                       notes: Sequence[str] = ()) -> list[str]:
    folder = os.path.dirname(cfg.path)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    submission_port = _port(listen["submission"])
    return [
        f"Demo written to {folder}.",
        *(["", "Ports changed because the usual ones are taken:"] if notes else []),
        *(f"  {note}" for note in notes),
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
        f"Then read it over IMAP on port {_port(listen['imap'])} (STARTTLS) "
        f"or {_port(listen['imaps'])} (TLS), or POP3.",
        *([f"The status page (from this machine, no login): https://127.0.0.1:{_port(listen['web'])}/"]
          if listen.get("web") else []),
        *_client_settings(cfg, listen, password),
    ]


def _client_settings(cfg: config.Config, listen: dict[str, str], password: str) -> list[str]:
    """Ready-to-paste settings for one sending and one reading client, verifying the certificate.

    The self-signed certificate is its own CA file, and it names localhost, 127.0.0.1 and ::1
    (tls.generate_self_signed), so both clients check it instead of being told not to. fetchmail
    compares host names only, never IP addresses, hence `poll localhost`.
    """
    folder = os.path.dirname(cfg.path)
    msmtp = ["account demo", "host 127.0.0.1", f"port {_port(listen['submission'])}", "tls on", "tls_starttls on",
             f"tls_trust_file {cfg.tls.certificate}", "auth on", f"user {DEMO_USER}", f"password {password}",
             f"from {DEMO_USER}", "account default : demo"]
    fetchmail = [f"poll localhost service {_port(listen['pop3s'])} protocol POP3 auth password",
                 f'  user "{DEMO_USER}" password "{password}"',
                 f'  ssl sslcertck sslcertfile "{cfg.tls.certificate}"',
                 f'  mda "cat > {folder}/fetched-$$.eml"']
    return ["",
            "msmtp (sending): put these lines in ~/.msmtprc (mode 0600), then `msmtp demo@example.test < FILE`:",
            *(f"  {line}" for line in msmtp),
            "",
            f"fetchmail (reading, POP3 over TLS): put these lines in ~/.fetchmailrc (mode 0600), then `fetchmail`;",
            f"each message is saved as {folder}/fetched-NUMBER.eml and removed from the server:",
            *(f"  {line}" for line in fetchmail)]


# ---------------------------------------------------------------- queue

def _queue(args: argparse.Namespace) -> int:
    """`list` reads the spool from disk; the rest go to the daemon, or to the spool when it is down."""
    cfg = config.load(args.config)
    spool_dir = os.path.join(cfg.appliance.state_dir, "queue")
    if args.action in ("list", "flush") and args.id:
        raise CommandError(f"queue {args.action} takes no queue id")
    if args.action not in ("list", "flush") and not args.id:
        raise CommandError(f"queue {args.action} needs a queue id, as `queue list` shows it")
    if args.action == "list":
        envelopes, damaged = queue.read_spool(spool_dir)
        for line in queue_listing(envelopes, time.time(), damaged):
            print(line)
        return 0
    command = f"{args.action} {args.id}" if args.id else args.action
    if args.id and not control.valid_id(args.id):
        raise CommandError(f"{args.id!r} is not a queue id; `queue list` shows them")
    path = control.socket_path(cfg.appliance.state_dir)
    try:
        ok, text = control.ask(path, command)
    except control.NotRunning:
        if args.action == "flush":
            raise CommandError(f"the daemon is not running (nobody answers on {path}); "
                               "flush asks the running daemon to retry now") from None
        text = _edit_offline(spool_dir, args.action, args.id, path)
        ok = True
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from None
    if not ok:
        raise CommandError(text)
    print(text)
    return 0


def _edit_offline(spool_dir: str, action: str, qid: str, path: str) -> str:
    """delete/hold/release on the spool itself, when no daemon runs."""
    try:
        queue.edit_offline(spool_dir, qid, action)
    except KeyError:
        raise CommandError(f"{qid}: no such message in the queue") from None
    except queue.SpoolLocked:
        raise CommandError(f"the daemon holds the queue but does not answer on {path}") from None
    except QueueWriteError as exc:
        raise CommandError(f"could not save the change: {exc}") from None
    return f"{control.ACTIONS[action]} {qid} (the daemon is not running; the change is in the spool)"


def queue_listing(envelopes: list[Envelope], now: float, damaged: Sequence[queue.DamagedRecord] = ()) -> list[str]:
    """What `queue list` prints: one line per message, then one per recipient still to deliver;
    then every damaged record of the spool (kept aside in queue/corrupt/)."""
    return _message_listing(envelopes, now) + queue.damage_lines(damaged)


def _message_listing(envelopes: list[Envelope], now: float) -> list[str]:
    if not envelopes:
        return ["the queue is empty"]
    lines = [f"{'QUEUE ID':<18} {'AGE':>5} {'SIZE':>9}  SENDER"]
    held = 0
    for envelope in sorted(envelopes, key=lambda e: e.received_at):
        held += envelope.held
        mark = "  (held)" if envelope.held else ""
        lines.append(f"{envelope.id:<18} {_age(now - envelope.received_at):>5} {envelope.size:>9}  "
                     f"<{envelope.sender}>{mark}")
        for rcpt in envelope.pending():
            lines.append(f"    {rcpt.address}  ({' '.join(rcpt.last_error.split()) or 'not tried yet'})")
    count = len(envelopes)
    lines.append(f"{count} message{'' if count == 1 else 's'}" + (f", {held} held" if held else ""))
    return lines


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------- sendmail

# sysexits(3) codes, what cron, mail programs and retrying scripts understand: 0 means queued.
EX_USAGE, EX_DATAERR, EX_TEMPFAIL, EX_CONFIG = 64, 65, 75, 78
_LOCAL_USERS = ("for local users the state folder must be mode 0751 and its pickup folder 1733 "
                "(docs/operations.md, sendmail)")


class _NotQueued(CommandError):
    """The message could not be left for the daemon; nothing was sent, trying again is safe."""


def _sendmail(args: argparse.Namespace) -> int:
    """Exit 0 exactly when the message is queued; otherwise one line and a sysexits code.

    A cron job or script retries on a non-zero status, so a message that went must never
    report failure (that would send it twice), and one that did not go must never report 0.
    """
    try:
        _send(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    except _NotQueued as exc:
        print(f"mailappliance: not sent: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except CommandError as exc:
        print(f"mailappliance: {exc}", file=sys.stderr)
        return EX_DATAERR if str(exc).startswith("message too large") else EX_USAGE
    except OSError as exc:          # reading standard input: nothing was left for the daemon
        print(f"mailappliance: not sent: {exc.strerror or exc}", file=sys.stderr)
        return EX_TEMPFAIL
    return 0


def _send(args: argparse.Namespace) -> None:
    """Prepare the message as sendmail(1) does and leave it in the pickup folder; silent on success."""
    cfg = config.load(args.config)
    domain, login = cfg.appliance.domains[0], _login_name()
    sender = _qualify(args.sender, domain) if args.sender is not None else f"{login}@{domain}"
    message = pickup.wire_form(_read_message(sys.stdin.buffer, args.ignore_dots))
    recipients = [_qualify(r, domain) for arg in args.recipients for r in arg.split(",") if r.strip()]
    if args.from_headers:
        extracted, message = _recipients_from_headers(message)
        recipients += [_qualify(r, domain) for r in extracted]
    if not recipients:
        raise CommandError("no recipients: give them as arguments, or use -t to read To, Cc and Bcc")
    message = _complete_headers(message, sender or f"{login}@{domain}", args.full_name, cfg.appliance.hostname)
    if len(message) > cfg.limits.max_message_size:
        raise CommandError(f"message too large: {len(message)} bytes, [limits] max_message_size is "
                           f"{cfg.limits.max_message_size}")
    folder = _pickup_folder(cfg.appliance.state_dir)
    try:
        pickup.write(folder, sender, list(dict.fromkeys(recipients)), message)
    except OSError as exc:
        raise _NotQueued(f"cannot write to {folder}: {exc.strerror}; {_LOCAL_USERS}") from None


def _login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def _qualify(text: str, domain: str) -> str:
    """`root` becomes root@first-domain (as Postfix appends $myorigin); <> and "" are the null sender."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text:
        return ""
    if "@" not in text:
        text = f"{text}@{domain}"
    if not address.is_valid(text):
        raise CommandError(f"{text!r} is not a mail address")
    return text


def _read_message(stream, ignore_dots: bool) -> bytes:
    """Standard input; without -i a line holding only "." ends the message, as in sendmail."""
    data = stream.read()
    if ignore_dots:
        return data
    match = re.search(rb"(?m)^\.\r?$", data)
    return data[: match.start()] if match else data


def _recipients_from_headers(message: bytes) -> tuple[list[str], bytes]:
    """The To, Cc and Bcc addresses, and the message without its Bcc header (sendmail -t)."""
    values = [" ".join(value.decode("utf-8", "replace").split())
              for name, value in headers(message) if name.lower() in (b"to", b"cc", b"bcc")]
    addresses = [addr for _, addr in email.utils.getaddresses(values) if addr]
    return addresses, remove(message, "bcc")


def _complete_headers(message: bytes, sender: str, full_name: str | None, hostname: str) -> bytes:
    """Add the From, Date and Message-ID a script left out (RFC 5322 requires From and Date)."""
    present = headers(message)
    added = []
    if not has(present, "From"):
        added.append(("From", email.utils.formataddr((full_name or "", sender))))
    if not has(present, "Date"):
        added.append(("Date", email.utils.formatdate(localtime=True)))
    if not has(present, "Message-ID"):
        added.append(("Message-ID", email.utils.make_msgid(domain=hostname)))
    return prepend(message, *added)


def _pickup_folder(state_dir: str) -> str:
    """state_dir/pickup; made here (mode 1733, owned like state_dir) if the daemon never ran."""
    folder = os.path.join(state_dir, pickup.FOLDER)
    try:
        os.stat(folder)
        return folder
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _NotQueued(f"cannot write to {folder}: {exc.strerror}; {_LOCAL_USERS}") from None
    try:
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, pickup.FOLDER_MODE)
        if os.geteuid() == 0:
            owner = os.stat(state_dir)
            os.chown(folder, owner.st_uid, owner.st_gid)
    except OSError as exc:
        raise _NotQueued(f"cannot create {folder}: {exc.strerror}; start the daemon once, "
                         "it creates the folder") from None
    return folder


# ---------------------------------------------------------------- dkim keygen, dkim show

def _dkim_parser(commands) -> None:
    dkim = _command(commands, "dkim", None, "DKIM signing keys of our domains and the DNS records to publish")
    actions = dkim.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    keygen = _command(actions, "keygen", _dkim_keygen, "make a signing key for a domain (RSA 2048, and ed25519 "
                      "when [dkim] ed25519 = yes) and print the DNS TXT record to publish")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", help="the key's DNS name is SELECTOR._domainkey.DOMAIN "
                        "(default: [dkim] selector)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key of that selector")
    show = _command(actions, "show", _dkim_show, "print the DNS TXT records of a domain's existing keys")
    show.add_argument("domain")


def _dkim_domain(cfg: config.Config, text: str) -> str:
    """The domain, refused unless it is one of [appliance] domains.

    Why refuse rather than warn: the signer signs with the key of the From: domain, and only
    our own users' mail is signed; a key for a domain we do not serve would sign mail that
    claims it, which is what an operator's typo (exmaple.test) would silently set up.
    """
    domain = text.strip().lower().rstrip(".")
    if not dkimkeys.is_name(domain):
        raise CommandError(f"{text!r} is not a domain name")
    if domain not in cfg.appliance.domains:
        raise CommandError(f"{domain} is not one of [appliance] domains ({', '.join(cfg.appliance.domains)})")
    return domain


def _dkim_keygen(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    domain = _dkim_domain(cfg, args.domain)
    selector = args.selector.strip().lower() if args.selector else cfg.dkim.selector
    if not all(dkimkeys.is_name(dkimkeys.dns_selector(selector, algorithm)) for algorithm in dkimkeys.ALGORITHMS):
        raise CommandError(f"{args.selector!r} is not a DKIM selector (letters, digits, hyphens, dots)")
    folder = dkimkeys.keys_folder(cfg.appliance.state_dir, cfg.dkim.keys)
    algorithms = (dkimkeys.RSA, dkimkeys.ED25519) if cfg.dkim.ed25519 else (dkimkeys.RSA,)
    try:
        paths = dkimkeys.generate(folder, domain, selector, algorithms, force=args.force,
                                  owner=dkimkeys.owner_for(cfg.appliance.state_dir, folder))
    except dkimkeys.DKIMKeyError as exc:
        raise CommandError(str(exc)) from None
    for path in paths:
        print(f"; wrote {path}")
    print(f"; publish in the DNS zone of {domain}; {_dkim_when(cfg, folder, domain, selector)}")
    for key in dkimkeys.stored_keys(folder, domain):
        if key.path in paths:
            print(dkimkeys.read_record(key))
    return 0


def _dkim_when(cfg: config.Config, folder: str, domain: str, selector: str) -> str:
    """When the new key starts signing: at once, unless the domain has a key of [dkim] selector."""
    configured = dkimkeys.key_path(folder, domain, cfg.dkim.selector, dkimkeys.RSA)
    if selector == cfg.dkim.selector or not os.path.exists(configured):
        return f"mail from @{domain} is signed with it from now on"
    return (f"mail from @{domain} is still signed with selector {cfg.dkim.selector} until [dkim] selector "
            f"= {selector} (and a restart), or until {configured} is removed")


def _dkim_show(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    domain = _dkim_domain(cfg, args.domain)
    folder = dkimkeys.keys_folder(cfg.appliance.state_dir, cfg.dkim.keys)
    try:
        found = dkimkeys.records(folder, domain)
    except dkimkeys.DKIMKeyError as exc:
        raise CommandError(str(exc)) from None
    if not found:
        raise CommandError(f"{domain} has no DKIM key in {folder}; make one with `mailappliance dkim keygen {domain}`")
    print("\n".join(found))
    return 0



# ---------------------------------------------------------------- backup, restore

def _add_backup_commands(commands) -> None:
    backup_command = _command(commands, "backup", _backup, "copy queue, mailboxes, users, keys and config into "
                              "one tar file, while the daemon runs")
    backup_command.add_argument("dest", help="the archive to write, or a folder to write a dated one into")
    restore_command = _command(commands, "restore", _restore, "put a backup back into an empty state folder "
                               "(the configuration too, when --config names no file yet)")
    restore_command.add_argument("src", help="the archive `backup` wrote")


def _backup(args: argparse.Namespace) -> int:
    from appliance import backup    # loaded only for these two commands (tarfile, hashing)
    cfg = config.load(args.config)
    try:
        done = backup.backup(cfg, args.dest)
    except backup.BackupError as exc:
        raise CommandError(str(exc)) from None
    print("\n".join(done.lines))
    return 0


def _restore(args: argparse.Namespace) -> int:
    from appliance import backup    # loaded only for these two commands (tarfile, hashing)
    try:
        done = backup.restore(args.config, args.src)
    except backup.BackupError as exc:
        raise CommandError(str(exc)) from None
    print("\n".join(done.lines))
    return 0


# ---------------------------------------------------------------- dns

def _dns_parser(commands) -> None:
    dns = _command(commands, "dns", _dns, "print the DNS records to publish for a domain, in zone-file form; "
                   "--check resolves them and says what is missing or wrong")
    dns.add_argument("domain")
    dns.add_argument("--check", action="store_true",
                     help="resolve each record (through [delivery] nameservers when set) and print one line "
                          "each: ok, missing, wrong; exit 1 unless all are ok")
    dns.add_argument("--address", action="append", default=[], metavar="IP",
                     help="the server's public address, IPv4 or IPv6, repeat for both (default: the [listen] "
                          "smtp interface, else this host's default-route address when it is public)")


def _dns(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    setup = _dns_setup(cfg, _dkim_domain(cfg, args.domain), args.address)
    made = dnsrecords.records(setup)
    if not args.check:
        print("\n".join(dnsrecords.zone_text(setup, made)))
        return 0
    # Imported here: dnspython, pyspf and the checks cost every other command (sendmail from cron) 0.2 s
    from appliance import dnscheck
    from appliance.filters.syncdns import SyncDNS
    resolver = SyncDNS(cfg.delivery.nameservers, cfg.checks.dns_timeout)
    findings = dnscheck.check(setup, made, resolver)
    for finding in findings:
        print(finding.line())
    bad = [finding for finding in findings if finding.status != dnscheck.OK]
    print(f"{len(findings) - len(bad)} of {len(findings)} records ok" + (f", {len(bad)} to fix" if bad else ""))
    return 1 if bad else 0


def _dns_setup(cfg: config.Config, domain: str, given: list[str]) -> dnsrecords.Setup:
    """What the records are made of: hostname, addresses, [listen] ports, the DKIM keys, the smarthost."""
    try:
        addresses = dnsrecords.find_addresses(given, cfg.listen.smtp)
    except ValueError as exc:
        raise CommandError(f"--address: {exc}") from None
    folder = dkimkeys.keys_folder(cfg.appliance.state_dir, cfg.dkim.keys)
    try:
        keys = dnsrecords.dkim_keys(folder, domain)
    except dkimkeys.DKIMKeyError as exc:
        raise CommandError(str(exc)) from None
    smarthost = cfg.relay.smarthost[0] if cfg.relay.smarthost else ""
    return dnsrecords.Setup(domain, cfg.appliance.hostname, addresses, dataclasses.asdict(cfg.listen), keys,
                            smarthost=smarthost)


# ---------------------------------------------------------------- status

NOT_RUNNING = 3     # as `systemctl status` and LSB init scripts: "program is not running"


def _status(args: argparse.Namespace) -> int:
    """Ask the running daemon (over the control socket) and print its report as one screen."""
    cfg = config.load(args.config)
    path = control.socket_path(cfg.appliance.state_dir)
    try:
        ok, text = control.ask(path, control.STATUS)
    except control.NotRunning:
        why = f"no control socket at {path}" if not os.path.lexists(path) else f"nobody answers on {path}"
        print(f"mailappliance is not running ({why})", file=sys.stderr)
        return NOT_RUNNING
    except TimeoutError:
        raise CommandError(f"the daemon did not answer on {path} within {control.REPLY_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc} (run status as the service's user or root)") from None
    if not ok:
        raise CommandError(f"the daemon refused status: {text}")
    try:
        report = json.loads(text)
    except ValueError:
        raise CommandError("the daemon's status answer is not JSON; is it the same version as this command?") from None
    print("\n".join(statusview.render(report)))
    return 0
