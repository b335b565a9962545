"""The whole appliance (`twistd mailappliance`) with `[directory] backend = ldap` against a real slapd.

What a user notices through SMTP, POP3 and IMAP: delivery to directory addresses, alias and group
expansion, logins with the directory's passwords, temporary answers while slapd is down (and
nothing lost), failover between two slapd instances, and TLS to the directory. The directory
content is the small organisation of test_ldap_directory.py (alice {SSHA} with a second address,
bob {CRYPT}, carol disabled, a nisMailAlias postmaster@ and a groupOfNames staff@).
"""
from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from appliance import config
from appliance.usershow import show_user
from tests.integration.harness import DOMAIN, HOSTNAME, SMTP_SERVICES, Appliance, ApplianceError, make_message, wait_for
from tests.integration.slapd import BASE_DN, SERVICE_DN, SERVICE_PASSWORD, Slapd, require_slapd, write_test_certificates
from tests.integration.test_imap import IMAP
from tests.integration.test_ldap_directory import PASSWORDS, PEOPLE, organisation_ldif
from tests.integration.test_pop3 import POP3

ALICE, BOB, CAROL = (f"{name}@{DOMAIN}" for name in ("alice", "bob", "carol"))
SENDER = "someone@outside.example"
ACCESS_SERVICES = SMTP_SERVICES + ("pop3", "imap")


class LDAPSetup:
    """Starts slapd instances and appliances that use them; everything is stopped at teardown."""

    def __init__(self, folder: str, appliances: list[Appliance]):
        self.folder = folder
        self.appliances = appliances
        self.slapds: list[Slapd] = []
        self.password_file = os.path.join(folder, "ldap.secret")
        with open(self.password_file, "w", encoding="utf-8") as out:
            out.write(SERVICE_PASSWORD + "\n")

    def slapd(self, name: str = "slapd", tls: bool = False) -> Slapd:
        server = Slapd(os.path.join(self.folder, name), tls=tls)
        os.makedirs(server.folder)
        self.slapds.append(server)
        server.setup(organisation_ldif())
        server.start()
        return server

    def appliance(self, *urls: str, services=SMTP_SERVICES, aliases: dict[str, str] | None = None,
                  **ldap: str) -> Appliance:
        """An appliance whose only users are the directory's; cache_ttl 0 so outages show at once."""
        settings = {"url": ", ".join(urls), "bind_dn": SERVICE_DN, "bind_password_file": self.password_file,
                    "base_dn": BASE_DN, "timeout": "1", "cache_ttl": "0", **ldap}
        overrides = {"directory": {"backend": "ldap"}, "ldap": settings,
                     "queue": {"retry_initial": "1", "retry_max": "2"}, "aliases": dict(aliases or {})}
        appliance = Appliance(os.path.join(self.folder, f"appliance{len(self.appliances)}"), services=services,
                              overrides=overrides, users={})
        self.appliances.append(appliance)
        try:
            appliance.setup()
            appliance.start()
        except ApplianceError as problem:
            pytest.fail(str(problem), pytrace=False)
        return appliance

    def stop(self) -> None:
        for appliance in self.appliances:
            appliance.stop()
        for server in self.slapds:
            server.stop()


@pytest.fixture
def ldap(request: pytest.FixtureRequest, tmp_path) -> Iterator[LDAPSetup]:
    require_slapd()
    appliances: list[Appliance] = []
    request.node.appliances = appliances        # conftest shows their logs when a test fails
    setup = LDAPSetup(str(tmp_path), appliances)
    yield setup
    setup.stop()


@pytest.fixture
def slapd(ldap: LDAPSetup) -> Slapd:
    return ldap.slapd()


# ---- helpers -------------------------------------------------------------------------------------

def send(app: Appliance, recipients: list[str], subject: str) -> dict:
    """One message through the MX port; the refused recipients, as smtplib reports them."""
    with app.smtp() as client:
        return client.sendmail(SENDER, recipients, make_message(subject, to=", ".join(recipients)))


def subjects(app: Appliance, user: str) -> list[str]:
    found = []
    for raw in app.messages(user):
        found += [line[9:].decode() for line in raw.splitlines() if line.startswith(b"Subject: ")]
    return found


def wait_for_subjects(app: Appliance, user: str, expected: list[str], timeout: float = 10.0) -> None:
    wait_for(lambda: sorted(subjects(app, user)) == sorted(expected), timeout=timeout)


def submission(app: Appliance) -> smtplib.SMTP:
    client = app.smtp("submission", timeout=20)
    client.starttls(context=app.tls_context())
    client.ehlo()
    return client


def auth(client: smtplib.SMTP, login: str, password: str, mechanism: str = "PLAIN") -> tuple[int, bytes]:
    """AUTH with one given mechanism (smtplib's login() would pick CRAM-MD5 first when offered)."""
    client.user, client.password = login, password
    method: Callable = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login}[mechanism]
    try:
        return client.auth(mechanism, method)
    except smtplib.SMTPAuthenticationError as refused:
        return refused.smtp_code, refused.smtp_error


def pop3_login(app: Appliance, login: str, password: str) -> POP3:
    client = POP3(app.ports["pop3"])
    client.stls(context=app.tls_context())
    client.user(login)
    client.pass_(password)
    return client


def imap_login(app: Appliance, login: str, password: str) -> IMAP:
    client = IMAP(HOSTNAME, app.ports["imap"], timeout=10)
    client.starttls(ssl_context=app.tls_context())
    client.login(login, password)
    return client


# ---- delivery --------------------------------------------------------------------------------------

def test_mail_to_mail_and_mail_local_address_reaches_the_same_mailbox(ldap, slapd):
    app = ldap.appliance(slapd.url)
    assert send(app, [ALICE], "to mail") == {}
    assert send(app, ["A.Smith@example.test"], "to mailLocalAddress") == {}
    assert send(app, ["bob@EXAMPLE.test"], "to bob") == {}
    wait_for_subjects(app, "alice", ["to mail", "to mailLocalAddress"])
    wait_for_subjects(app, "bob", ["to bob"])
    with app.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        code, text = client.rcpt("nobody@example.test")
    assert (code, text[:5]) == (550, b"5.1.1")


def test_nis_mail_alias_and_group_give_each_member_one_copy(ldap, slapd):
    app = ldap.appliance(slapd.url)
    assert send(app, ["postmaster@example.test"], "alias") == {}
    assert send(app, ["staff@example.test"], "group") == {}
    assert send(app, ["staff@example.test", "postmaster@example.test", ALICE], "all three") == {}
    for user in ("alice", "bob"):
        wait_for_subjects(app, user, ["alias", "group", "all three"])
    assert not os.path.exists(app.mailbox_path("nomail@example.test"))


def test_aliases_file_alias_to_a_directory_group_or_alias_reaches_its_members(ldap, slapd, tmp_path):
    """`sales: staff@...` in the aliases file, where staff@ is a groupOfNames in LDAP (and
    `help:` a nisMailAlias): the members get the mail, as if the group had been written to."""
    aliases = tmp_path / "aliases.file"
    aliases.write_text("sales: staff@example.test\nhelp: postmaster@example.test, alice\n")
    app = ldap.appliance(slapd.url, aliases={"file": str(aliases)})
    assert send(app, ["sales@example.test"], "to sales") == {}
    assert send(app, ["help@example.test"], "to help") == {}
    for user in ("alice", "bob"):
        wait_for_subjects(app, user, ["to sales", "to help"])


# ---- SMTP AUTH -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_auth_with_ssha_and_crypt_passwords(ldap, slapd, mechanism):
    app = ldap.appliance(slapd.url)
    logins = ((ALICE, PASSWORDS["alice"], ALICE), ("a.smith@example.test", PASSWORDS["alice"], ALICE),
              (BOB, PASSWORDS["bob"], BOB))
    for login, password, primary in logins:
        with submission(app) as client:
            assert auth(client, login, password, mechanism)[0] == 235, login
            client.sendmail(primary, [ALICE], make_message(f"from {login}", sender=primary))
    wait_for_subjects(app, "alice", [f"from {ALICE}", "from a.smith@example.test", f"from {BOB}"])
    assert "auth-ok service=submission" in app.log()


def test_wrong_password_unknown_and_disabled_user_get_535(ldap, slapd):
    app = ldap.appliance(slapd.url)
    with submission(app) as client:
        for login, password in ((ALICE, "wrong"), (ALICE, PASSWORDS["bob"]), (CAROL, PASSWORDS["carol"]),
                                ("nobody@example.test", PASSWORDS["alice"])):
            code, text = auth(client, login, password)
            assert (code, text[:5]) == (535, b"5.7.8"), login
        assert auth(client, BOB, PASSWORDS["bob"])[0] == 235          # the session is still usable
    assert "directory unavailable" not in app.log()


def test_filter_injection_in_the_login_finds_nothing(ldap, slapd):
    app = ldap.appliance(slapd.url)
    for login in ("bob)(uid=*)@example.test", "*@example.test", "alice@example.test)(mail=*",
                  "*)(objectClass=*@example.test"):
        for password in (PASSWORDS["alice"], PASSWORDS["bob"]):
            with submission(app) as client:
                code, _ = auth(client, login, password)
                assert code == 535, (login, password)
                assert auth(client, ALICE, PASSWORDS["alice"])[0] == 235   # resets the throttle
    with app.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt("*@example.test")[0] == 550
    log = app.log()
    assert "directory unavailable" not in log and "ldap-unavailable" not in log


# ---- POP3 and IMAP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["alice", "bob"])        # {SSHA} and {CRYPT}
def test_pop3_and_imap_logins_against_the_directory(ldap, slapd, user):
    app = ldap.appliance(slapd.url, services=ACCESS_SERVICES)
    address = f"{user}@{DOMAIN}"
    assert send(app, [address], "for reading") == {}
    wait_for_subjects(app, user, ["for reading"])
    client = pop3_login(app, address, PASSWORDS[user])
    assert client.stat()[0] == 1
    client.quit()
    imap = imap_login(app, address, PASSWORDS[user])
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
    pop3 = POP3(app.ports["pop3"])
    pop3.stls(context=app.tls_context())
    pop3.user(address)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        pop3.pass_("wrong")
    pop3.quit()
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        imap_login(app, CAROL, PASSWORDS["carol"])


def test_pop3_and_imap_say_temporary_while_slapd_is_down(ldap, slapd):
    app = ldap.appliance(slapd.url, services=ACCESS_SERVICES)
    slapd.stop()
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
        pop3_login(app, ALICE, PASSWORDS["alice"])
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        imap_login(app, ALICE, PASSWORDS["alice"])
    slapd.start()
    pop3_login(app, ALICE, PASSWORDS["alice"]).quit()
    imap_login(app, ALICE, PASSWORDS["alice"]).logout()


# ---- outages ---------------------------------------------------------------------------------------

def test_slapd_stopped_mid_session_gives_4xx_and_loses_nothing(ldap, slapd):
    app = ldap.appliance(slapd.url)
    with app.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt(ALICE)[0] == 250
        slapd.stop()
        assert client.data(make_message("queued before the outage"))[0] == 250
        client.mail(SENDER)
        code, text = client.rcpt(BOB)
        assert (code, text[:5]) == (451, b"4.4.3")
    with submission(app) as client:
        code, text = auth(client, ALICE, PASSWORDS["alice"])
        assert (code, text[:5]) == (454, b"4.7.0")
    wait_for(lambda: any(line.split("] ", 1)[-1].startswith("deferred ") and f"rcpt={ALICE}" in line
                         for line in app.log().splitlines()))
    assert app.messages("alice") == []
    assert "ldap-unavailable" in app.log()

    slapd.start()
    wait_for_subjects(app, "alice", ["queued before the outage"], timeout=15)
    assert "ldap-available" in app.log()
    assert send(app, [BOB], "after the outage") == {}
    wait_for_subjects(app, "bob", ["after the outage"])
    with submission(app) as client:
        assert auth(client, ALICE, PASSWORDS["alice"])[0] == 235


def test_failover_to_the_second_slapd_and_back(ldap, slapd):
    second = ldap.slapd("second")
    app = ldap.appliance(slapd.url, second.url)
    slapd.stop()
    assert send(app, [ALICE], "via the second") == {}
    with submission(app) as client:
        assert auth(client, BOB, PASSWORDS["bob"])[0] == 235
    slapd.start()
    second.stop()
    assert send(app, [ALICE], "via the first again") == {}
    with submission(app) as client:
        assert auth(client, BOB, PASSWORDS["bob"])[0] == 235
    wait_for_subjects(app, "alice", ["via the second", "via the first again"])


# ---- TLS to the directory ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ldaps", "starttls"])
def test_tls_to_the_directory_with_ca_file(ldap, kind):
    server = ldap.slapd(tls=True)
    if kind == "ldaps":
        app = ldap.appliance(server.ldaps_url, ca_file=server.ca_file)
    else:
        app = ldap.appliance(server.url, starttls="yes", ca_file=server.ca_file)
    with submission(app) as client:
        assert auth(client, BOB, PASSWORDS["bob"])[0] == 235
    assert send(app, ["a.smith@example.test"], f"over {kind}") == {}
    wait_for_subjects(app, "alice", [f"over {kind}"])


def test_directory_certificate_from_an_unknown_ca_is_temporary_not_a_bad_password(ldap):
    server = ldap.slapd(tls=True)
    other = os.path.join(ldap.folder, "other-ca")
    os.makedirs(other)
    write_test_certificates(other, ["127.0.0.1"])
    app = ldap.appliance(server.ldaps_url, ca_file=os.path.join(other, "ca.pem"))
    with submission(app) as client:
        assert auth(client, BOB, PASSWORDS["bob"])[0] == 454
    with app.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt(ALICE)[0] == 451


# ---- user show -------------------------------------------------------------------------------------

def test_user_show_tells_the_entry_mailbox_and_lists_without_secrets(ldap, slapd):
    app = ldap.appliance(slapd.url)
    cfg = config.load(app.config_path)
    shown = "\n".join(show_user(cfg, "A.Smith@example.test"))
    assert f"uid=alice,{PEOPLE}" in shown
    assert "alice@example.test" in shown and "a.smith@example.test" in shown
    assert app.mailbox_path(ALICE) in shown
    assert "enabled" in shown
    assert PASSWORDS["alice"] not in shown and "{SSHA}" not in shown
    group = "\n".join(show_user(cfg, "staff@example.test"))
    assert "alice@example.test, bob@example.test" in group
    assert "disabled" in "\n".join(show_user(cfg, CAROL))
    assert "dave@elsewhere.test" in "\n".join(show_user(cfg, "dave@example.test"))


# ---- commands and files only from the aliases file (issue 10, defect 1) ---------------------------

def test_commands_and_files_named_in_the_directory_are_refused_never_run(ldap, slapd, request):
    """Whoever may edit a list or a forward in LDAP must not run programs or write files on the server."""
    drop = tempfile.mkdtemp(prefix="ma", dir="/tmp")    # short: `/tmp/maXXXX/routed@...` must be a valid address
    request.addfinalizer(lambda: shutil.rmtree(drop, ignore_errors=True))
    os.chmod(drop, 0o777)                     # a command would run as nobody: let it leave its mark
    slapd.add(f"""dn: cn=evil@example.test,ou=aliases,{BASE_DN}
objectClass: nisMailAlias
cn: evil@example.test
rfc822MailMember: alice@example.test
rfc822MailMember: |touch {drop}/ran

dn: cn=evilfile@example.test,ou=aliases,{BASE_DN}
objectClass: nisMailAlias
cn: evilfile@example.test
rfc822MailMember: {drop}/list.mbox

dn: uid=mallory,{PEOPLE}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: mallory
cn: Mallory
sn: Mallory
mail: mallory@example.test
mailRoutingAddress: {drop}/routed@example.test
""")
    app = ldap.appliance(slapd.url, aliases={"allow_commands": "yes"})
    with app.smtp() as client:
        client.ehlo()
        client.mail(SENDER)
        for rcpt in ("evil@example.test", "evilfile@example.test", "mallory@example.test"):
            code, text = client.rcpt(rcpt)
            assert (code, text[:5]) == (550, b"5.7.1"), rcpt
        assert client.rcpt(ALICE)[0] == 250
        client.data(make_message("after-refusals"))
    wait_for_subjects(app, "alice", ["after-refusals"])
    time.sleep(1)
    assert os.listdir(drop) == []
    assert app.log().count("directory-target-refused") == 3
