"""POP3 and POP3S against a real appliance, with Python's poplib, fetchmail and getmail6, over Maildir and mbox."""
from __future__ import annotations

import email
import mailbox
import os
import poplib
import socket
import subprocess
import textwrap

import pytest

from tests.integration.harness import (DOMAIN, HOSTNAME, SMTP_SERVICES, Appliance, make_message, require_program,
                                       wait_for)

POP3_SERVICES = SMTP_SERVICES + ("pop3", "pop3s")
ALICE = f"alice@{DOMAIN}"


class POP3(poplib.POP3):
    """poplib to 127.0.0.1 while TLS still checks the name HOSTNAME."""

    def __init__(self, port: int) -> None:
        super().__init__(HOSTNAME, port, timeout=10)

    def _create_socket(self, timeout):
        return socket.create_connection(("127.0.0.1", self.port), timeout)


class POP3_SSL(poplib.POP3_SSL):
    def __init__(self, port: int, context) -> None:
        super().__init__(HOSTNAME, port, timeout=10, context=context)

    def _create_socket(self, timeout):
        return self.context.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout),
                                        server_hostname=self.host)


@pytest.fixture
def pop3_appliance(make_appliance, storage) -> Appliance:
    return make_appliance(storage=storage, services=POP3_SERVICES)


def deliver(appliance: Appliance, *subjects: str) -> None:
    """Mail for alice through the MX port, then wait until the store holds it."""
    before = len(appliance.messages("alice"))
    with appliance.smtp() as client:
        for subject in subjects:
            client.sendmail("someone@outside.example", [ALICE],
                            make_message(subject, body=f"Body of {subject}.\r\n.leading dot\r\n"))
    wait_for(lambda: len(appliance.messages("alice")) == before + len(subjects))


def login(appliance: Appliance) -> POP3:
    """A poplib session on the pop3 port after STLS and USER/PASS."""
    client = POP3(appliance.ports["pop3"])
    client.stls(context=appliance.tls_context())
    client.user(ALICE)
    client.pass_(appliance.users["alice"])
    return client


def subjects(client: poplib.POP3) -> list[str]:
    found = []
    for number in range(1, client.stat()[0] + 1):
        lines = client.retr(number)[1]
        found += [line.decode()[9:] for line in lines if line.startswith(b"Subject: ")]
    return found


def enable_apop(appliance: Appliance) -> str:
    """Store alice's cleartext-equivalent secret, as `user passwd --shared-secret` does."""
    secret = appliance.users["alice"]
    appliance.cli("user", "passwd", ALICE, "--shared-secret", stdin=secret + "\n")
    return secret


# ---- poplib ------------------------------------------------------------------------------------------
def test_poplib_user_pass_after_stls_reads_and_deletes(pop3_appliance):
    deliver(pop3_appliance, "first", "second")
    client = POP3(pop3_appliance.ports["pop3"])
    capabilities = client.capa()
    assert "STLS" in capabilities and "USER" not in capabilities
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.user(ALICE)
    client.stls(context=pop3_appliance.tls_context())
    assert "USER" in client.capa() and "STLS" not in client.capa()
    client.user(ALICE)
    client.pass_(pop3_appliance.users["alice"])
    count, octets = client.stat()
    listed = [int(line.split()[1]) for line in client.list()[1]]
    assert count == 2 and sum(listed) == octets
    lines = client.retr(1)[1]                       # poplib hands back lines already un-stuffed
    assert b".leading dot" in lines
    assert sum(len(line) + 2 for line in lines) == listed[0]      # LIST's octets are exactly what RETR sent
    assert subjects(client) == ["first", "second"]
    client.dele(1)
    client.quit()
    assert subjects(login(pop3_appliance)) == ["second"]


def test_uidl_is_stable_across_sessions_and_restarts(pop3_appliance):
    deliver(pop3_appliance, "one", "two", "three")
    client = login(pop3_appliance)
    first = client.uidl()[1]
    client.quit()
    pop3_appliance.restart()
    client = login(pop3_appliance)
    assert client.uidl()[1] == first
    client.dele(2)
    client.quit()
    client = login(pop3_appliance)
    assert [line.split()[1] for line in client.uidl()[1]] == [first[0].split()[1], first[2].split()[1]]
    client.quit()


def test_poplib_apop_without_tls(pop3_appliance):
    deliver(pop3_appliance, "apop")
    secret = enable_apop(pop3_appliance)
    wait_for(lambda: _apop_works(pop3_appliance, secret), timeout=5)
    client = POP3(pop3_appliance.ports["pop3"])
    assert client.timestamp.match(client.welcome)
    client.apop(ALICE, secret)
    assert subjects(client) == ["apop"]
    client.quit()


def _apop_works(appliance: Appliance, secret: str) -> bool:
    """The directory notices the changed users file at its next request (at most a second stale)
    and offers APOP from then on; a USER/PASS login is such a request."""
    login(appliance).quit()
    client = POP3(appliance.ports["pop3"])
    try:
        client.apop(ALICE, secret)
    except poplib.error_proto:
        return False
    finally:
        client.quit()
    return True


def test_apop_refused_for_users_without_a_shared_secret(pop3_appliance):
    deliver(pop3_appliance, "loads the users file")
    wait_for(lambda: _apop_works(pop3_appliance, enable_apop(pop3_appliance)), timeout=5)
    client = POP3(pop3_appliance.ports["pop3"])
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.apop(f"bob@{DOMAIN}", pop3_appliance.users["bob"])      # bob keeps no shared secret


def test_pop3s_verifies_and_logs_in(pop3_appliance):
    deliver(pop3_appliance, "over tls")
    client = POP3_SSL(pop3_appliance.ports["pop3s"], pop3_appliance.tls_context())
    assert "STLS" not in client.capa() and "USER" in client.capa()
    client.user(ALICE)
    client.pass_(pop3_appliance.users["alice"])
    assert subjects(client) == ["over tls"]
    client.quit()


def test_second_session_is_refused_in_use_until_the_first_quits(pop3_appliance):
    first = login(pop3_appliance)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        login(pop3_appliance)
    first.quit()
    login(pop3_appliance).quit()


def test_mail_arriving_during_a_session_waits_for_the_next_and_survives_its_deletions(pop3_appliance):
    deliver(pop3_appliance, "old")
    client = login(pop3_appliance)
    client.dele(1)
    deliver(pop3_appliance, "new")
    assert client.stat()[0] == 0
    with pytest.raises(poplib.error_proto):
        client.retr(2)
    client.quit()
    client = login(pop3_appliance)
    assert subjects(client) == ["new"]
    client.quit()


def test_a_dropped_connection_deletes_nothing(pop3_appliance):
    deliver(pop3_appliance, "keep me")
    client = login(pop3_appliance)
    client.dele(1)
    client.sock.shutdown(socket.SHUT_RDWR)          # no QUIT: the connection just ends
    client.close()
    client = wait_for(lambda: _try_login(pop3_appliance))
    assert subjects(client) == ["keep me"]
    client.quit()


def _try_login(appliance: Appliance) -> POP3 | None:
    """The lock is freed when the server sees the connection end, a moment after the client closes."""
    try:
        return login(appliance)
    except poplib.error_proto:
        return None


# ---- fetchmail ----------------------------------------------------------------------------------------
def run_fetchmail(appliance: Appliance, tmp_path, server_options: str,
                  user_options: str) -> tuple[subprocess.CompletedProcess, str]:
    """One fetchmail run whose MDA writes each message to its own file; returns (result, that folder)."""
    fetchmail = require_program("fetchmail")
    home = tmp_path / "fetchmail-home"
    home.mkdir(exist_ok=True)
    out = tmp_path / "fetched"
    out.mkdir(exist_ok=True)
    rc = home / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no bouncemail
        poll {HOSTNAME} via 127.0.0.1 {server_options}
          user "{ALICE}" there password "{appliance.users['alice']}"
          {user_options}
          fetchall
          mda "/bin/sh -c 'cat > $(mktemp {out}/message.XXXXXX)'"
        """))
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(home), HOME=str(home))
    result = subprocess.run([fetchmail, "-f", str(rc), "-N", "--nosyslog", "-v"], env=env, capture_output=True,
                            text=True, timeout=60)
    return result, str(out)


def fetched_subjects(path: str) -> list[str]:
    """Subjects of the messages fetched into `path`: an mbox file, or a folder of one file each (sorted)."""
    if os.path.isdir(path):
        return sorted(email.message_from_bytes(open(os.path.join(path, name), "rb").read())["Subject"]
                      for name in os.listdir(path))
    return [message["Subject"] for message in mailbox.mbox(path)]


def test_fetchmail_apop(pop3_appliance, tmp_path):
    deliver(pop3_appliance, "for fetchmail one", "for fetchmail two")
    enable_apop(pop3_appliance)
    wait_for(lambda: _apop_works(pop3_appliance, pop3_appliance.users["alice"]), timeout=5)
    result, out = run_fetchmail(pop3_appliance, tmp_path, f"port {pop3_appliance.ports['pop3']} protocol APOP",
                                "sslproto ''")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fetched_subjects(out) == ["for fetchmail one", "for fetchmail two"]
    assert pop3_appliance.messages("alice") == []             # fetchmail deleted what it fetched


def test_fetchmail_pop3s_verifies_the_certificate(pop3_appliance, tmp_path):
    deliver(pop3_appliance, "fetched over pop3s")
    result, out = run_fetchmail(pop3_appliance, tmp_path, f"port {pop3_appliance.ports['pop3s']} protocol POP3",
                                f"ssl sslcertck sslcertfile {pop3_appliance.cert_path} sslcommonname {HOSTNAME}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fetched_subjects(out) == ["fetched over pop3s"]
    assert pop3_appliance.messages("alice") == []


def test_fetchmail_refuses_a_certificate_it_cannot_verify(pop3_appliance, tmp_path):
    """Guards the test above: without the test certificate as trust anchor, verification must fail."""
    deliver(pop3_appliance, "stays")
    result, out = run_fetchmail(pop3_appliance, tmp_path, f"port {pop3_appliance.ports['pop3s']} protocol POP3",
                                f"ssl sslcertck sslcommonname {HOSTNAME}")
    assert result.returncode not in (0, 1)
    assert fetched_subjects(out) == [] and len(pop3_appliance.messages("alice")) == 1


# ---- getmail6 -----------------------------------------------------------------------------------------
def run_getmail(appliance: Appliance, tmp_path) -> subprocess.CompletedProcess:
    """getmail6 over POP3S with verification, keeping mail on the server and remembering UIDLs."""
    getmail = require_program("getmail")
    folder = tmp_path / "getmail"
    folder.mkdir(exist_ok=True)
    out = folder / "inbox.mbox"
    out.touch()
    (folder / "getmailrc").write_text(textwrap.dedent(f"""\
        [retriever]
        type = SimplePOP3SSLRetriever
        server = 127.0.0.1
        port = {appliance.ports['pop3s']}
        username = {ALICE}
        password = {appliance.users['alice']}
        ca_certs = {appliance.cert_path}
        ssl_cert_hostname = {HOSTNAME}

        [destination]
        type = MDA_external
        path = /bin/sh
        arguments = ("-c", "cat >> {out}")
        unixfrom = true
        allow_root_commands = true

        [options]
        read_all = false
        delete = false
        """))
    return subprocess.run([getmail, f"--getmaildir={folder}", "--rcfile=getmailrc"], capture_output=True,
                          text=True, timeout=60)


def test_getmail6_fetches_only_new_mail_across_a_restart(pop3_appliance, tmp_path):
    deliver(pop3_appliance, "g1", "g2")
    result = run_getmail(pop3_appliance, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    pop3_appliance.restart()
    deliver(pop3_appliance, "g3")
    result = run_getmail(pop3_appliance, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # getmail remembers UIDLs: if they changed across the restart it would fetch g1 and g2 again.
    assert fetched_subjects(str(tmp_path / "getmail" / "inbox.mbox")) == ["g1", "g2", "g3"]
    assert len(pop3_appliance.messages("alice")) == 3
