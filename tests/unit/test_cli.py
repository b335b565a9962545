"""The `mailappliance` command as an operator meets it: exit codes, what it prints, what it changes."""
from __future__ import annotations

import errno
import io
import os
import sys

import pytest

from appliance import checks, cli, config, tls
from appliance.errors import DirectoryUnavailable
from appliance.directory.file import index_entries
from appliance.passwords import verify_password

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test, example.org

[listen]
smtp = tcp:2525
submission = tcp:5870
"""


@pytest.fixture
def conf(tmp_path) -> str:
    path = tmp_path / "mailappliance.conf"
    path.write_text(CONF)
    return str(path)


def run(capsys, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    """main() with `stdin` as standard input; (exit code, stdout, stderr)."""
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = cli.main(list(argv))
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def password_of(users_file: str, user: str) -> str:
    table, _ = index_entries(users_file, open(users_file).read().splitlines())
    return table[user].password_hash


# ---------------------------------------------------------------- check and gen-cert

def test_check_passes_after_gen_cert_and_summarises(capsys, conf, tmp_path):
    assert run(capsys, "--config", conf, "gen-cert")[0] == 0
    run(capsys, "--config", conf, "user", "add", "alice@example.test", stdin="pw\n")
    code, out, err = run(capsys, "--config", conf, "check")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{conf}: OK",
        "hostname    mail.example.test",
        "domains     example.test, example.org",
        "smtp        tcp:2525",
        "submission  tcp:5870",
        f"directory   file {tmp_path}/users, 1 user",
        f"{conf}: warning: postmaster@example.test reaches no user; add `postmaster: someone` to the aliases file",
        f"{conf}: warning: abuse@example.test reaches no user; add `abuse: someone` to the aliases file",
        f"{conf}: warning: postmaster@example.org reaches no user; add `postmaster: someone` to the aliases file",
        f"{conf}: warning: abuse@example.org reaches no user; add `abuse: someone` to the aliases file",
    ]


def test_check_is_quiet_about_roles_that_reach_someone(capsys, conf, tmp_path):
    (tmp_path / "aliases").write_text("postmaster: alice@example.test\nabuse: postmaster\n")
    with open(conf, "a") as f:
        f.write("\n[aliases]\nfile = aliases\n")
    run(capsys, "--config", conf, "gen-cert")
    run(capsys, "--config", conf, "user", "add", "alice@example.test", stdin="pw\n")
    code, out, err = run(capsys, "--config", conf, "check")
    assert code == 0
    assert "warning" not in out      # bare names apply to every local domain


def test_check_warns_about_a_user_whose_mbox_would_be_another_mailboxs_side_file(capsys, conf, tmp_path):
    """Issue 10 defect 7: `bob.lock`'s mbox would be bob's dot-lock, so the store refuses it: say so."""
    with open(conf, "a") as f:
        f.write("\n[storage]\nformat = mbox\n")
    run(capsys, "--config", conf, "gen-cert")
    for user in ("bob@example.test", "bob.lock@example.test", "bob.imap@example.test"):
        run(capsys, "--config", conf, "user", "add", user, stdin="pw\n")
    code, out, err = run(capsys, "--config", conf, "check")
    assert code == 0
    warned = [line for line in out.splitlines() if "mbox mailbox" in line]
    assert [line.split()[:3] for line in warned] == [[f"{tmp_path}/users:2:", "warning:", "bob.lock@example.test"],
                                                     [f"{tmp_path}/users:3:", "warning:", "bob.imap@example.test"]]
    assert "reserved for another mailbox's side file" in warned[0]


def test_check_fails_with_one_line_per_problem(capsys, tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("[appliance]\nhostname = mail.example.test\ndomain = example.test\n")
    code, out, err = run(capsys, "--config", str(path), "check")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"{path}: [appliance] domain: unknown key 'domain'; did you mean 'domains'?",
        f"{path}: [appliance] domains: empty; list the domains whose mail is delivered here, e.g. example.org",
    ]


def test_check_reports_files_on_disk(capsys, conf, tmp_path):
    code, _, err = run(capsys, "--config", conf, "check")
    assert code == 1
    assert err.startswith(f"{conf}: [tls] certificate: cannot read {tmp_path}/tls/cert.pem: No such file")
    assert "Traceback" not in err


def test_config_defaults_to_etc(capsys):
    code, _, err = run(capsys, "check")
    assert code == 1
    assert err.startswith(f"{config.DEFAULT_PATH}: cannot read: No such file or directory; "
                          "choose the file with --config")


def test_gen_cert_does_not_overwrite_without_force(capsys, conf, tmp_path):
    run(capsys, "--config", conf, "gen-cert")
    before = (tmp_path / "tls/cert.pem").read_bytes()
    code, _, err = run(capsys, "--config", conf, "gen-cert")
    assert code == 1
    assert err == f"mailappliance: {tmp_path}/tls/cert.pem already exists; add --force to replace it\n"
    assert run(capsys, "--config", conf, "gen-cert", "--force")[0] == 0
    assert (tmp_path / "tls/cert.pem").read_bytes() != before


# ---------------------------------------------------------------- user ...

def test_user_life_cycle(capsys, conf, tmp_path):
    users = str(tmp_path / "users")
    assert run(capsys, "--config", conf, "user", "add", "Alice@Example.TEST", stdin="first secret\n")[:2] == (
        0, "added alice@example.test\n")
    assert verify_password("first secret", password_of(users, "alice@example.test"))

    assert run(capsys, "--config", conf, "user", "passwd", "alice@example.test", stdin="second\n")[0] == 0
    assert verify_password("second", password_of(users, "alice@example.test"))
    assert not verify_password("first secret", password_of(users, "alice@example.test"))

    run(capsys, "--config", conf, "user", "add", "bob@example.org", stdin="b\n")
    assert run(capsys, "--config", conf, "user", "list")[1] == "alice@example.test\nbob@example.org\n"
    assert run(capsys, "--config", conf, "user", "del", "alice@example.test")[0] == 0
    assert run(capsys, "--config", conf, "user", "list")[1] == "bob@example.org\n"


def test_shared_secret_is_kept_only_when_asked(capsys, conf, tmp_path):
    run(capsys, "--config", conf, "user", "add", "a@example.test", stdin="pw\n")
    run(capsys, "--config", conf, "user", "add", "b@example.test", "--shared-secret", stdin="pw\n")
    table, _ = index_entries(str(tmp_path / "users"), (tmp_path / "users").read_text().splitlines())
    assert table["a@example.test"].shared_secret is None
    assert table["b@example.test"].shared_secret == "pw"


@pytest.mark.parametrize("argv, stdin, message", [
    (("user", "add", "carol@example.test"), "\n", "empty password refused; give it as one line on standard input"),
    (("user", "add", "carol@example.test"), "", "empty password refused; give it as one line on standard input"),
    (("user", "add", "carol@elsewhere.test"), "pw\n",
     "carol@elsewhere.test: elsewhere.test is not one of [appliance] domains (example.test, example.org)"),
    (("user", "add", "carol"), "pw\n", "'carol' is not a mail address; write user@domain"),
    (("user", "passwd", "nobody@example.test"), "pw\n", "nobody@example.test: no such user"),
    (("user", "del", "nobody@example.test"), "", "nobody@example.test: no such user"),
])
def test_user_mistakes_are_one_line(capsys, conf, argv, stdin, message):
    code, out, err = run(capsys, "--config", conf, *argv, stdin=stdin)
    assert (code, out, err) == (1, "", f"mailappliance: {message}\n")


def test_adding_a_user_twice_is_refused(capsys, conf):
    run(capsys, "--config", conf, "user", "add", "alice@example.test", stdin="pw\n")
    code, _, err = run(capsys, "--config", conf, "user", "add", "alice@example.test", stdin="other\n")
    assert (code, err) == (1, "mailappliance: alice@example.test: user already exists\n")


LDAP_CONF = CONF + """\
[directory]
backend = ldap
[ldap]
url = ldap://ldap.example.test
bind_dn = cn=mailappliance,dc=example,dc=test
bind_password_file = ldap.secret
base_dn = dc=example,dc=test
"""


@pytest.fixture
def ldap_conf(tmp_path) -> str:
    (tmp_path / "ldap.secret").write_text("s3cret\n")
    (tmp_path / "m.conf").write_text(LDAP_CONF)
    tls_pair = (str(tmp_path / "tls/cert.pem"), str(tmp_path / "tls/key.pem"))
    tls.generate_self_signed("mail.example.test", *tls_pair)
    return str(tmp_path / "m.conf")


class FakeLDAPClient:
    """Stands in for the blocking ldap3 client; `answer` is what check() says or raises."""

    answer: object = "ldap://ldap.example.test: bound"
    made: list[tuple[object, str]] = []

    def __init__(self, settings, password: str):
        FakeLDAPClient.made.append((settings, password))

    def check(self, deadline: float) -> str:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self) -> None:
        pass


def test_check_reaches_the_ldap_directory(capsys, ldap_conf, monkeypatch):
    monkeypatch.setattr(checks, "LDAPClient", FakeLDAPClient)
    code, out, err = run(capsys, "--config", ldap_conf, "check")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "directory   ldap: ldap://ldap.example.test: bound"
    assert FakeLDAPClient.made[-1][1] == "s3cret"


def test_check_fails_when_ldap_does_not_answer(capsys, ldap_conf, monkeypatch):
    monkeypatch.setattr(checks, "LDAPClient", FakeLDAPClient)
    monkeypatch.setattr(FakeLDAPClient, "answer", DirectoryUnavailable("ldap://ldap.example.test: timed out"))
    code, out, err = run(capsys, "--config", ldap_conf, "check")
    assert (code, out) == (1, "")
    assert err == (f"{ldap_conf}: [ldap] url: the directory does not answer as needed: "
                   "ldap://ldap.example.test: timed out\n")


def test_user_commands_refuse_the_ldap_backend(capsys, ldap_conf):
    code, _, err = run(capsys, "--config", ldap_conf, "user", "list")
    assert (code, err) == (1, "mailappliance: [directory] backend is ldap; user commands manage the file backend only\n")


def test_password_is_not_an_argument(capsys, conf):
    with pytest.raises(SystemExit):
        cli.main(["--config", conf, "user", "add", "alice@example.test", "secret"])



@pytest.mark.parametrize("command", [["check"], ["user", "show", "alice@example.test"]])
def test_an_unreadable_ldap_password_file_is_one_line(capsys, ldap_conf, command):
    os.remove(os.path.join(os.path.dirname(ldap_conf), "ldap.secret"))
    code, out, err = run(capsys, "--config", ldap_conf, *command)
    assert (code, out) == (1, "")
    assert err == (f"{ldap_conf}: [ldap] bind_password_file: {os.path.dirname(ldap_conf)}/ldap.secret: "
                   "not a readable file\n")

# ---------------------------------------------------------------- demo

def test_demo_as_a_normal_user(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = run(capsys, "demo", str(tmp_path / "demo"))
    assert (code, err) == (0, "")
    cfg = config.load(str(tmp_path / "demo/mailappliance.conf"))
    assert checks.check_files(cfg) == []
    assert cfg.appliance.hostname == "mail.example.test" and cfg.appliance.domains == ("example.test",)
    assert cfg.listen.submission == "tcp:5870:interface=127.0.0.1"
    assert cfg.listen.imaps == "tcp:9930:interface=127.0.0.1"

    password = next(line.split()[1] for line in out.splitlines() if line.startswith("Password:"))
    assert len(password) >= 16
    assert verify_password(password, password_of(cfg.directory.users_file, "demo@example.test"))
    assert f"mailappliance --config {cfg.path}" in out
    assert f"swaks --server 127.0.0.1 --port 5870 --tls --auth-user demo@example.test --auth-password '{password}'" in out
    web_port = cfg.listen.web.split(":")[1]
    assert cfg.listen.web == f"tcp:{web_port}:interface=127.0.0.1"
    assert f"The status page (from this machine, no login): https://127.0.0.1:{web_port}/" in out


def test_demo_hostname_and_existing_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run(capsys, "demo", str(tmp_path / "d"), "--hostname", "mx.example.test")[0] == 0
    assert config.load(str(tmp_path / "d/mailappliance.conf")).appliance.hostname == "mx.example.test"
    code, _, err = run(capsys, "demo", str(tmp_path / "d"))
    assert (code, err) == (1, f"mailappliance: {tmp_path}/d/mailappliance.conf already exists; give a new folder\n")


def test_demo_as_root_uses_standard_ports():
    assert cli.demo_listen(as_root=True, try_bind=lambda address: None) == ({
        "smtp": "tcp:25", "submission": "tcp:587", "smtps": "tcp:465", "pop3": "tcp:110", "pop3s": "tcp:995",
        "imap": "tcp:143", "imaps": "tcp:993"}, [])


def test_the_demo_takes_the_next_port_when_one_is_busy():
    def busy(address):
        return OSError(errno.EADDRINUSE, "in use") if address.port in (25, 2525, 1430) else None
    listen, notes = cli.demo_listen(as_root=True, try_bind=busy)
    assert listen["submission"] == "tcp:587"
    port = int(listen["smtp"].split(":")[1])
    assert listen["smtp"] == f"tcp:{port}:interface=127.0.0.1" and port not in (25, 2525)
    assert notes == [f"smtp: port 25 is in use, port 2525 is in use; using port {port} on 127.0.0.1 instead"]
    listen, notes = cli.demo_listen(as_root=False, try_bind=busy)
    assert listen["imap"] != "tcp:1430:interface=127.0.0.1" and listen["pop3"] == "tcp:1100:interface=127.0.0.1"
    assert [note.split(";")[0] for note in notes] == ["smtp: port 2525 is in use", "imap: port 1430 is in use"]


def test_user_show_prints_the_entry_and_fails_in_one_line(capsys, conf, tmp_path):
    run(capsys, "--config", conf, "user", "add", "alice@example.test", stdin="pw\n")
    code, out, err = run(capsys, "--config", conf, "user", "show", "Alice@example.test")
    assert (code, err) == (0, "")
    assert out.splitlines()[1] == f"{'entry':<14} {tmp_path / 'users'} line 1"
    assert "pw" not in out.split() and "$scrypt$" not in out
    code, out, err = run(capsys, "--config", conf, "user", "show", "nobody@example.test")
    assert (code, out, err) == (1, "", "mailappliance: nobody@example.test: no user, alias or list has this address\n")


def test_user_grant_and_revoke_an_address(capsys, conf, tmp_path):
    run(capsys, "--config", conf, "user", "add", "alice@example.test", stdin="pw\n")
    run(capsys, "--config", conf, "user", "add", "bob@example.test", stdin="pw\n")
    assert run(capsys, "--config", conf, "user", "grant", "alice@example.test", "sales@example.test")[0] == 0
    assert "sales@example.test" in (tmp_path / "users").read_text()
    code, out, err = run(capsys, "--config", conf, "user", "grant", "bob@example.test", "sales@example.test")
    assert code == 1 and "already belongs to alice@example.test" in err
    assert run(capsys, "--config", conf, "user", "revoke", "alice@example.test", "sales@example.test")[0] == 0
    assert "sales@example.test" not in (tmp_path / "users").read_text()
    code, out, err = run(capsys, "--config", conf, "user", "revoke", "alice@example.test", "sales@example.test")
    assert code == 1 and "not one of" in err


def test_the_demo_prints_client_settings_that_verify_the_certificate(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, _ = run(capsys, "demo", str(tmp_path / "demo"))
    cfg = config.load(str(tmp_path / "demo/mailappliance.conf"))
    password = next(line.split()[1] for line in out.splitlines() if line.startswith("Password:"))
    submission, pop3s = (endpoint.split(":")[1] for endpoint in (cfg.listen.submission, cfg.listen.pop3s))
    msmtp = out.split("put these lines in ~/.msmtprc (mode 0600)")[1].split("\n\n")[0].splitlines()[1:]
    assert [line.strip() for line in msmtp] == [
        "account demo", "host 127.0.0.1", f"port {submission}", "tls on", "tls_starttls on",
        f"tls_trust_file {cfg.tls.certificate}", "auth on", "user demo@example.test", f"password {password}",
        "from demo@example.test", "account default : demo"]
    fetchmail = out.split("put these lines in ~/.fetchmailrc (mode 0600)")[1].splitlines()[2:]
    assert [line.strip() for line in fetchmail] == [
        f"poll localhost service {pop3s} protocol POP3 auth password",
        f'user "demo@example.test" password "{password}"',
        f'ssl sslcertck sslcertfile "{cfg.tls.certificate}"',
        f'mda "cat > {tmp_path}/demo/fetched-$$.eml"']


def test_the_demo_status_page_stays_on_loopback_and_moves_off_a_busy_port():
    assert cli.demo_web_listen(try_bind=lambda address: None) == "tcp:8443:interface=127.0.0.1"
    busy = cli.demo_web_listen(try_bind=lambda address: OSError(98, "in use"))
    assert busy.startswith("tcp:") and busy.endswith(":interface=127.0.0.1") and busy != "tcp:8443:interface=127.0.0.1"
