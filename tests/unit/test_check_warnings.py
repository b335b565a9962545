"""`check` finds meaning errors (issue 12 item 6): files that parse but would not do what the
operator meant. Each is one `FILE:LINE: warning: ...` line on standard output and `check`
still exits 0; an expired certificate is an error (exit 1). twistd logs the same warnings and
starts.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.testing import MemoryReactorClock

from appliance import checks, config, tap
from appliance.errors import DirectoryUnavailable
from tests.unit.checkrig import LogLines
from tests.unit.test_cli import run

ETC_ALIASES = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "aliases")

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test

[listen]
submission = tcp:5870

[aliases]
file = aliases
"""

ROLES = "postmaster: alice\nabuse: alice\n"


@pytest.fixture
def site(tmp_path, capsys):
    """A config with a certificate for its hostname, the user alice and postmaster/abuse aliases."""
    (tmp_path / "mailappliance.conf").write_text(CONF)
    (tmp_path / "aliases").write_text(ROLES)
    assert run(capsys, "--config", str(tmp_path / "mailappliance.conf"), "gen-cert")[0] == 0
    add_user(capsys, tmp_path, "alice@example.test")
    return tmp_path


def add_user(capsys, folder, address: str) -> None:
    assert run(capsys, "--config", str(folder / "mailappliance.conf"), "user", "add", address, stdin="pw\n")[0] == 0


def check(capsys, folder) -> tuple[int, list[str], str]:
    code, out, err = run(capsys, "--config", str(folder / "mailappliance.conf"), "check")
    return code, [line for line in out.splitlines() if "warning:" in line], err


def write_certificate(folder, names: list[str], days_left: float) -> None:
    """A self-signed pair in tls/ for `names`, whose validity ends `days_left` days from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=90))
                   .not_valid_after(now + datetime.timedelta(days=days_left))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                   .sign(key, hashes.SHA256()))
    (folder / "tls/cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "tls/key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))


def test_a_sound_site_has_no_warnings(capsys, site):
    assert check(capsys, site) == (0, [], "")


# ---------------------------------------------------------------- aliases

def test_an_alias_to_a_user_that_does_not_exist(capsys, site):
    (site / "aliases").write_text(ROLES + "# sales\nsales: alice, bobb\n")
    code, warnings, err = check(capsys, site)
    assert (code, err) == (0, "")
    assert warnings == [f"{site}/aliases:4: warning: sales@example.test -> bobb@example.test: no such user; "
                        "mail to sales@example.test is refused (550 5.1.1)"]


def test_an_alias_of_an_alias_and_a_self_copy_are_fine(capsys, site):
    (site / "aliases").write_text(ROLES + "team: sales\nsales: alice\nalice: alice, alice@elsewhere.net\n")
    assert check(capsys, site)[1] == []


def test_an_alias_to_a_name_that_is_not_a_user_in_every_domain(capsys, site):
    """A bare name is an alias in every local domain; its bare targets are in each of them."""
    set_domains(site, "example.test, example.org")
    (site / "aliases").write_text("postmaster: alice@example.test\nabuse: postmaster\nsales: alice\n")
    code, warnings, _ = check(capsys, site)
    assert code == 0
    assert warnings == [f"{site}/aliases:3: warning: sales@example.org -> alice@example.org: no such user; "
                        "mail to sales@example.org is refused (550 5.1.1)"]


def test_an_alias_for_an_address_outside_the_domains_is_never_used(capsys, site):
    (site / "aliases").write_text(ROLES + "info@example.org: alice\n")
    warnings = check(capsys, site)[1]
    assert warnings == [f"{site}/aliases:3: warning: info@example.org is not in [appliance] domains "
                        "(example.test): this alias is never used, mail to it is relayed or refused"]


def test_an_alias_to_a_reserved_example_domain(capsys, site):
    (site / "aliases").write_text(ROLES + "root: admin@example.com\n")
    warnings = check(capsys, site)[1]
    assert warnings == [f"{site}/aliases:3: warning: root@example.test -> admin@example.com: example.com is "
                        "a reserved example domain (RFC 2606), mail to it cannot be delivered"]


def test_the_sample_aliases_file_copied_unchanged(capsys, site):
    shutil.copy(ETC_ALIASES, site / "aliases")
    code, warnings, _ = check(capsys, site)
    assert code == 0
    assert (f"{site}/aliases: warning: this is the sample aliases file (etc/aliases) unchanged; "
            "its names are examples: write your own") in warnings
    line = open(ETC_ALIASES).read().splitlines().index("contact: alice, bob") + 1
    assert f"{site}/aliases:{line}: warning: contact@example.test -> bob@example.test: no such user; " \
           "mail to contact@example.test is refused (550 5.1.1)" in warnings


def test_a_catch_all_to_a_user_that_does_not_exist(capsys, site):
    with open(site / "mailappliance.conf", "a") as f:
        f.write("catch_all = example.test: bobb@example.test\n")
    code, warnings, _ = check(capsys, site)
    assert warnings == [f"{site}/mailappliance.conf:10: warning: [aliases] catch_all: example.test -> "
                        "bobb@example.test: no such user; mail to unknown users of example.test is refused "
                        "(550 5.1.1)"]


# ---------------------------------------------------------------- users

def set_domains(folder, domains: str) -> None:
    path = folder / "mailappliance.conf"
    path.write_text(re.sub(r"(?m)^domains = .*$", f"domains = {domains}", path.read_text()))


def test_a_user_outside_the_domains(capsys, site):
    """The demo's user kept after [appliance] domains changed: its mail was relayed out and bounced."""
    set_domains(site, "example.test, example.org")
    add_user(capsys, site, "demo@example.org")
    set_domains(site, "example.test")
    code, warnings, _ = check(capsys, site)
    assert code == 0
    assert warnings == [f"{site}/users:2: warning: demo@example.org is not in [appliance] domains "
                        "(example.test): mail to it is sent out to example.org's MX, never delivered here"]


# ---------------------------------------------------------------- the certificate

def test_hostname_not_among_the_certificates_names(capsys, site):
    write_certificate(site, ["smtp.example.test", "*.mail.example.test"], days_left=300)
    code, warnings, _ = check(capsys, site)
    assert code == 0
    assert warnings == [f"{site}/mailappliance.conf:2: warning: [appliance] hostname: mail.example.test is not "
                        f"among the names of {site}/tls/cert.pem (smtp.example.test, *.mail.example.test); "
                        "clients that verify the certificate refuse it"]


@pytest.mark.parametrize("hostname, names, matches", [
    ("mail.example.test", ["MAIL.example.test"], True),
    ("mail.example.test", ["*.example.test"], True),
    ("a.mail.example.test", ["*.example.test"], False),     # a wildcard covers one label (RFC 6125 6.4.3)
    ("example.test", ["*.example.test"], False),
    ("mail.example.test", ["mail.example.org"], False),
])
def test_certificate_name_matching(hostname, names, matches):
    assert checks.name_matches(hostname, names) is matches


def test_a_certificate_that_expires_within_14_days(capsys, site):
    write_certificate(site, ["mail.example.test"], days_left=10.5)
    code, warnings, _ = check(capsys, site)
    assert code == 0
    [warning] = warnings
    assert warning.startswith(f"{site}/tls/cert.pem: warning: [tls] certificate: expires in 10 days (")
    assert warning.endswith("); renew it, then reload (systemctl reload mailappliance)")


def test_a_certificate_valid_for_longer_is_quiet(capsys, site):
    write_certificate(site, ["mail.example.test"], days_left=15)
    assert check(capsys, site)[1] == []


def test_an_expired_certificate_is_an_error_for_check_but_not_at_start(capsys, site):
    write_certificate(site, ["mail.example.test"], days_left=-1)
    code, out, err = run(capsys, "--config", str(site / "mailappliance.conf"), "check")
    assert code == 1
    assert err.startswith(f"{site}/mailappliance.conf: [tls] certificate: {site}/tls/cert.pem expired on ")
    cfg = config.load(str(site / "mailappliance.conf"))
    assert checks.check_files(cfg, starting=True) == []      # port 25 still takes mail meanwhile
    assert any("expired on" in line for line in checks.warnings(cfg, starting=True))


# ---------------------------------------------------------------- DKIM keys

def test_a_dkim_key_the_service_user_cannot_read(capsys, site):
    assert run(capsys, "--config", str(site / "mailappliance.conf"), "dkim", "keygen", "example.test")[0] == 0
    key = site / "var/dkim/example.test/mail.rsa.pem"
    if os.geteuid() == 0:       # the service user is state_dir's owner: not root any more
        os.chown(site / "var", 65534, 65534)
    else:
        os.chmod(key, 0)
    code, warnings, _ = check(capsys, site)
    assert code == 0
    uid = os.stat(site / "var").st_uid
    assert warnings == [f"{key}: warning: [dkim] keys: not readable by uid {uid} (the owner of {site}/var, "
                        "who runs the server); mail from @example.test goes out unsigned"]


# ---------------------------------------------------------------- at start

def test_twistd_logs_the_warnings_and_starts(capsys, site):
    (site / "aliases").write_text(ROLES + "sales: bobb\n")
    options = tap.Options()
    with LogLines() as log:
        options.parseOptions(["--config", str(site / "mailappliance.conf")])
        tap.makeService(options, MemoryReactorClock())    # builds everything; the real reactor stays clean
    assert log.matching("config-warning") == [
        f'config-warning warning="{site}/aliases:3: warning: sales@example.test -> bobb@example.test: no such user; '
        "mail to sales@example.test is refused (550 5.1.1)\""]


# ---------------------------------------------------------------- LDAP (tests/integration/test_check_ldap_aliases.py asks a real slapd)

class SlowDirectory:
    """An LDAP client whose check passes but whose lookups find the directory gone."""

    def __init__(self, settings, password: str):
        pass

    def check(self, deadline: float) -> str:
        return "ldap://ldap.example.test: bound"

    def find_user(self, address: str, deadline: float):
        raise DirectoryUnavailable("ldap://ldap.example.test: timed out")

    find_alias = find_user

    def close(self) -> None:
        pass


def test_alias_targets_ldap_does_not_answer_for_are_counted_in_one_line(capsys, site, monkeypatch):
    monkeypatch.setattr(checks, "LDAPClient", SlowDirectory)
    (site / "ldap.secret").write_text("s3cret\n")
    with open(site / "mailappliance.conf", "a") as f:
        f.write("\n[directory]\nbackend = ldap\n\n[ldap]\nurl = ldap://ldap.example.test\n"
                "bind_dn = cn=m,dc=example,dc=test\nbind_password_file = ldap.secret\nbase_dn = dc=example,dc=test\n")
    code, warnings, _ = check(capsys, site)
    assert code == 0
    assert warnings == [f"{site}/mailappliance.conf: warning: [ldap] url: 1 alias target(s) not looked up, the "
                        "directory did not answer in time (first: alice@example.test)"]


class GroupDirectory(SlowDirectory):
    """An LDAP client that has the user alice@ and the group staff@, and nothing else."""

    def find_user(self, address: str, deadline: float):
        return object() if address == "alice@example.test" else None

    def find_alias(self, address: str, deadline: float):
        return ["alice@example.test"] if address == "staff@example.test" else None


def test_an_alias_to_a_directory_group_is_fine_one_to_nobody_is_not(capsys, site, monkeypatch):
    """The server expands a file alias's target that is an LDAP group (intake.RecipientResolver._final)."""
    monkeypatch.setattr(checks, "LDAPClient", GroupDirectory)
    (site / "ldap.secret").write_text("s3cret\n")
    (site / "aliases").write_text(ROLES + "sales: staff@example.test\nsupport: stafff@example.test\n")
    with open(site / "mailappliance.conf", "a") as f:
        f.write("\n[directory]\nbackend = ldap\n\n[ldap]\nurl = ldap://ldap.example.test\n"
                "bind_dn = cn=m,dc=example,dc=test\nbind_password_file = ldap.secret\nbase_dn = dc=example,dc=test\n")
    code, warnings, _ = check(capsys, site)
    assert code == 0
    assert warnings == [f"{site}/aliases:4: warning: support@example.test -> stafff@example.test: no such user; "
                        "mail to support@example.test is refused (550 5.1.1)"]


def test_the_hostname_line_is_found_however_the_key_is_spelled(capsys, site):
    conf = site / "mailappliance.conf"
    conf.write_text("# mail server\n" + CONF.replace("hostname = mail.example.test", "HostName=mail.other.test"))
    [warning] = check(capsys, site)[1]
    assert warning.startswith(f"{conf}:3: warning: [appliance] hostname: mail.other.test is not among")
