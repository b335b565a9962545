"""INI -> frozen dataclasses: the configuration's syntax and values, and nothing else.

A leaf: it imports no other module of ours but errors and address, so every module may import
it. Every problem is reported as `FILE: [section] key: what is wrong`, all of them at once.
What needs the disk or the network beyond reading this file (certificates, folders, the
aliases file, LDAP) is verified by appliance.checks. The one look at the disk here decides a
value: the default aliases file is used only when it exists.
"""
from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
import string
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPException        # ldap3 only parses DNs and filters here
from ldap3.operation.search import parse_filter
from ldap3.utils.dn import parse_dn
from twisted.internet import endpoints

from appliance import address
from appliance.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PATH = "/etc/mailappliance/mailappliance.conf"
# Names the file when --config is not given (cron files, shell profiles, systemd Environment=).
ENVIRONMENT_VARIABLE = "MAILAPPLIANCE_CONFIG"
_CHOOSE = f"; choose the file with --config PATH or the environment variable {ENVIRONMENT_VARIABLE}"


def chosen_path(option: str | None) -> str:
    """The file to read: the --config option, else $MAILAPPLIANCE_CONFIG, else DEFAULT_PATH."""
    return option or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PATH


@dataclass(frozen=True)
class ApplianceSection:
    hostname: str
    domains: tuple[str, ...]          # normalised with address.normalise_domain
    state_dir: str                    # absolute


@dataclass(frozen=True)
class TLSSection:
    certificate: str                  # absolute path, "" when TLS is not configured
    key: str
    min_version: str = "TLSv1.2"      # TLSv1.2 | TLSv1.3
    plaintext_auth_networks: tuple[Network, ...] = ()


@dataclass(frozen=True)
class ListenSection:
    """Twisted server endpoint strings; "" means the service is off."""
    smtp: str = ""
    submission: str = ""
    smtps: str = ""
    pop3: str = ""
    pop3s: str = ""
    imap: str = ""
    imaps: str = ""
    web: str = ""                     # the status page, /metrics and client autoconfig (appliance/web)


@dataclass(frozen=True)
class WebSection:
    """The [web] section: who may see the status page and /metrics (autoconfig is for everyone)."""
    allow_networks: tuple[Network, ...] = ()      # these addresses see it without a login
    admins: tuple[str, ...] = ()                  # logins (full addresses) who may see it from elsewhere


@dataclass(frozen=True)
class DirectorySection:
    backend: str = "file"             # file | ldap
    users_file: str = ""              # absolute


@dataclass(frozen=True)
class StorageSection:
    format: str = "maildir"           # maildir | mbox
    path: str = ""                    # absolute template with {domain} and {local}
    quota: int = 0                    # bytes per user (all folders); 0 = unlimited (parse_size)


@dataclass(frozen=True)
class AliasesSection:
    file: str = ""                    # absolute, "" = no aliases file
    recipient_delimiter: str = "+"    # alice+tag@ reaches alice; "" turns plus-addressing off
    catch_all: tuple[tuple[str, str], ...] = ()   # (domain, target): unknown users of domain go to target
    restricted: tuple[str, ...] = ()  # lists open only to our own senders (full addresses)
    allow_commands: bool = False      # aliases may name |command and /file targets (docs/aliases.md)


@dataclass(frozen=True)
class MasqueradeSection:
    domains: tuple[str, ...] = ()
    as_domain: str = ""               # the INI key is `as`
    exceptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RelaySection:
    trusted_networks: tuple[Network, ...] = ()
    smarthost: tuple[str, int] | None = None     # (host, port): all outbound mail goes there
    smarthost_user: str = ""
    smarthost_password_file: str = ""
    smarthost_ca_file: str = ""                  # PEM CAs to verify the smarthost with; "" = the system's CAs


@dataclass(frozen=True)
class DeliverySection:
    nameservers: tuple[tuple[str, int], ...] = ()  # () = /etc/resolv.conf
    port: int = 25                    # the port of the peers' MX (tests use other ports)
    allow_address_literals: bool = False
    destination_concurrency: int = 10  # remote deliveries at once to one domain (or the smarthost)
    concurrency: int = 20             # remote deliveries at once, in all (a restart applies a change)
    connection_reuse_limit: int = 100  # messages over one outbound SMTP session
    connection_cache_time: int = 2    # seconds a session waits for the next message; 0 = one message each


@dataclass(frozen=True)
class LimitsSection:
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_errors: int = 10              # protocol errors per session before 421 and close
    command_timeout: int = 300        # seconds of silence allowed between commands (RFC 5321 4.5.3.2)
    data_timeout: int = 600           # seconds allowed between two chunks of DATA
    max_connections_per_ip: int = 20    # per client (IPv4 address, IPv6 /64) and service, on every listener
    max_connections_per_service: int = 1000   # smtp, submission, pop3, imap: each, plain and TLS together
    descriptor_reserve: int = 128       # file descriptors kept free for queue, mailboxes, logs, LDAP
    idle_timeout_prelogin: int = 60     # seconds of silence before login (SMTP: before EHLO, or AUTH on submission)


@dataclass(frozen=True)
class LoginsSection:
    """The [logins] section: the throttle in front of every password check, and the checks' own pool."""
    failures_per_address: int = 5     # failed logins from one address within failure_window, then throttled
    failures_per_network: int = 20    # ... from one /24 (IPv4) or /64 (IPv6)
    failures_per_login: int = 10      # ... for one login; throttles it only from addresses that failed
    failure_window: int = 900         # seconds a failed login counts
    max_delay: int = 30               # longest spacing of throttled attempts (1 s doubling); beyond: 4xx at once
    check_threads: int = 1            # threads for password checks (scrypt, LDAP binds), apart from lookups
    max_pending_checks: int = 32      # password checks waiting for a thread; beyond: 4xx at once
    credential_cache_ttl: int = 3600  # seconds a verified password is accepted again without a check; 0 = off
    credential_cache_size: int = 10000    # accounts remembered at most (least recently used forgotten)


@dataclass(frozen=True)
class QueueSection:
    retry_initial: int = 300          # seconds before the first retry of a temporary failure
    retry_max: int = 3600             # backoff cap
    max_queue_lifetime: int = 432000  # 5 days, then bounce
    delay_warning: int = 14400        # 4 hours undelivered: one "delayed" DSN to the sender


@dataclass(frozen=True)
class ChecksSection:
    """The [checks] section: the inbound checks on the MX (docs/antispam.md).

    Authenticated users and [relay] trusted_networks skip the inbound ones; the rate limits
    and the operator's hooks see every session.
    """
    greylist: str = "suspicious"             # off | all | suspicious
    greylist_delay: int = 300                # seconds before a retry passes (RFC 6647, postgrey)
    greylist_retry_window: int = 172800      # a retry later than this (2 days) starts over
    greylist_expire: int = 3024000           # a triplet unseen for 35 days is forgotten
    greylist_whitelist_after: int = 5        # a client with this many passed deliveries skips greylisting
    dnsbl: tuple[tuple[str, float], ...] = ()    # (zone, weight)
    dnswl: tuple[tuple[str, float], ...] = ()    # (zone, weight): negative weights allow
    dnsbl_threshold: float = 2.0
    dns_timeout: int = 5                     # seconds for each DNS lookup of a check
    spf: str = "reject"                      # what an SPF fail gets: reject | tag | off
    spf_temperror: str = "tempfail"          # a DNS failure during SPF: tempfail (451 4.7.24) | tag
    dkim_verify: bool = True
    dmarc: str = "reject"                    # what p=reject gets: reject | quarantine | tag | off
    spamd: str = ""                          # host:port of spamd; "" = off
    spam_reject_score: float = 15.0
    spamd_max_size: int = 512000             # bytes; bigger messages are not scanned (spamc's default)
    clamd: str = ""                          # host:port, or the path of clamd's unix socket; "" = off
    clamd_max_size: int = 26214400           # bytes; clamd's StreamMaxLength (25M in Debian's clamd.conf)
    scanner_failure: str = "accept"          # spamd or clamd down or slow: accept | tempfail
    scanner_timeout: int = 60                # seconds spamd or clamd may take for one message
    pregreet: str = "suspicious"             # off | suspicious | all: a multi-line banner with a pause
    pregreet_wait: int = 6                   # seconds of that pause (postscreen's greet_wait)
    client_messages_per_minute: int = 60     # port 25, per client address (IPv6: /64)
    client_recipients_per_minute: int = 300
    user_messages_per_day: int = 1000        # submission, per authenticated user (mox's defaults)
    user_new_recipients_per_day: int = 200   # recipients the user never wrote to before
    bad_recipients_before_delay: int = 3     # unknown recipients, then each further one waits longer
    hooks: tuple[str, ...] = ()              # package.module:function, called at every stage


@dataclass(frozen=True)
class DKIMSection:
    """The [dkim] section: mail from our users is signed with the key of its From: domain, if one exists."""
    selector: str = "mail"
    keys: str = ""                           # folder of keys from `dkim keygen`; "" = state_dir/dkim
    ed25519: bool = False                    # also sign with an ed25519 key (RFC 8463) when one exists


DEFAULT_USER_FILTER = "(&(objectClass=inetOrgPerson)(|(mail={address})(mailLocalAddress={address})))"
DEFAULT_DISABLED_FILTER = "(shadowExpire=1)"
DEFAULT_ALIAS_FILTER = "(&(objectClass=nisMailAlias)(cn={address}))"
DEFAULT_GROUP_FILTER = "(&(objectClass=groupOfNames)(|(mail={address})(mailLocalAddress={address})))"


@dataclass(frozen=True)
class LDAPSection:
    """The [ldap] section. Only url, bind_dn, bind_password_file and base_dn have no default."""

    url: tuple[str, ...]                  # tried in order: the first that answers is used (failover)
    bind_dn: str                          # the service account used for every search
    bind_password_file: str               # absolute; its content, stripped, is the password
    base_dn: str
    starttls: bool = False                # upgrade ldap:// URLs with StartTLS (ldaps:// is TLS already)
    ca_file: str = ""                     # absolute; "" = the system's CA store
    timeout: int = 5                      # whole seconds (ldap3's socket option takes no fractions),
                                          # for connecting and for each answer
    cache_ttl: int = 60                   # seconds a lookup answer (found or not) is reused; 0 = never
    pool_size: int = 4                    # worker threads, i.e. LDAP requests in flight at once
    user_filter: str = DEFAULT_USER_FILTER
    mail_attribute: str = "mail"                          # primary address: login and mailbox key
    alias_attribute: str = "mailLocalAddress"             # further addresses of the same user
    forward_attribute: str = "mailRoutingAddress"         # where the user's mail goes instead; "" = off
    disabled_filter: str = DEFAULT_DISABLED_FILTER        # a user entry matching it cannot log in; "" = off
    alias_filter: str = DEFAULT_ALIAS_FILTER              # "" = no nisMailAlias lookups
    alias_member_attribute: str = "rfc822MailMember"
    group_filter: str = DEFAULT_GROUP_FILTER              # "" = no group lookups
    group_member_attribute: str = "member"                # DNs; each member's mail_attribute is the target
    shared_secret_attribute: str = ""                     # cleartext secret for CRAM-MD5/APOP; "" = none
    quota_attribute: str = "mailQuota"                    # the user's own quota (parse_size); "" = off


@dataclass(frozen=True)
class Config:
    path: str                         # absolute path of the file read
    appliance: ApplianceSection
    tls: TLSSection
    listen: ListenSection
    directory: DirectorySection
    storage: StorageSection
    aliases: AliasesSection = field(default_factory=AliasesSection)
    masquerade: MasqueradeSection = field(default_factory=MasqueradeSection)
    relay: RelaySection = field(default_factory=RelaySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    queue: QueueSection = field(default_factory=QueueSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    logins: LoginsSection = field(default_factory=LoginsSection)
    checks: ChecksSection = field(default_factory=ChecksSection)
    dkim: DKIMSection = field(default_factory=DKIMSection)
    web: WebSection = field(default_factory=WebSection)
    ldap: LDAPSection | None = None   # read only when [directory] backend = ldap


LOCAL_NETWORKS = "127.0.0.1/32, ::1/128"
_HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_TEMPLATE_FIELDS = ("domain", "local")
_LDAP_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+")
# What an LDAP filter's placeholders stand for when it is parsed to check its syntax.
_LDAP_SAMPLE = {"address": "probe@example.org", "local": "probe", "domain": "example.org"}

# (raw text, folder of the configuration file) -> value; a ValueError's text is the problem.
Converter = Callable[[str, str], object]


class Problems:
    """Collects `FILE: [section] key: what is wrong` lines, so every problem is reported at once.

    Shared with appliance.checks, so that the operator reads one form of line from both.
    """

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    def add(self, section: str, key: str, message: str) -> None:
        self.lines.append(f"{self.source}: [{section}] {key}: {message}")

    def add_section(self, section: str, message: str) -> None:
        self.lines.append(f"{self.source}: [{section}] {message}")

    def __bool__(self) -> bool:
        return bool(self.lines)


# ---------------------------------------------------------------- converters, one per kind of value

def _words(value: str) -> list[str]:
    """Split a list written with commas, spaces or continuation lines."""
    return [word for word in re.split(r"[,\s]+", value) if word]


def _hostname(value: str, base: str) -> str:
    if not value:
        raise ValueError("missing; set the name this server answers to, e.g. mail.example.org")
    name = address.normalise_domain(value)
    if not _HOSTNAME.fullmatch(name):
        raise ValueError(f"{value!r} is not a host name")
    return name


def _domains(value: str, base: str) -> tuple[str, ...]:
    names: list[str] = []
    for word in _words(value):
        name = address.normalise_domain(word)
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(f"{word!r} is not a domain name")
        if name not in names:
            names.append(name)
    return tuple(names)


def _required_domains(value: str, base: str) -> tuple[str, ...]:
    names = _domains(value, base)
    if not names:
        raise ValueError("empty; list the domains whose mail is delivered here, e.g. example.org")
    return names


def _optional_domain(value: str, base: str) -> str:
    return _hostname(value, base) if value else ""


def _local_parts(value: str, base: str) -> tuple[str, ...]:
    return tuple(word.lower() for word in _words(value))


def _path(value: str, base: str) -> str:
    if not value:
        raise ValueError("empty; give a path (relative paths start at the configuration file's folder)")
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _optional_path(value: str, base: str) -> str:
    return _path(value, base) if value else ""


def _networks(value: str, base: str) -> tuple[Network, ...]:
    try:
        return address.parse_networks(",".join(_words(value)))
    except ValueError as exc:
        raise ValueError(f"not a list of networks: {exc}") from None


_SIZE = re.compile(r"([0-9]{1,20}) ?(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_SIZE = 1 << 60        # 1 EiB: far beyond any disk, small enough for every arithmetic on it


def parse_size(text: str) -> int:
    """A size as Dovecot's quota_rule writes it: `500M`, `1G`, `2048k`, `123456` (bytes); 0 or "" = unlimited.

    Units are binary (K = 1024), in either case, optionally followed by `B` or `iB` (`1GB`, `1GiB`),
    because that is what operators copy from Dovecot and LDAP schemas. ValueError (a config error
    when it comes from the file) for anything else, never another exception: the text may come
    from an LDAP attribute or the users file.
    """
    if not text.strip():
        return 0
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 500M, 1G, or 0 for unlimited")
    size = int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
    if size > MAX_SIZE:
        raise ValueError(f"{text!r} is larger than {MAX_SIZE >> 40}T")
    return size


def format_size(size: int) -> str:
    """The shortest exact form parse_size reads back: 1073741824 -> `1G`; 0 -> `unlimited`."""
    if size <= 0:
        return "unlimited"
    for unit in "TGMK":
        if size % _UNITS[unit.lower()] == 0:
            return f"{size // _UNITS[unit.lower()]}{unit}"
    return str(size)


def _size(value: str, base: str) -> int:
    return parse_size(value)


def _positive_int(value: str, base: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"must be a positive whole number, not {value!r}")
    return int(value)


def _choice(*allowed: str) -> Converter:
    def convert(value: str, base: str) -> str:
        for name in allowed:
            if value.lower() == name.lower():
                return name
        raise ValueError(f"{value!r} is not one of: {', '.join(allowed)}")
    return convert


def _endpoint(value: str, base: str) -> str:
    """Parse a server endpoint string without creating or binding anything."""
    if not value:
        return ""
    if value.split(":", 1)[0].strip().lower() == "ssl":
        raise ValueError(f"{value!r}: ssl: is not accepted here; write tcp:, the appliance adds TLS from [tls]")
    try:
        kind, args, _ = endpoints._parseServer(value, None)
    except Exception as exc:  # the parser raises ValueError, TypeError or KeyError on bad text
        raise ValueError(f"{value!r} is not a server endpoint ({exc}); write e.g. tcp:25 or "
                         f"tcp:2525:interface=127.0.0.1") from None
    if kind == "TCP" and not 0 <= args[0] <= 65535:
        raise ValueError(f"{value!r}: port {args[0]} is out of range")
    return value


def _text(value: str, base: str) -> str:
    return value


def _delimiter(value: str, base: str) -> str:
    if len(value) > 1 or value in ("@", "."):
        raise ValueError(f"{value!r}: give one character such as + or -, or nothing to turn it off")
    return value


def _yes_no(value: str, base: str) -> bool:
    """yes/no, true/false, on/off, 1/0, as INI files and their readers expect."""
    words = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
    if value.lower() not in words:
        raise ValueError(f"{value!r} is not yes or no")
    return words[value.lower()]


def _port(value: str, base: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{value!r} is not a port number")
    return int(value)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if text.count(":") == 1 or text.startswith("[") else ("", "", "")
    if not colon:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


def _smarthost(value: str, base: str) -> tuple[str, int] | None:
    return _host_port(value, 587) if value else None


def _nameservers(value: str, base: str) -> tuple[tuple[str, int], ...]:
    result = []
    for word in _words(value):
        host, port = _host_port(word, 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{word!r}: name servers are given by IP address") from None
        result.append((host, port))
    return tuple(result)


def _addresses(value: str, base: str) -> tuple[str, ...]:
    result = []
    for word in _words(value):
        if not address.is_valid(word):
            raise ValueError(f"{word!r} is not a full address")
        result.append(address.normalise(word))
    return tuple(result)


def _catch_all(value: str, base: str) -> tuple[tuple[str, str], ...]:
    """`example.test: alice@example.test, example.org: bob@example.org`."""
    result = []
    for item in (part.strip() for part in value.split(",") if part.strip()):
        domain, colon, target = item.partition(":")
        if not colon or not address.is_valid(target.strip()):
            raise ValueError(f"{item!r}: write domain: target@address")
        result.append((address.normalise_domain(domain), address.normalise(target.strip())))
    return tuple(result)


def _template(value: str, base: str) -> str:
    try:
        parts = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)
                 if name is not None]
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid template: {exc}") from None
    for name, spec, conversion in parts:
        if name not in _TEMPLATE_FIELDS:
            raise ValueError(f"unknown placeholder {{{name}}}; only {{domain}} and {{local}} exist")
        if spec or conversion:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")
    if "local" not in {name for name, _, _ in parts}:
        raise ValueError("must contain {local}, so that each user gets a mailbox of their own")
    return _path(value, base)


def _required(convert: Converter, hint: str) -> Converter:
    """A key without a usable default: an empty value is reported with what to write there."""
    def required(value: str, base: str) -> object:
        if not value:
            raise ValueError(f"missing; set {hint}")
        return convert(value, base)
    return required


def _ldap_urls(value: str, base: str) -> tuple[str, ...]:
    urls = tuple(_words(value))
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL with a host")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"{url!r} has a bad port") from None
        if parts.path not in ("", "/"):
            raise ValueError(f"{url!r}: put the base DN in base_dn, not in the URL")
    return urls


def _dn(value: str, base: str) -> str:
    try:
        parse_dn(value)
    except LDAPException:
        raise ValueError(f"{value!r} is not a DN") from None
    return value


def _count(minimum: int, maximum: int) -> Converter:
    def convert(value: str, base: str) -> int:
        if not value.isdigit() or not minimum <= int(value) <= maximum:
            raise ValueError(f"must be a whole number from {minimum} to {maximum}, not {value!r}")
        return int(value)
    return convert


def _attribute(optional: bool) -> Converter:
    def convert(value: str, base: str) -> str:
        if not value and optional:
            return ""
        if not _LDAP_ATTRIBUTE.fullmatch(value):
            raise ValueError(f"{value!r} is not an attribute name")
        return value
    return convert


def _filter(optional: bool, placeholder: bool = True) -> Converter:
    """A search filter; the directory fills in {address}, {local} and {domain}, escaped."""
    def convert(value: str, base: str) -> str:
        if not value and optional:
            return ""
        if placeholder and not any("{%s}" % name in value for name in _LDAP_SAMPLE):
            raise ValueError(f"{value!r} must contain {{address}} (or {{local}} and {{domain}})")
        sample = value
        for name, text in _LDAP_SAMPLE.items():
            sample = sample.replace("{%s}" % name, text)
        try:
            parse_filter(sample, None, False, False, None, False)
        except LDAPException as exc:
            raise ValueError(f"{value!r} is not a valid LDAP filter ({exc})") from None
        return value
    return convert


# ---------------------------------------------------------------- the schema: every section and key

@dataclass(frozen=True)
class _Key:
    field: str                   # the dataclass field it fills
    convert: Converter
    default: str = ""            # raw text, as an operator would write it
    only_if_exists: bool = False  # a defaulted path that is used only when the file is there


def _number(value: str, base: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a number")
    return number


def _weighted_zones(value: str, base: str) -> tuple[tuple[str, float], ...]:
    """`zen.spamhaus.org*2, bl.spamcop.net, list.dnswl.org*-5` -> ((zone, weight), ...); weight 1 by default."""
    zones = []
    for item in _words(value):
        zone, star, weight = item.partition("*")
        try:
            zone = _hostname(zone, base)
        except ValueError:
            raise ValueError(f"{item!r}: not a DNS zone (write zone or zone*weight)") from None
        try:
            number = float(weight) if star else 1.0
        except ValueError:
            raise ValueError(f"{item!r}: the weight after * is not a number") from None
        zones.append((zone, number))
    return tuple(zones)


def _scanner(unix_ok: bool) -> Converter:
    def convert(value: str, base: str) -> str:
        value = value.strip()
        if not value:
            return ""
        if value.startswith("/") and unix_ok:
            return value
        try:
            host, port = _host_port(value, 0)
        except ValueError as exc:
            raise ValueError(f"{exc}" + ("; or the path of a unix socket" if unix_ok else "")) from None
        if not port:
            raise ValueError(f"{value!r}: write host:port" + (" or the path of a unix socket" if unix_ok else ""))
        return f"{host}:{port}"
    return convert


_HOOK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _hooks(value: str, base: str) -> tuple[str, ...]:
    hooks = tuple(_words(value))
    for hook in hooks:
        if not _HOOK.fullmatch(hook):
            raise ValueError(f"{hook!r}: write package.module:function")
    return hooks


def _selector(value: str, base: str) -> str:
    value = value.strip().lower()
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*", value):
        raise ValueError(f"{value!r} is not a DKIM selector (letters, digits, hyphens, dots)")
    return value


def _same_names(section: type, converters: dict[str, Converter]) -> dict[str, _Key]:
    """Keys named like the dataclass's fields, whose defaults are the fields' defaults written as text."""
    defaults = {f.name: f.default for f in fields(section)}
    return {name: _Key(name, convert, _as_text(defaults[name])) for name, convert in converters.items()}


def _as_text(default: object) -> str:
    if default is MISSING:
        return ""
    if isinstance(default, bool):
        return "yes" if default else "no"
    if isinstance(default, tuple):
        return ", ".join(str(item) for item in default)
    return str(default)


def _int_keys(section: type) -> dict[str, _Key]:
    return _same_names(section, {f.name: _positive_int for f in fields(section)})


_LDAP_KEYS = _same_names(LDAPSection, {
    "url": _required(_ldap_urls, "e.g. ldaps://ldap.example.org (several, separated by commas, for failover)"),
    "bind_dn": _required(_dn, "the service account's DN, e.g. cn=mailappliance,dc=example,dc=org"),
    "bind_password_file": _required(_path, "a file holding only the service account's password"),
    "base_dn": _required(_dn, "where users and aliases live, e.g. dc=example,dc=org"),
    "starttls": _yes_no, "ca_file": _optional_path, "timeout": _count(1, 300),
    "cache_ttl": _count(0, 86400), "pool_size": _count(1, 64),
    "user_filter": _filter(False), "mail_attribute": _attribute(False),
    "alias_attribute": _attribute(True), "forward_attribute": _attribute(True),
    "disabled_filter": _filter(True, placeholder=False),
    "alias_filter": _filter(True), "alias_member_attribute": _attribute(False),
    "group_filter": _filter(True), "group_member_attribute": _attribute(False),
    "shared_secret_attribute": _attribute(True), "quota_attribute": _attribute(True),
})


_SCHEMA: dict[str, dict[str, _Key]] = {
    "appliance": {
        "hostname": _Key("hostname", _hostname),
        "domains": _Key("domains", _required_domains),
        "state_dir": _Key("state_dir", _path, "var"),
    },
    "tls": {
        "certificate": _Key("certificate", _optional_path, "tls/cert.pem"),
        "key": _Key("key", _optional_path, "tls/key.pem"),
        "min_version": _Key("min_version", _choice("TLSv1.2", "TLSv1.3"), "TLSv1.2"),
        "plaintext_auth_networks": _Key("plaintext_auth_networks", _networks, LOCAL_NETWORKS),
    },
    "listen": {f.name: _Key(f.name, _endpoint) for f in fields(ListenSection)},
    "directory": {
        "backend": _Key("backend", _choice("file", "ldap"), "file"),
        "users_file": _Key("users_file", _path, "users"),
    },
    "ldap": _LDAP_KEYS,  # read only when [directory] backend = ldap
    "storage": {
        "format": _Key("format", _choice("maildir", "mbox"), "maildir"),
        "path": _Key("path", _template, "var/mail/{domain}/{local}"),
        "quota": _Key("quota", _size, "0"),
    },
    "aliases": {
        "file": _Key("file", _optional_path, "aliases", only_if_exists=True),
        "recipient_delimiter": _Key("recipient_delimiter", _delimiter, "+"),
        "catch_all": _Key("catch_all", _catch_all),
        "restricted": _Key("restricted", _addresses),
        "allow_commands": _Key("allow_commands", _yes_no, "no"),
    },
    "masquerade": {
        "domains": _Key("domains", _domains),
        "as": _Key("as_domain", _optional_domain),
        "exceptions": _Key("exceptions", _local_parts),
    },
    "relay": {
        "trusted_networks": _Key("trusted_networks", _networks, LOCAL_NETWORKS),
        "smarthost": _Key("smarthost", _smarthost),
        "smarthost_user": _Key("smarthost_user", _text),
        "smarthost_password_file": _Key("smarthost_password_file", _optional_path),
        "smarthost_ca_file": _Key("smarthost_ca_file", _optional_path),
    },
    "delivery": {
        "nameservers": _Key("nameservers", _nameservers),
        "port": _Key("port", _port, "25"),
        "allow_address_literals": _Key("allow_address_literals", _yes_no, "no"),
        "destination_concurrency": _Key("destination_concurrency", _count(1, 1000), "10"),
        "concurrency": _Key("concurrency", _count(1, 1000), "20"),
        "connection_reuse_limit": _Key("connection_reuse_limit", _count(1, 100000), "100"),
        "connection_cache_time": _Key("connection_cache_time", _count(0, 300), "2"),
    },
    "limits": _int_keys(LimitsSection),
    "queue": _int_keys(QueueSection),
    "logins": {**_int_keys(LoginsSection), **_same_names(LoginsSection, {
        "credential_cache_ttl": _count(0, 86400), "credential_cache_size": _count(1, 1000000)})},
    "checks": _same_names(ChecksSection, {
        "greylist": _choice("off", "all", "suspicious"), "greylist_delay": _count(0, 86400),
        "greylist_retry_window": _count(60, 31536000), "greylist_expire": _count(3600, 315360000),
        "greylist_whitelist_after": _count(0, 1000000),
        "dnsbl": _weighted_zones, "dnswl": _weighted_zones, "dnsbl_threshold": _number,
        "dns_timeout": _count(1, 120),
        "spf": _choice("reject", "tag", "off"), "spf_temperror": _choice("tempfail", "tag"),
        "dkim_verify": _yes_no, "dmarc": _choice("reject", "quarantine", "tag", "off"),
        "spamd": _scanner(unix_ok=False), "spam_reject_score": _number,
        "spamd_max_size": _count(1, 1073741824), "clamd_max_size": _count(1, 4294967295),
        "clamd": _scanner(unix_ok=True), "scanner_failure": _choice("accept", "tempfail"),
        "scanner_timeout": _count(1, 3600),
        "pregreet": _choice("off", "suspicious", "all"), "pregreet_wait": _count(0, 60),
        "client_messages_per_minute": _count(0, 1000000), "client_recipients_per_minute": _count(0, 1000000),
        "user_messages_per_day": _count(0, 100000000), "user_new_recipients_per_day": _count(0, 100000000),
        "bad_recipients_before_delay": _count(0, 1000),
        "hooks": _hooks,
    }),
    "dkim": _same_names(DKIMSection, {"selector": _selector, "keys": _optional_path, "ed25519": _yes_no}),
    "web": {
        "allow_networks": _Key("allow_networks", _networks, LOCAL_NETWORKS),
        "admins": _Key("admins", _addresses),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "appliance": ApplianceSection, "tls": TLSSection, "listen": ListenSection,
    "directory": DirectorySection, "storage": StorageSection, "aliases": AliasesSection,
    "masquerade": MasqueradeSection, "relay": RelaySection, "limits": LimitsSection, "queue": QueueSection,
    "delivery": DeliverySection, "logins": LoginsSection, "ldap": LDAPSection,
    "checks": ChecksSection, "dkim": DKIMSection, "web": WebSection,
}


# ---------------------------------------------------------------- loading

def load(path: str) -> Config:
    """Read and validate the whole file; raise errors.ConfigError with every problem found."""
    parser = _parse(path)
    base = os.path.dirname(os.path.abspath(path))
    problems = Problems(path)
    for section in parser.sections():
        if section not in _SCHEMA:
            problems.add_section(section, "unknown section" + _suggest(section.lower(), _SCHEMA, "[{}]"))
    values = {name: _read_section(parser, name, keys, base, problems)
              for name, keys in _SCHEMA.items() if name != "ldap"}
    _cross_check(values, problems)
    if values["directory"].get("backend") == "ldap":   # otherwise [ldap] is not read at all
        values["ldap"] = _read_section(parser, "ldap", _SCHEMA["ldap"], base, problems)
    if problems:
        raise ConfigError(problems.lines)
    sections = {name: _SECTION_TYPES[name](**fields_) for name, fields_ in values.items()}
    return Config(path=os.path.abspath(path), **sections)


def _parse(path: str) -> configparser.ConfigParser:
    """The INI file as configparser sees it; unreadable or malformed files are a ConfigError."""
    # default_section is set to a name no header can have, so a [DEFAULT] section is just unknown.
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",), interpolation=None, default_section="\0")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}{_CHOOSE}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as exc:
        raise ConfigError([f"{path}: [{exc.section}] appears twice (line {exc.lineno})"]) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError([f"{path}: [{exc.section}] {exc.option}: set twice (line {exc.lineno})"]) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError([f"{path}: line {exc.lineno}: {exc.line.strip()!r} comes before any [section]"]) from None
    except configparser.ParsingError as exc:
        lines = text.splitlines()
        raise ConfigError([f"{path}: line {lineno}: cannot parse {lines[lineno - 1].strip()!r}; write key = value"
                           for lineno, _ in exc.errors]) from None
    except configparser.Error as exc:
        raise ConfigError([f"{path}: {exc.message}"]) from None
    return parser


def _read_section(parser: configparser.ConfigParser, name: str, keys: dict[str, _Key], base: str,
                  problems: Problems) -> dict[str, object]:
    """Convert one section's keys to dataclass fields; a key that fails is left out and reported."""
    given = dict(parser.items(name)) if parser.has_section(name) else {}
    for key in given:
        if key not in keys:
            problems.add(name, key, f"unknown key {key!r}" + _suggest(key, keys, "'{}'"))
    values: dict[str, object] = {}
    for key, spec in keys.items():
        try:
            value = spec.convert(given.get(key, spec.default), base)
        except ValueError as exc:
            problems.add(name, key, str(exc))
            continue
        if key not in given and spec.only_if_exists and not os.path.exists(value):
            value = ""
        values[spec.field] = value
    return values


def _suggest(name: str, choices: object, form: str) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {form.format(close[0])}?" if close else ""


def _cross_check(values: dict[str, dict[str, object]], problems: Problems) -> None:
    """Rules that span keys; a key that already failed is skipped."""
    tls_values, masquerade, queue = values["tls"], values["masquerade"], values["queue"]
    if tls_values.get("certificate") and tls_values.get("key") == "":
        problems.add("tls", "key", "empty, but a certificate is set")
    if tls_values.get("key") and tls_values.get("certificate") == "":
        problems.add("tls", "certificate", "empty, but a key is set")
    if masquerade.get("domains") and masquerade.get("as_domain") == "":
        problems.add("masquerade", "as", "required when [masquerade] domains is set")
    if "retry_max" in queue and "retry_initial" in queue and queue["retry_max"] < queue["retry_initial"]:
        problems.add("queue", "retry_max", f"smaller than retry_initial ({queue['retry_initial']})")
    relay = values["relay"]
    if relay.get("smarthost_user") and not relay.get("smarthost_password_file"):
        problems.add("relay", "smarthost_password_file", "required when smarthost_user is set")
    if relay.get("smarthost_user") and relay.get("smarthost") is None:
        problems.add("relay", "smarthost", "required when smarthost_user is set")
    _check_ports(values["listen"], problems)


def _check_ports(listen: dict[str, object], problems: Problems) -> None:
    """Two services on one TCP port would fail at bind time; say so before anything starts."""
    taken: dict[int, tuple[str, str]] = {}
    for service, endpoint in listen.items():
        if not endpoint:
            continue
        kind, args, kwargs = endpoints._parseServer(str(endpoint), None)
        if kind != "TCP" or not args[0]:
            continue
        port, interface = args[0], kwargs.get("interface", "")
        other = taken.get(port)
        if other and (other[1] == interface or not other[1] or not interface):
            problems.add("listen", service, f"port {port} is already used by [listen] {other[0]}")
        else:
            taken[port] = (service, interface)


# ---------------------------------------------------------------- the effective configuration

def describe(config: Config) -> list[str]:
    """The effective configuration, one `section.key = value` line each, secrets masked."""
    lines = []
    for name, keys in _SCHEMA.items():
        section = getattr(config, name)
        if section is not None:
            lines += [f"{name}.{key} = {_show(key, getattr(section, spec.field))}" for key, spec in keys.items()]
    return lines


def _show(key: str, value: object) -> str:
    if "password" in key and value:
        return "********"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def summarise(config: Config) -> list[dict[str, str]]:
    """The effective configuration in a few log lines (fields of each): what an admin checks first
    after a start. `describe` has every setting (`mailappliance check --verbose`)."""
    listen = [f"{name}={getattr(config.listen, name)}" for name in _field_names(ListenSection)
              if getattr(config.listen, name)]
    where = ",".join(config.ldap.url) if config.ldap is not None else config.directory.users_file
    relay = config.relay
    return [
        {"file": config.path, "hostname": config.appliance.hostname, "domains": ",".join(config.appliance.domains)},
        {"services": " ".join(listen) or "none"},
        {"directory": config.directory.backend, "users": where, "aliases": config.aliases.file or "none",
         "storage": f"{config.storage.format}:{config.storage.path}", "state_dir": config.appliance.state_dir},
        {"tls": config.tls.certificate or "off",
         "min_version": config.tls.min_version if config.tls.certificate else "",
         "trusted_networks": _show("", relay.trusted_networks) or "none",
         "smarthost": ":".join(map(str, relay.smarthost)) if relay.smarthost else ""},
        {"checks": " ".join(_checks_on(config.checks)) or "none"},
    ]


def _field_names(section: type) -> list[str]:
    return [f.name for f in fields(section)]


def _checks_on(checks: ChecksSection) -> list[str]:
    """The inbound checks and limits in force, as `name=setting` words."""
    words = [f"{name}={value}" for name, value in (("greylist", checks.greylist), ("spf", checks.spf),
                                                   ("dmarc", checks.dmarc), ("pregreet", checks.pregreet))
             if value != "off"]
    words += ["dkim_verify"] if checks.dkim_verify else []
    words += [f"{name}={','.join(zone for zone, _ in zones)}"
              for name, zones in (("dnsbl", checks.dnsbl), ("dnswl", checks.dnswl)) if zones]
    words += [f"{name}={value}" for name, value in (("spamd", checks.spamd), ("clamd", checks.clamd)) if value]
    words += [f"{name}={value}" for name in ("client_messages_per_minute", "client_recipients_per_minute",
                                             "user_messages_per_day", "user_new_recipients_per_day")
              if (value := getattr(checks, name))]
    words += [f"hooks={','.join(checks.hooks)}"] if checks.hooks else []
    return words


def changed(old: Config, new: Config) -> list[tuple[str, str]]:
    """(section, key) of every key whose effective value differs between two loads, in file order.

    What a SIGHUP reload reports and decides on (appliance.reload): the keys are the INI names
    (`[masquerade] as`, not the field), and a whole [ldap] section appearing or going away
    counts as each of its keys.
    """
    found = []
    for name, keys in _SCHEMA.items():
        before, after = getattr(old, name), getattr(new, name)
        for key, spec in keys.items():
            if getattr(before, spec.field, None) != getattr(after, spec.field, None):
                found.append((name, key))
    return found
