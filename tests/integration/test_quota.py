"""Quotas and COMPRESS against a real `twistd mailappliance`, with the clients a user has.

- smtplib: a full mailbox is answered `452 4.2.2` at RCPT (temporary: the sender keeps the
  message), and accepted again once mail is deleted or the limit is lifted with `user quota`;
- a message accepted at RCPT that no longer fits at delivery waits in the queue (a deferral, a
  log line, no bounce) and is delivered once there is room;
- imaplib: GETQUOTAROOT shows usage and limit, APPEND over quota is NO [OVERQUOTA];
- a raw TLS socket with zlib: COMPRESS DEFLATE on the IMAPS port; and mbsync, which uses it;
- LDAP: the quota attribute of a real slapd (its schema extended with mailQuota, as the
  postfix-book and iRedMail schemas have it) is the user's limit.
Each runs over Maildir and mbox where the store matters.
"""
from __future__ import annotations

import os
import re
import smtplib
import socket
import subprocess
import time
import zlib

import pytest

from tests.integration.harness import (DOMAIN, HOSTNAME, Appliance, make_message, render_config, require_program,
                                       wait_for)
from tests.integration.test_imap import IMAPS, MBSYNC_CONFIG

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
SERVICES = ("smtp", "imaps")
FILLER = "This line is here to take room in the mailbox.\r\n" * 30        # ~1.5 KB
RELOAD = 1.2             # seconds: the daemon re-reads the users file at most once a second


@pytest.fixture
def app(make_appliance, storage) -> Appliance:
    return make_appliance(storage=storage, services=SERVICES, queue={"retry_initial": "1", "retry_max": "2"})


def subjects(app: Appliance, user: str) -> list[str]:
    return [m.group(1).decode() for raw in app.messages(user) for m in [re.search(rb"^Subject: (.*)$", raw, re.M)]
            if m]


def imaps(app: Appliance, user: str = ALICE) -> IMAPS:
    client = IMAPS(HOSTNAME, app.ports["imaps"], ssl_context=app.tls_context(), timeout=10)
    client.login(user, app.users[user.split("@")[0]])
    return client


def delete_subject(app: Appliance, subject: str) -> None:
    client = imaps(app)
    client.select("INBOX")
    _, found = client.search(None, "SUBJECT", f'"{subject}"')
    for number in found[0].split():
        client.store(number, "+FLAGS", "\\Deleted")
    client.expunge()
    client.logout()


def set_quota(app: Appliance, user: str, size: str) -> str:
    out = app.cli("user", "quota", user, size).stdout
    time.sleep(RELOAD)
    return out


def test_full_mailbox_is_452_then_accepted_after_deleting(app):
    assert set_quota(app, ALICE, "3K") == f"{ALICE} may store 3K\n"
    with app.smtp() as client:
        assert client.sendmail("someone@outside.example", [ALICE], make_message("first", FILLER)) == {}
    wait_for(lambda: subjects(app, ALICE) == ["first"])
    with app.smtp() as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("someone@outside.example", [ALICE], make_message("second", FILLER))
        # A second recipient of the same message still gets it: only the full mailbox is refused.
        assert client.sendmail("someone@outside.example", [ALICE, BOB], make_message("both", FILLER)) == {
            ALICE: (452, b"4.2.2 Mailbox full")}
    assert refused.value.recipients == {ALICE: (452, b"4.2.2 Mailbox full")}
    wait_for(lambda: subjects(app, BOB) == ["both"])
    assert "over-quota" in app.log() and "stage=rcpt" in app.log()

    delete_subject(app, "first")                                  # the user makes room
    with app.smtp() as client:
        assert client.sendmail("someone@outside.example", [ALICE], make_message("second", FILLER)) == {}
    wait_for(lambda: subjects(app, ALICE) == ["second"])


def test_lifting_the_quota_with_the_user_command(app):
    set_quota(app, ALICE, "2K")
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message("first", FILLER))
    wait_for(lambda: subjects(app, ALICE) == ["first"])
    with app.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("someone@outside.example", [ALICE], make_message("second", FILLER))
    assert "quota=2K" in open(os.path.join(app.root, "users"), encoding="utf-8").read()
    assert set_quota(app, ALICE, "none") == f"{ALICE} follows [storage] quota (unlimited)\n"
    with app.smtp() as client:
        assert client.sendmail("someone@outside.example", [ALICE], make_message("second", FILLER)) == {}
    wait_for(lambda: sorted(subjects(app, ALICE)) == ["first", "second"])
    shown = app.cli("user", "show", ALICE).stdout
    assert re.search(r"^quota +unlimited \(\[storage\] quota\); [1-9][0-9]* KiB used$", shown, re.M), shown


def test_queued_message_waits_for_room_and_is_never_bounced(app):
    set_quota(app, ALICE, "3K")
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message("first", FILLER))
    wait_for(lambda: subjects(app, ALICE) == ["first"])
    # Without SIZE= the RCPT cannot tell the message will not fit: it is accepted and queued.
    with app.smtp() as client:
        client.ehlo()
        assert client.mail("someone@outside.example")[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        assert client.data(make_message("waiting", FILLER))[0] == 250
    wait_for(lambda: "4.2.2 mailbox full" in app.log())
    listing = app.cli("queue", "list").stdout
    assert ALICE in listing and "4.2.2 mailbox full" in listing, listing
    time.sleep(3)                                                   # retried (retry_max 2 s) and still waiting
    assert subjects(app, ALICE) == ["first"] and app.log().count("4.2.2 mailbox full") >= 2
    delete_subject(app, "first")
    wait_for(lambda: subjects(app, ALICE) == ["waiting"], timeout=15)
    assert "bounced" not in app.log()


def test_imap_getquotaroot_and_append_over_quota(app):
    set_quota(app, ALICE, "4K")
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message("first", FILLER))
    wait_for(lambda: subjects(app, ALICE) == ["first"])
    client = imaps(app)
    assert "QUOTA" in client.capabilities and "QUOTA=RES-STORAGE" in client.capabilities
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK"
    roots, quota = data
    assert roots == [b'"INBOX" ""']
    used, limit = (int(n) for n in re.fullmatch(rb'"" \(STORAGE (\d+) (\d+)\)', quota[0]).groups())
    assert limit == 4 and 1 <= used <= 3
    assert client.append("INBOX", None, None, make_message("fits", "small\r\n"))[0] == "OK"
    assert client.append("Sent", None, None, make_message("too big", FILLER * 2)) == (
        "NO", [b"[OVERQUOTA] Quota exceeded"])
    assert client.setquota('""', "(STORAGE 999999)") == ("NO", [b"[NOPERM] Quotas are set by the administrator"])
    client.select("Sent")
    assert client.search(None, "ALL") == ("OK", [b""])               # nothing half-written
    client.logout()


# ---- COMPRESS=DEFLATE -----------------------------------------------------------------------------------
class DeflateIMAP:
    """A raw IMAPS client that turns on COMPRESS DEFLATE: zlib on our side, a real TLS socket below."""

    def __init__(self, app: Appliance):
        raw = socket.create_connection(("127.0.0.1", app.ports["imaps"]), timeout=10)
        self.sock = app.tls_context().wrap_socket(raw, server_hostname=HOSTNAME)
        self.pending = b""
        self.deflater = self.inflater = None
        self.wire_in = 0

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.wire_in += len(data)
        self.pending += self.inflater.decompress(data) if self.inflater else data

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            self._receive()
        line, self.pending = self.pending.split(b"\r\n", 1)
        return line

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + b" "):
                return lines

    def send(self, data: bytes) -> None:
        if self.deflater:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def compress(self) -> bytes:
        answer = self.command(b"z", b"COMPRESS DEFLATE")[-1]
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)
        assert not self.pending                   # nothing followed the OK uncompressed
        return answer


def test_compress_deflate_over_imaps(app):
    for n in range(20):
        with app.smtp() as client:
            client.sendmail("someone@outside.example", [ALICE], make_message(f"message {n}", FILLER))
    wait_for(lambda: len(app.messages(ALICE)) == 20)
    client = DeflateIMAP(app)
    assert client.line().startswith(b"* OK [CAPABILITY ")
    assert client.command(b"a", b"LOGIN %b %b" % (ALICE.encode(), app.users["alice"].encode()))[-1].startswith(b"a OK")
    assert client.compress() == b"z OK DEFLATE active"
    assert client.command(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    before = client.wire_in
    lines = client.command(b"f", b"FETCH 1:* (FLAGS BODY.PEEK[])")
    assert lines[-1] == b"f OK FETCH completed"
    fetched = b"\r\n".join(lines)
    assert fetched.count(b"This line is here to take room") == 20 * 30
    assert client.wire_in - before < len(fetched) / 5              # the phone's link carried a fifth or less
    assert client.command(b"y", b"COMPRESS DEFLATE") == [b"y NO [COMPRESSIONACTIVE] Compression is already active"]
    assert client.command(b"l", b"LOGOUT")[-1] == b"l OK LOGOUT completed"


def test_mbsync_syncs_over_compress(app, tmp_path):
    """mbsync (isync 1.4.4 in Debian 12) sends COMPRESS DEFLATE when offered; the sync must still work."""
    program = require_program("mbsync")
    for n in range(3):
        with app.smtp() as client:
            client.sendmail("someone@outside.example", [ALICE], make_message(f"synced {n}", FILLER))
    wait_for(lambda: len(app.messages(ALICE)) == 3)
    local = tmp_path / "local"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(MBSYNC_CONFIG.format(port=app.ports["imaps"], user=ALICE, password=app.users["alice"],
                                           cert=app.cert_path, local=local))
    result = subprocess.run([program, "-Dn", "-c", str(config), "-a"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPRESS DEFLATE" in result.stdout + result.stderr
    inbox = local / "INBOX"
    assert sum(len(os.listdir(inbox / sub)) for sub in ("cur", "new")) == 3
    assert "imap-compress" in app.log()


# ---- LDAP: the quota attribute -------------------------------------------------------------------------
# mailQuota as the postfix-book and iRedMail schemas define it (an IA5 string of bytes), under a private
# test OID; the test slapd loads only Debian's stock schemas, which have no quota attribute.
QUOTA_SCHEMA = """dn: cn=mailquota,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: mailquota
olcAttributeTypes: ( 1.3.6.1.4.1.32473.1.1 NAME 'mailQuota' DESC 'storage quota in octets'
  EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.32473.2.1 NAME 'mailQuotaUser' SUP top AUXILIARY MAY mailQuota )

"""


def quota_people_ldif() -> str:
    from tests.integration.slapd import password_hash
    from tests.integration.test_ldap_directory import PEOPLE
    return f"""
dn: uid=quinn,{PEOPLE}
objectClass: inetOrgPerson
objectClass: mailQuotaUser
uid: quinn
cn: Quinn Quota
sn: Quota
mail: quinn@example.test
mailQuota: 3072
userPassword: {password_hash("{SSHA}", "quinn-pw")}

dn: uid=rita,{PEOPLE}
objectClass: inetOrgPerson
objectClass: mailQuotaUser
uid: rita
cn: Rita Roomy
sn: Roomy
mail: rita@example.test
mailQuota: 0
userPassword: {password_hash("{SSHA}", "rita-pw")}
"""


def test_ldap_quota_attribute_is_the_users_limit(request, tmp_path):
    from tests.integration.slapd import Slapd, require_slapd
    from tests.integration.test_ldap_appliance import LDAPSetup
    from tests.integration.test_ldap_directory import organisation_ldif

    class QuotaSlapd(Slapd):
        def _config_ldif(self) -> str:
            frontend = "dn: olcDatabase={-1}frontend"
            return super()._config_ldif().replace(frontend, QUOTA_SCHEMA + frontend, 1)

    require_slapd()
    appliances: list[Appliance] = []
    request.node.appliances = appliances
    ldap = LDAPSetup(str(tmp_path), appliances)
    try:
        server = QuotaSlapd(os.path.join(ldap.folder, "slapd"))
        os.makedirs(server.folder)
        ldap.slapds.append(server)
        server.setup(organisation_ldif() + quota_people_ldif())
        server.start()
        # [storage] quota 2K for everyone else: alice (no attribute) is limited by it, rita (0) is not.
        app = ldap.appliance(server.url, services=SERVICES)
        app.sections["storage"]["quota"] = "2K"            # LDAPSetup knows no [storage]: set it, restart
        with open(app.config_path, "w", encoding="utf-8") as handle:
            handle.write(render_config(app.sections))
        app.restart()
        app.users = {"quinn": "quinn-pw", "rita": "rita-pw"}
        quinn, rita, alice = (f"{name}@{DOMAIN}" for name in ("quinn", "rita", "alice"))
        for n in range(2):
            with app.smtp() as client:
                sent = client.sendmail("someone@outside.example", [quinn, rita, alice],
                                       make_message(f"round {n}", FILLER))
            if n == 0:
                assert sent == {}
                wait_for(lambda: all(subjects(app, user) == ["round 0"] for user in (quinn, rita, alice)))
            else:
                # quinn's own 3072 octets cannot take a second one, nor alice's default 2K; rita's 0 is unlimited.
                assert sent == {quinn: (452, b"4.2.2 Mailbox full"), alice: (452, b"4.2.2 Mailbox full")}
        wait_for(lambda: sorted(subjects(app, rita)) == ["round 0", "round 1"])
        client = imaps(app, quinn)
        roots, quota = client.getquotaroot("INBOX")[1]
        assert re.fullmatch(rb'"" \(STORAGE \d+ 3\)', quota[0]), quota
        client.logout()
        shown = app.cli("user", "show", quinn).stdout
        assert re.search(r"^quota +[12] KiB used of 3K \([0-9]+%; the user's own\)$", shown, re.M), shown
    finally:
        ldap.stop()
