"""The `mailappliance` admin command: check the configuration, make a certificate, manage users, demo."""
from __future__ import annotations

import argparse
import email.utils
import getpass
import os
import pwd
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence

from appliance import address, checks, config, control, dkimkeys, pickup, queue, tls
from appliance.directory.file import UserFileError, add_user, delete_user, grant_address, list_users, set_password
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
    parser.add_argument("--config", default=config.DEFAULT_PATH, metavar="PATH",
                        help=f"the configuration file (default: {config.DEFAULT_PATH})")
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
    return parser


def _command(commands, name: str, run: Callable[[argparse.Namespace], int] | None, text: str) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=text, description=text)
    sub.set_defaults(run=run)
    return sub


# ---------------------------------------------------------------- check, gen-cert

def _check(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    problems = checks.check_files(cfg)
    if problems:
        raise ConfigError(problems)
    directory = checks.check_ldap(cfg) if cfg.ldap else None
    for line in summary(cfg, directory):
        print(line)
    if cfg.directory.backend == "file":
        for line in checks.role_warnings(cfg, set(list_users(cfg.directory.users_file))):
            print(line)
        for line in checks.mailbox_warnings(cfg, list_users(cfg.directory.users_file)):
            print(line)
    for line in checks.queue_warnings(cfg):
        print(line)
    if getattr(args, "verbose", False):
        for line in config.describe(cfg):       # the start-up log has only a summary
            print(line)
    return 0


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


def _user_grant(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    granted = args.user_command == "grant"
    grant_address(_users_file(cfg), args.address, args.extra, granted=granted)
    print(f"{'gave' if granted else 'took back'} {args.extra} {'to' if granted else 'from'} {args.address}")
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
    listen = demo_listen(as_root=os.geteuid() == 0)
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

def _sendmail(args: argparse.Namespace) -> int:
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
        raise CommandError(f"cannot write to {folder}: {exc.strerror}; it must be mode 1733 "
                           "(the daemon sets that when it starts)") from None
    return 0


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
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
            os.chmod(folder, pickup.FOLDER_MODE)
            if os.geteuid() == 0:
                owner = os.stat(state_dir)
                os.chown(folder, owner.st_uid, owner.st_gid)
        except OSError as exc:
            raise CommandError(f"cannot create {folder}: {exc.strerror}; start the daemon once, "
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

