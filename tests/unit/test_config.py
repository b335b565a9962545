"""appliance.config: the file an operator writes, the values the appliance gets, and every error line."""
from __future__ import annotations

import ast
import dataclasses
import ipaddress
import os
import re
import textwrap

import pytest

from appliance import config
from appliance.errors import ConfigError

ETC_CONF = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "mailappliance.conf")

# The example of /work/shared/CONTRACT.md, "Configuration file", as written there.
CONTRACT_EXAMPLE = """\
[appliance]
hostname = mail.example.test          # used in banners, Received:, Message-ID, certificates
domains = example.test, example.org   # local domains: mail for them is delivered here
state_dir = var                       # queue, indexes and other state live below it

[tls]
certificate = tls/cert.pem            # PEM chain
key = tls/key.pem
min_version = TLSv1.2
plaintext_auth_networks = 127.0.0.1/32, ::1/128   # AUTH/LOGIN/USER without TLS only from here; empty = never

[listen]
# One key per service, a Twisted server endpoint string; empty or absent = service off.
# Implicit TLS (smtps, pop3s, imaps) is added by the appliance from [tls]: write tcp:, not ssl:.
smtp = tcp:25                         # MX: mail for local domains, relay only for trusted networks
submission = tcp:587                  # STARTTLS, then AUTH required; relay for authenticated users
smtps = tcp:465
pop3 = tcp:110
pop3s = tcp:995
imap = tcp:143
imaps = tcp:993

[directory]
backend = file                        # file | ldap
users_file = users                    # file backend, managed with `mailappliance user ...`

[ldap]                                # used when backend = ldap (details: the LDAP issue)

[storage]
format = maildir                      # maildir | mbox
path = var/mail/{domain}/{local}      # template; {domain} and {local} of the user's primary address

[aliases]
file = aliases                        # aliases(5) format

[masquerade]
domains = lan.example.test            # hosts/domains whose addresses are rewritten ...
as = example.test                     # ... to this domain on mail leaving through us
exceptions = root                     # local parts never rewritten

[relay]
trusted_networks = 127.0.0.1/32, ::1/128   # may relay without AUTH; empty = nobody

[limits]
max_message_size = 26214400           # bytes, advertised as SIZE
max_recipients = 100
"""

MINIMAL = """\
[appliance]
hostname = mail.example.test
domains = example.test
"""


def write(tmp_path, text: str, name: str = "mailappliance.conf") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems_of(path: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    return caught.value.problems


# ---------------------------------------------------------------- files that load

def test_contract_example_loads(tmp_path):
    cfg = config.load(write(tmp_path, CONTRACT_EXAMPLE))
    assert cfg.path == str(tmp_path / "mailappliance.conf")
    assert cfg.appliance.hostname == "mail.example.test"
    assert cfg.appliance.domains == ("example.test", "example.org")
    assert cfg.appliance.state_dir == str(tmp_path / "var")
    assert cfg.tls.certificate == str(tmp_path / "tls/cert.pem")
    assert cfg.tls.plaintext_auth_networks == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert cfg.listen.submission == "tcp:587" and cfg.listen.imaps == "tcp:993"
    assert cfg.directory.users_file == str(tmp_path / "users")
    assert cfg.storage.path == str(tmp_path / "var/mail/{domain}/{local}")
    assert cfg.aliases.file == str(tmp_path / "aliases")
    assert cfg.masquerade == config.MasqueradeSection(("lan.example.test",), "example.test", ("root",))
    assert cfg.limits.max_message_size == 26214400


def test_minimal_file_gets_every_default(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL))
    assert cfg.appliance.state_dir == str(tmp_path / "var")
    assert cfg.tls == config.TLSSection(str(tmp_path / "tls/cert.pem"), str(tmp_path / "tls/key.pem"), "TLSv1.2",
                                        (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")))
    assert cfg.listen == config.ListenSection()
    assert cfg.directory == config.DirectorySection("file", str(tmp_path / "users"))
    assert cfg.storage == config.StorageSection("maildir", str(tmp_path / "var/mail/{domain}/{local}"))
    assert cfg.aliases.file == ""            # the default file does not exist
    assert cfg.relay.trusted_networks == cfg.tls.plaintext_auth_networks
    assert cfg.limits == config.LimitsSection() and cfg.queue == config.QueueSection()


def test_default_aliases_file_is_used_when_it_exists(tmp_path):
    (tmp_path / "aliases").write_text("postmaster: root@example.test\n")
    assert config.load(write(tmp_path, MINIMAL)).aliases.file == str(tmp_path / "aliases")


def test_relative_paths_start_at_the_config_folder_not_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(folder, MINIMAL + "state_dir = ../state\n[directory]\nusers_file = /srv/users\n")
    monkeypatch.chdir("/")
    cfg = config.load(os.path.relpath(path))
    assert cfg.appliance.state_dir == str(tmp_path / "state")
    assert cfg.directory.users_file == "/srv/users"
    assert cfg.path == path


def test_inline_comments_and_list_spellings(tmp_path):
    cfg = config.load(write(tmp_path, """\
        [appliance]
        hostname = Mail.Example.TEST.   # a comment after the value
        domains = example.test  Example.org,
            bücher.example
        [relay]
        trusted_networks = 10.0.0.0/8 # only the LAN
        """))
    assert cfg.appliance.hostname == "mail.example.test"
    assert cfg.appliance.domains == ("example.test", "example.org", "xn--bcher-kva.example")
    assert cfg.relay.trusted_networks == (ipaddress.ip_network("10.0.0.0/8"),)


def test_empty_network_list_means_nobody(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL + "[relay]\ntrusted_networks =\n"))
    assert cfg.relay.trusted_networks == ()


def test_ldap_section_is_ignored_with_the_file_backend(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL + "[ldap]\nurl = ldap://127.0.0.1\n"))
    assert cfg.directory.backend == "file" and cfg.ldap is None


def test_ldap_section_is_read_with_the_ldap_backend(tmp_path):
    (tmp_path / "ldap.secret").write_text("s3cret\n")
    cfg = config.load(write(tmp_path, MINIMAL + textwrap.dedent("""\
        [directory]
        backend = ldap
        [ldap]
        url = ldaps://ldap.example.test
        bind_dn = cn=mailappliance,dc=example,dc=test
        bind_password_file = ldap.secret
        base_dn = dc=example,dc=test
        """)))
    assert cfg.ldap.url == ("ldaps://ldap.example.test",)
    assert cfg.ldap.bind_password_file == str(tmp_path / "ldap.secret")
    assert "ldap.bind_password_file = ********" in config.describe(cfg)
    assert "ldap.base_dn = dc=example,dc=test" in config.describe(cfg)


def test_ldap_problems_join_the_others(tmp_path):
    path = write(tmp_path, MINIMAL + "[directory]\nbackend = ldap\n[ldap]\nurl = http://x\n[limits]\nmax_errors = x\n")
    problems = problems_of(path)
    assert f"{path}: [ldap] url: 'http://x' is not an ldap:// or ldaps:// URL with a host" in problems
    assert f"{path}: [ldap] bind_dn: missing; set the service account's DN, e.g. cn=mailappliance,dc=example,dc=org" \
        in problems
    assert f"{path}: [limits] max_errors: must be a positive whole number, not 'x'" in problems


# ---------------------------------------------------------------- one exact line per problem

@pytest.mark.parametrize("text, line", [
    (MINIMAL + "[lisen]\nsmtp = tcp:25\n", "[lisen] unknown section; did you mean [listen]?"),
    (MINIMAL + "[DEFAULT]\nx = 1\n", "[DEFAULT] unknown section"),
    ("[appliance]\nhostname = mail.example.test\ndomain = example.test\n",
     "[appliance] domain: unknown key 'domain'; did you mean 'domains'?"),
    (MINIMAL + "[limits]\nmax_recipients = many\n",
     "[limits] max_recipients: must be a positive whole number, not 'many'"),
    (MINIMAL + "[queue]\nretry_initial = 0\n", "[queue] retry_initial: must be a positive whole number, not '0'"),
    (MINIMAL + "[relay]\ntrusted_networks = 10.0.0.0/33\n",
     "[relay] trusted_networks: not a list of networks: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"),
    (MINIMAL + "[listen]\nsmtp = tcp:abc\n",
     "[listen] smtp: 'tcp:abc' is not a server endpoint (invalid literal for int() with base 10: 'abc'); "
     "write e.g. tcp:25 or tcp:2525:interface=127.0.0.1"),
    (MINIMAL + "[listen]\nsmtp = tcp:70000\n", "[listen] smtp: 'tcp:70000': port 70000 is out of range"),
    (MINIMAL + "[listen]\nsmtps = ssl:465\n",
     "[listen] smtps: 'ssl:465': ssl: is not accepted here; write tcp:, the appliance adds TLS from [tls]"),
    (MINIMAL + "[listen]\nsmtp = tcp:25\nimap = tcp:25:interface=127.0.0.1\n",
     "[listen] imap: port 25 is already used by [listen] smtp"),
    ("[appliance]\ndomains = example.test\n",
     "[appliance] hostname: missing; set the name this server answers to, e.g. mail.example.org"),
    ("[appliance]\nhostname = mail.example.test\ndomains =\n",
     "[appliance] domains: empty; list the domains whose mail is delivered here, e.g. example.org"),
    ("[appliance]\nhostname = mail_example\ndomains = example.test\n", "[appliance] hostname: 'mail_example' is not a host name"),
    (MINIMAL + "[tls]\nmin_version = TLSv1.1\n", "[tls] min_version: 'TLSv1.1' is not one of: TLSv1.2, TLSv1.3"),
    (MINIMAL + "[tls]\nkey =\n", "[tls] key: empty, but a certificate is set"),
    (MINIMAL + "[storage]\nformat = mbx\n", "[storage] format: 'mbx' is not one of: maildir, mbox"),
    (MINIMAL + "[storage]\npath = mail/{user}\n",
     "[storage] path: unknown placeholder {user}; only {domain} and {local} exist"),
    (MINIMAL + "[storage]\npath = mail/{domain}\n",
     "[storage] path: must contain {local}, so that each user gets a mailbox of their own"),
    (MINIMAL + "[storage]\npath = mail/{local!r}\n", "[storage] path: {local} takes no format spec or conversion"),
    (MINIMAL + "[directory]\nbackend = sql\n", "[directory] backend: 'sql' is not one of: file, ldap"),
    (MINIMAL + "[masquerade]\ndomains = lan.example.test\n",
     "[masquerade] as: required when [masquerade] domains is set"),
    (MINIMAL + "[queue]\nretry_initial = 600\nretry_max = 60\n", "[queue] retry_max: smaller than retry_initial (600)"),
])
def test_problem_line(tmp_path, text, line):
    path = write(tmp_path, text)
    assert f"{path}: {line}" in problems_of(path)


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, """\
        [appliance]
        hostname = mail.example.test
        [listen]
        smtp = tcp:abc
        [limits]
        max_errors = -1
        """)
    problems = problems_of(path)
    assert [line.split(": ")[1] for line in problems] == [
        "[appliance] domains", "[listen] smtp", "[limits] max_errors"]
    assert all(line.startswith(f"{path}: ") for line in problems)


def test_file_path_is_reported_as_given(tmp_path, monkeypatch):
    write(tmp_path, "[appliance]\nhostname = h.example\n")
    monkeypatch.chdir(tmp_path)
    assert problems_of("mailappliance.conf")[0].startswith("mailappliance.conf: [appliance] domains: ")


@pytest.mark.parametrize("text, line", [
    ("hostname = x\n", "line 1: 'hostname = x' comes before any [section]"),
    (MINIMAL + "hostname = y\n", "[appliance] hostname: set twice (line 4)"),
    (MINIMAL + "[appliance]\n", "[appliance] appears twice (line 4)"),
    (MINIMAL + "just words\n", "line 4: cannot parse 'just words'; write key = value"),
])
def test_malformed_ini(tmp_path, text, line):
    path = write(tmp_path, text)
    assert problems_of(path) == [f"{path}: {line}"]


def test_missing_file(tmp_path):
    path = str(tmp_path / "nothing.conf")
    assert problems_of(path) == [f"{path}: cannot read: No such file or directory; choose the file with --config PATH "
                                 "or the environment variable MAILAPPLIANCE_CONFIG"]


# ---------------------------------------------------------------- describe and the shipped file

def test_describe_shows_effective_values(tmp_path):
    lines = config.describe(config.load(write(tmp_path, CONTRACT_EXAMPLE)))
    assert "appliance.domains = example.test, example.org" in lines
    assert f"storage.path = {tmp_path}/var/mail/{{domain}}/{{local}}" in lines
    assert "masquerade.as = example.test" in lines
    assert "queue.retry_max = 3600" in lines


# The keys etc/mailappliance.conf sets to something else than their default, and why: hostname
# and domains have none (required); a service is off unless [listen] names it, and the file an
# admin copies (docs/operations.md) turns on each at its standard port.
SITE_VALUES = {("listen", "smtp"): "tcp:25", ("listen", "submission"): "tcp:587", ("listen", "smtps"): "tcp:465",
               ("listen", "pop3"): "tcp:110", ("listen", "pop3s"): "tcp:995", ("listen", "imap"): "tcp:143",
               ("listen", "imaps"): "tcp:993"}


def shipped_keys() -> dict[tuple[str, str], tuple[str, bool, str]]:
    """(section, key) -> (value, commented out, the comment above it) of every schema key that
    etc/mailappliance.conf writes as `key = value` or `# key = value`."""
    found: dict[tuple[str, str], tuple[str, bool, str]] = {}
    section, comment = "", []
    for line in open(ETC_CONF, encoding="utf-8").read().splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        setting = re.fullmatch(r"(# )?(\w+) =(.*)", line)
        if header:
            section, comment = header.group(1), []
        elif setting and setting.group(2) in config._SCHEMA.get(section, {}):
            key = (section, setting.group(2))
            assert key not in found, f"[{section}] {key[1]} is written twice"
            value = re.sub(r"\s+#.*", "", setting.group(3)).strip()
            found[key] = (value, bool(setting.group(1)), " ".join(comment))
            comment = []
        elif line.startswith("#"):
            comment.append(line.lstrip("# "))
    return found


def required(spec) -> bool:
    try:
        spec.convert(spec.default, "/")
    except ValueError:
        return True
    return False


def test_shipped_file_writes_every_key_with_its_real_default():
    """Issue 12 item 8: the file an admin copies says every default truly, and sets nothing else."""
    shipped = shipped_keys()
    for section, keys in config._SCHEMA.items():
        for key, spec in keys.items():
            assert (section, key) in shipped, f"[{section}] {key} is missing from etc/mailappliance.conf"
            value, commented, comment = shipped[section, key]
            if required(spec):
                assert value and "Required" in comment, f"[{section}] {key}: a required key needs an example"
            elif (section, key) in SITE_VALUES:
                assert (value, commented) == (SITE_VALUES[section, key], False), f"[{section}] {key}"
            else:
                assert spec.convert(value, "/etc/m") == spec.convert(spec.default, "/etc/m"), \
                    f"[{section}] {key} = {value!r} in etc/mailappliance.conf, but its default is {spec.default!r}"
                assert " ".join(_words(value)) == " ".join(_words(spec.default)) or _same_number(value, spec.default), \
                    f"[{section}] {key}: write the default as {spec.default!r}"
    # [ldap] is read only with backend = ldap: all of it is commented out, ready to uncomment.
    assert all(commented for (section, _), (_, commented, _) in shipped.items() if section == "ldap")


def test_shipped_file_comments_say_the_real_default():
    """Each key's comment ends with `Default: VALUE` (or `empty`, or `as shown`), and it is true."""
    for (section, key), (value, _, comment) in shipped_keys().items():
        spec = config._SCHEMA[section][key]
        if required(spec) or (section, key) in SITE_VALUES:
            continue
        said = re.search(r"Default: (.*)$", comment)
        assert said, f"[{section}] {key}: its comment does not say its default"
        text = re.sub(r"\s+\(.*\)$", "", said.group(1)).rstrip(".")
        text = {"empty": "", "as shown": value}.get(text, text)
        assert spec.convert(text, "/etc/m") == spec.convert(spec.default, "/etc/m"), \
            f"[{section}] {key}: the comment says the default is {text!r}, it is {spec.default!r}"


def _words(text: str) -> list[str]:
    return [word for word in re.split(r"[,\s]+", text) if word]


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def test_shipped_file_behaves_as_the_defaults(tmp_path):
    """Loaded, the shipped file gives the same settings as a file holding only what has no default."""
    shipped = config.load(write(tmp_path, open(ETC_CONF, encoding="utf-8").read()))
    listen = "".join(f"{key} = {value}\n" for (_, key), value in SITE_VALUES.items())
    minimal = config.load(write(tmp_path, "[appliance]\nhostname = mail.example.test\n"
                                          "domains = example.test, example.org\n[listen]\n" + listen, "min.conf"))
    assert dataclasses.replace(shipped, path="") == dataclasses.replace(minimal, path="")


# ---------------------------------------------------------------- config.py stays a leaf

def test_config_imports_nothing_of_ours_but_errors_and_address():
    """Every module may import config; config importing them back would make a circle."""
    source = os.path.join(os.path.dirname(config.__file__), "config.py")
    tree = ast.parse(open(source, encoding="utf-8").read())
    ours = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            ours |= {alias.name for alias in node.names if alias.name.split(".")[0] == "appliance"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "appliance":
            ours |= {node.module} if node.module != "appliance" else {f"appliance.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            ours.add(f"relative import {'.' * node.level}{node.module or ''}")
    assert ours <= {"appliance.errors", "appliance.address"}, ours
