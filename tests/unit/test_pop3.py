"""POP3 protocol rules, as bytes over StringTransport: TLS before passwords, CAPA, APOP, locks, UPDATE state."""
from __future__ import annotations

import base64
import hashlib
import ipaddress

import pytest
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from appliance.config import TLSSection
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import IDirectory, UserRecord
from appliance.interfaces import IMaildrop
from appliance.pop3 import POP3Factory, multiline, top
from appliance.realm import AuthThrottle, DirectoryChecker, Login, MaildropInUse, MaildropLocks, make_login
from appliance.store.pop3view import Entry, Maildrop, to_wire
from appliance.store.maildir import MaildirStore
from appliance.inline import InlinePool as SyncPool, InlineReactor as SyncReactor

ALICE = "alice@example.test"
BOB = "bob@example.test"
OUTSIDE = "203.0.113.5"
MESSAGES = [
    b"Subject: one\n\nFirst.\n",
    b"Subject: two\n\n.dotted line\n..two dots\nlast line without newline",
    b"Subject: three\n\nThird.\n",
]


@implementer(IDirectory)
class FakeDirectory:
    supports_shared_secrets = True

    def __init__(self) -> None:
        self.users = {ALICE: UserRecord(ALICE, frozenset({ALICE}), shared_secret="alice-apop"),
                      BOB: UserRecord(BOB, frozenset({BOB}))}
        self.passwords = {ALICE: "alice-pw", BOB: "bob-pw"}
        self.down = False
        self.pending: list[defer.Deferred] | None = None    # set to a list to answer later

    def _answer(self, value) -> defer.Deferred:
        if self.down:
            return defer.fail(DirectoryUnavailable("ldap://10.1.2.3:389 timed out"))
        if self.pending is not None:
            d = defer.Deferred()
            self.pending.append((d, value))
            return d
        return defer.succeed(value)

    def lookup(self, address):
        return self._answer(self.users.get(address))

    def authenticate(self, login, password):
        ok = self.passwords.get(login) == password
        return self._answer(self.users.get(login) if ok else None)


class FakeFormat:
    """An in-memory storage format: what the realm under test hands out."""

    def __init__(self, messages) -> None:
        self.messages = {f"uid-{n}": m for n, m in enumerate(messages)}
        self.expunged: list[str] = []

    def scan(self, path):
        return [Entry(uid, len(to_wire(m)), uid) for uid, m in self.messages.items()]

    def read(self, path, entry):
        return to_wire(self.messages[entry.where])

    def read_many(self, path, entries):
        return [to_wire(self.messages[e.where]) if e.where in self.messages else None for e in entries]

    def expunge(self, path, entries):
        for entry in entries:
            self.expunged.append(entry.uid)
            del self.messages[entry.uid]


@implementer(IRealm)
class FakeRealm:
    def __init__(self, fmt, reactor, locks) -> None:
        self.fmt, self.reactor, self.locks = fmt, reactor, locks
        self.broken = False

    def requestAvatar(self, user, mind, *interfaces):
        mind.user = user
        if self.broken:
            raise RuntimeError("secret internal detail /var/mail/alice")
        path = user.address
        if not self.locks.acquire(path):
            raise MaildropInUse(path)
        drop = Maildrop(self.fmt, path, self.fmt.scan(path), self.reactor, SyncPool())
        return IMaildrop, drop, lambda: self.locks.release(path)


class FakeTLS:
    available = True


class Transport(StringTransport):
    """StringTransport that records STARTTLS and counts writes."""

    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tls_context = None
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)

    def writeSequence(self, data):
        """One call: a real transport queues the pieces and sends them in one go."""
        self.writes += 1
        super().writeSequence(data)

    def startTLS(self, context):
        self.tls_context = context


class World:
    """A factory over fakes, and sessions on it."""

    def __init__(self, plaintext_networks=(), implicit_tls=False, messages=MESSAGES) -> None:
        self.reactor = SyncReactor()
        self.directory = FakeDirectory()
        self.fmt = FakeFormat(messages)
        self.locks = MaildropLocks()
        self.realm = FakeRealm(self.fmt, self.reactor, self.locks)
        self.throttle = AuthThrottle(self.reactor)
        self.factory = POP3Factory(
            login=Login(Portal(self.realm, [DirectoryChecker(self.directory)]), self.throttle, self.reactor),
            directory=self.directory, hostname="mail.example.test", tls=FakeTLS(),
            tls_settings=TLSSection("cert", "key", plaintext_auth_networks=tuple(map(ipaddress.ip_network,
                                                                                     plaintext_networks))),
            implicit_tls=implicit_tls, reactor=self.reactor, max_errors=10)

    def session(self, peer: str = OUTSIDE) -> "Session":
        return Session(self.factory, peer)


class Session:
    def __init__(self, factory, peer) -> None:
        self.transport = Transport(peer)
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        return self.take()

    def command(self, line: str) -> bytes:
        return self.send(line.encode() + b"\r\n")

    def start_tls(self) -> None:
        assert self.command("STLS") == b"+OK Begin TLS negotiation\r\n"

    def login(self, user: str = ALICE, password: str = "alice-pw") -> bytes:
        self.start_tls()
        self.command(f"USER {user}")
        return self.command(f"PASS {password}")

    def drop(self) -> None:
        self.protocol.connectionLost(None)


@pytest.fixture
def world() -> World:
    return World()


def capabilities(session: Session) -> list[bytes]:
    reply = session.command("CAPA")
    assert reply.startswith(b"+OK") and reply.endswith(b"\r\n.\r\n")
    return reply.split(b"\r\n")[1:-2]


# ---- greeting, TLS and what is offered before it ----------------------------------------------
def test_greeting_carries_a_unique_apop_timestamp(world):
    first, second = world.session().greeting, world.session().greeting
    assert first.startswith(b"+OK mail.example.test POP3 server ready <") and first.endswith(b"@mail.example.test>\r\n")
    assert first != second


def test_no_timestamp_when_the_directory_cannot_hold_secrets(world):
    world.directory.supports_shared_secrets = False
    session = world.session()
    assert b"<" not in session.greeting
    assert session.command("APOP alice@example.test " + "0" * 32) == b"-ERR APOP is not available\r\n"


def test_passwords_refused_before_tls_with_auth_code(world):
    session = world.session()
    assert session.command("USER alice@example.test").startswith(b"-ERR [AUTH] ")
    assert session.command("PASS alice-pw").startswith(b"-ERR [AUTH] ")
    assert session.command("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-pw").decode()) \
        .startswith(b"-ERR [AUTH] ")
    assert session.command("STAT").startswith(b"-ERR")


def test_capa_before_tls_offers_stls_but_no_passwords(world):
    caps = capabilities(world.session())
    assert b"STLS" in caps
    assert b"USER" not in caps and not any(c.startswith(b"SASL") for c in caps)
    for cap in (b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"IMPLEMENTATION mailappliance"):
        assert cap in caps


def test_capa_after_stls_offers_passwords_and_no_stls(world):
    session = world.session()
    session.start_tls()
    assert session.transport.tls_context is world.factory.tls
    caps = capabilities(session)
    assert b"USER" in caps and b"SASL PLAIN" in caps and b"STLS" not in caps
    assert session.command("STLS") == b"-ERR TLS is already active\r\n"


def test_implicit_tls_offers_passwords_at_once(world):
    session = World(implicit_tls=True).session()
    assert b"USER" in capabilities(session) and b"STLS" not in capabilities(session)
    assert session.command("USER alice@example.test") == b"+OK Send PASS\r\n"


def test_plaintext_networks_may_send_passwords_without_tls():
    session = World(plaintext_networks=["127.0.0.0/8"]).session("127.0.0.1")
    assert b"USER" in capabilities(session)
    session.command("USER alice@example.test")
    assert session.command("PASS alice-pw").startswith(b"+OK Maildrop has 3 messages")


def test_stls_drops_plaintext_pipelined_behind_it(world):
    session = world.session()
    reply = session.send(b"STLS\r\nUSER alice@example.test\r\nPASS alice-pw\r\nSTAT\r\nhalf a li")
    assert reply == b"+OK Begin TLS negotiation\r\n"
    assert session.command("STAT").startswith(b"-ERR")          # still not logged in, buffer was emptied
    assert session.command("USER alice@example.test") == b"+OK Send PASS\r\n"


def test_stls_without_a_certificate_is_refused():
    world = World()
    world.factory.tls = None
    session = world.session()
    assert b"STLS" not in capabilities(session)
    assert session.command("STLS") == b"-ERR TLS is not available\r\n"


# ---- logging in -----------------------------------------------------------------------------------
def test_user_pass_after_stls(world):
    session = world.session()
    sizes = sum(len(to_wire(m)) for m in MESSAGES)
    assert session.login() == b"+OK Maildrop has 3 messages (%d octets)\r\n" % sizes
    assert session.command("STAT") == b"+OK 3 %d\r\n" % sizes


def test_bad_password_gets_auth_code_and_is_slowed_down(world):
    session = world.session()
    session.start_tls()
    for _ in range(6):          # [logins] failures_per_address, then the first throttled slot at once
        session.command("USER alice@example.test")
        assert session.command("PASS wrong") == b"-ERR [AUTH] Authentication failed\r\n"
    session.command("USER alice@example.test")
    assert session.send(b"PASS wrong\r\nNOOP\r\n") == b""           # waits for its slot, NOOP behind it
    world.reactor.advance(1)
    assert session.take() == b"-ERR [AUTH] Authentication failed\r\n-ERR Command not valid in this state\r\n"


def test_directory_down_is_sys_temp_and_tells_no_details(world):
    world.directory.down = True
    session = world.session()
    reply = session.login()
    assert reply == b"-ERR [SYS/TEMP] Directory temporarily unavailable, try again later\r\n"


def test_unexpected_failure_tells_no_details(world):
    world.realm.broken = True
    reply = world.session().login()
    assert reply.startswith(b"-ERR [SYS/TEMP]") and b"secret" not in reply and b"/var" not in reply


def apop_digest(session: Session, secret: str) -> str:
    timestamp = session.greeting.split(b" ")[-1].strip()
    return hashlib.md5(timestamp + secret.encode()).hexdigest()


def test_apop_with_the_shared_secret_logs_in_even_without_tls(world):
    session = world.session()
    reply = session.command(f"APOP {ALICE} {apop_digest(session, 'alice-apop')}")
    assert reply.startswith(b"+OK Maildrop has 3 messages")


def test_apop_with_a_wrong_digest_or_no_secret_is_refused(world):
    session = world.session()
    assert session.command(f"APOP {ALICE} {apop_digest(session, 'guess')}") == b"-ERR [AUTH] Authentication failed\r\n"
    assert session.command(f"APOP {BOB} {apop_digest(session, 'bob-pw')}") == b"-ERR [AUTH] Authentication failed\r\n"


def test_auth_plain_initial_response_and_continuation(world):
    token = base64.b64encode(f"\0{ALICE}\0alice-pw".encode()).decode()
    session = world.session()
    session.start_tls()
    assert session.command(f"AUTH PLAIN {token}").startswith(b"+OK Maildrop has 3")
    other = World().session()
    other.start_tls()
    assert other.command("AUTH PLAIN") == b"+ \r\n"
    assert other.command(token).startswith(b"+OK Maildrop has 3")


def test_auth_plain_refuses_other_mechanisms_junk_and_proxying(world):
    session = world.session()
    session.start_tls()
    assert session.command("AUTH CRAM-MD5") == b"-ERR Unsupported authentication mechanism\r\n"
    assert session.command("AUTH PLAIN !!!") == b"-ERR Cannot decode the authentication response\r\n"
    session.command("AUTH PLAIN")
    assert session.command("*") == b"-ERR Authentication cancelled\r\n"
    proxy = base64.b64encode(f"{BOB}\0{ALICE}\0alice-pw".encode()).decode()
    assert session.command(f"AUTH PLAIN {proxy}") == b"-ERR [AUTH] Authentication failed\r\n"


def test_pipelined_commands_wait_for_a_slow_login(world):
    world.directory.pending = []
    session = world.session()
    session.start_tls()
    assert session.send(b"USER alice@example.test\r\nPASS alice-pw\r\nSTAT\r\nQUIT\r\n") == b"+OK Send PASS\r\n"
    while world.directory.pending:
        d, value = world.directory.pending.pop(0)
        d.callback(value)
    lines = session.take().split(b"\r\n")
    assert lines[0].startswith(b"+OK Maildrop has 3") and lines[1].startswith(b"+OK 3 ") and lines[2] == b"+OK Bye"


# ---- the maildrop lock ----------------------------------------------------------------------------
def test_second_session_gets_in_use_until_the_first_ends(world):
    first = world.session()
    first.login()
    second = world.session()
    assert second.login() == b"-ERR [IN-USE] Maildrop is in use by another session\r\n"
    first.command("QUIT")
    first.drop()
    assert world.session().login().startswith(b"+OK Maildrop has")


def test_a_dropped_connection_frees_the_lock(world):
    first = world.session()
    first.login()
    first.drop()
    assert world.session().login().startswith(b"+OK Maildrop has")


def test_lock_is_shared_between_the_pop3_and_pop3s_factories(tmp_path):
    reactor, locks, directory = SyncReactor(), MaildropLocks(), FakeDirectory()
    store = MaildirStore(str(tmp_path / "{domain}/{local}"), reactor, SyncPool())
    common = dict(directory=directory, login=make_login(directory, store, reactor, locks),
                  hostname="mail.example.test", tls=FakeTLS(), tls_settings=TLSSection("c", "k"), reactor=reactor)
    plain = Session(POP3Factory(implicit_tls=False, **common), OUTSIDE)
    implicit = Session(POP3Factory(implicit_tls=True, **common), OUTSIDE)
    assert plain.login() == b"+OK Maildrop has 0 messages (0 octets)\r\n"
    implicit.command(f"USER {ALICE}")
    assert implicit.command("PASS alice-pw").startswith(b"-ERR [IN-USE]")


# ---- the TRANSACTION state ------------------------------------------------------------------------
@pytest.fixture
def session(world) -> Session:
    s = world.session()
    s.login()
    return s


def test_list_and_uidl(session):
    sizes = [len(to_wire(m)) for m in MESSAGES]
    assert session.command("LIST") == multiline(b"3 messages (%d octets)" % sum(sizes),
                                                b"".join(b"%d %d\r\n" % (n + 1, s) for n, s in enumerate(sizes)))
    assert session.command("LIST 2") == b"+OK 2 %d\r\n" % sizes[1]
    assert session.command("UIDL") == b"+OK Unique-id listing follows\r\n1 uid-0\r\n2 uid-1\r\n3 uid-2\r\n.\r\n"
    assert session.command("UIDL 3") == b"+OK 3 uid-2\r\n"


def test_retr_sends_crlf_byte_stuffed_in_one_write(session):
    session.transport.writes = 0
    reply = session.command("RETR 2")
    assert session.transport.writes == 1
    body = b"Subject: two\r\n\r\n..dotted line\r\n...two dots\r\nlast line without newline\r\n"
    assert reply == b"+OK %d octets\r\n" % len(to_wire(MESSAGES[1])) + body + b".\r\n"


def test_top_sends_headers_and_n_lines(session):
    assert session.command("TOP 2 1") == b"+OK Top of message follows\r\nSubject: two\r\n\r\n..dotted line\r\n.\r\n"
    assert session.command("TOP 1 0") == b"+OK Top of message follows\r\nSubject: one\r\n\r\n.\r\n"
    assert session.command("TOP 1 x") == b"-ERR Syntax error\r\n"


def test_dele_hides_the_message_and_rset_brings_it_back(session):
    assert session.command("DELE 1") == b"+OK Message 1 deleted\r\n"
    for command in ("RETR 1", "LIST 1", "UIDL 1", "DELE 1", "TOP 1 0"):
        assert session.command(command) == b"-ERR No such message\r\n"
    assert session.command("STAT").startswith(b"+OK 2 ")
    assert b"\r\n1 " not in session.command("LIST")
    assert session.command("RSET").startswith(b"+OK Maildrop has 3 messages")
    assert session.command("RETR 1").startswith(b"+OK")


def test_quit_applies_deletions(world, session):
    session.command("DELE 1")
    session.command("DELE 3")
    assert session.command("QUIT") == b"+OK Bye\r\n"
    assert session.transport.disconnecting
    assert world.fmt.expunged == ["uid-0", "uid-2"]


def test_a_dropped_connection_deletes_nothing(world, session):
    session.command("DELE 1")
    session.drop()
    assert world.fmt.expunged == []


def test_the_autologout_timer_deletes_nothing(world, session):
    session.command("DELE 1")
    world.reactor.advance(600)
    assert session.take().startswith(b"-ERR Autologout")
    assert session.transport.disconnecting
    session.drop()
    assert world.fmt.expunged == []


def test_quit_before_login_just_says_bye(world):
    session = world.session()
    assert session.command("QUIT") == b"+OK Bye\r\n"
    assert session.transport.disconnecting


def test_commands_after_quit_are_ignored(world, session):
    assert session.send(b"DELE 1\r\nQUIT\r\nNOOP\r\n") == b"+OK Message 1 deleted\r\n+OK Bye\r\n"


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,reply", [
    ("FROB", b"-ERR Unknown command"),
    ("LAST", b"-ERR Unknown command"),
    ("RETR", b"-ERR Syntax error"),
    ("RETR 1 2", b"-ERR Syntax error"),
    ("RETR x", b"-ERR Invalid message number"),
    ("RETR 0", b"-ERR Invalid message number"),
    ("RETR -1", b"-ERR Invalid message number"),
    ("RETR 99999999999999999999", b"-ERR Invalid message number"),
    ("RETR 4", b"-ERR No such message"),
    ("USER x", b"-ERR Command not valid in this state"),
    ("STLS", b"-ERR Command not valid in this state"),
    ("", b"-ERR Unknown command"),
])
def test_bad_commands_get_err_and_the_session_goes_on(session, line, reply):
    assert session.command(line) == reply + b"\r\n"
    assert session.command("NOOP") == b"+OK\r\n"


def test_transaction_commands_before_login_are_refused(world):
    session = world.session()
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "UIDL"):
        assert session.command(command) == b"-ERR Command not valid in this state\r\n"


def test_too_many_errors_close_the_session(world):
    session = world.session()
    replies = session.send(b"FROB\r\n" * 11)
    assert replies.endswith(b"-ERR Too many errors, closing connection\r\n")
    assert session.transport.disconnecting


def test_overlong_line_closes_the_session(world):
    session = world.session()
    assert session.send(b"USER " + b"a" * 5000) == b"-ERR Line too long\r\n"
    assert session.transport.disconnecting


def test_binary_junk_never_crashes(world):
    session = world.session()
    reply = session.send(b"\xff\xfe\x00 \x80\r\nCAPA\r\n")
    assert reply.startswith(b"-ERR Unknown command\r\n+OK Capability list follows")


# ---- framing helpers ----------------------------------------------------------------------------------
def test_multiline_stuffs_dots_and_terminates():
    assert multiline(b"x", b".a\r\n.\r\nb") == b"+OK x\r\n..a\r\n..\r\nb\r\n.\r\n"
    assert multiline(b"x", b"") == b"+OK x\r\n.\r\n"


def test_top_of_a_message_without_body_is_the_whole_message():
    assert top(b"Subject: x\r\n", 5) == b"Subject: x\r\n"
    assert top(b"A: b\r\n\r\n1\r\n2\r\n", 5) == b"A: b\r\n\r\n1\r\n2\r\n"


def test_top_of_a_message_without_header_counts_body_lines_from_the_start():
    """Where the header ends is the one header parser's rule: a first line that is no field starts the body."""
    assert top(b"no header here\r\n\r\nsecond\r\nthird\r\n", 1) == b"no header here\r\n"
    assert top(b"no header here\r\n\r\nsecond\r\nthird\r\n", 3) == b"no header here\r\n\r\nsecond\r\n"
