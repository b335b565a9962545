"""POP3 and POP3S (RFC 1939, 2449 CAPA, 2595 STLS, 3206 response codes, 8314) on Twisted's pop3.POP3.

Stock Twisted's POP3 has no STLS, offers USER on cleartext connections, echoes exception text,
counts deleted messages in STAT, rejects good APOP digests on Python 3 and sends RETR in many
small writes (each one waiting on the client's delayed ACK). This subclass keeps its line
handling, command pipelining and timeouts and replaces the command handlers.
"""
from __future__ import annotations

import base64
import binascii
import itertools
import os
from typing import Any, Callable

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol
from twisted.mail import pop3
from twisted.python.failure import Failure

from appliance import address, connlimit, maillog, message
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import IMaildrop
from appliance.store.pop3view import MessageGone, NoSuchMessage, Wire, dot_stuff
from appliance.realm import LoggedIn, Login, LoginThrottled, MaildropInUse
from appliance.replies import POP3
from appliance.tls import log_failure, log_once
from appliance.transport import DirectWriter, no_delay

# (fewest, most) arguments; PASS takes the rest of the line, spaces included.
ARGUMENTS = {
    b"CAPA": (0, 0), b"USER": (1, 1), b"PASS": (1, 1), b"APOP": (2, 2), b"AUTH": (0, 2), b"STLS": (0, 0),
    b"QUIT": (0, 0), b"STAT": (0, 0), b"LIST": (0, 1), b"RETR": (1, 1), b"DELE": (1, 1), b"NOOP": (0, 0),
    b"RSET": (0, 0), b"TOP": (2, 2), b"UIDL": (0, 1),
}
AUTHORIZATION = frozenset({b"CAPA", b"USER", b"PASS", b"APOP", b"AUTH", b"STLS", b"QUIT"})
TRANSACTION = frozenset({b"CAPA", b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP", b"RSET", b"TOP", b"UIDL", b"QUIT"})

MAX_PIPELINED = 256      # commands queued behind a slow one before we stop reading the socket
_magic_counter = itertools.count()


def multiline(first: bytes, body: bytes) -> bytes:
    """A whole multi-line response (RFC 1939 3): status line, byte-stuffed body, terminating dot.

    Built as one buffer so it leaves in one write: many small writes each wait for the client's
    delayed ACK (about 40 ms per message).
    """
    return b"".join(multiline_parts(first, body))


def multiline_parts(first: bytes, body: bytes) -> list[bytes]:
    """`multiline` as pieces for one transport.writeSequence: the body is not copied into a bigger
    buffer here (the transport joins them once), and it is copied at all only when it has lines to stuff."""
    return stuffed_parts(first, dot_stuff(body))


def stuffed_parts(first: bytes, stuffed: bytes) -> list[bytes]:
    """`multiline_parts` of a body already byte-stuffed (a RETR answer, stuffed in the pool)."""
    end = b".\r\n" if not stuffed or stuffed.endswith(b"\r\n") else b"\r\n.\r\n"
    return [b"+OK " + first + b"\r\n", stuffed, end]


def top(raw: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` body lines of a CRLF message (TOP).

    Where the header ends is decided by the one header parser (appliance.message), as for
    every other reader of headers.
    """
    head, rest = message.split(raw)
    if head and not rest:
        return raw                         # all header, no body
    position = len(head) + (2 if head else 0)
    for _ in range(lines):
        line_end = raw.find(b"\r\n", position)
        if line_end < 0:
            return raw
        position = line_end + 2
    return raw[:position]


def parse_number(text: bytes) -> int | None:
    """A 1-based message number as the client wrote it, or None; the result is 0-based."""
    if not text.isdigit() or len(text) > 9:
        return None
    number = int(text)
    return number - 1 if number > 0 else None


class POP3Server(pop3.POP3):
    """One POP3 session. `self.mbox` is the Maildrop once logged in (the TRANSACTION state)."""

    timeOut = 600          # RFC 1939 3: an autologout timer of at least 10 minutes
    MAX_LENGTH = 2048      # RFC 2449 4 allows 255-octet commands; SASL responses need a little more
    factory: POP3Factory

    def __init__(self) -> None:
        self.peer = ""
        self.sid = maillog.session_id()      # on every log line of this connection
        self.secure = False
        self._discarding = False       # plaintext pipelined after STLS, dropped (CVE-2011-0411)
        self._gone = False
        self._quitting = False
        self._paused = False
        self._errors = 0
        self._tls_logged = False
        self._login_pending: defer.Deferred | None = None
        self._committing: defer.Deferred | None = None
        self._writer: DirectWriter = None  # type: ignore[assignment]   # made in connectionMade

    # ---- connection ---------------------------------------------------------------------------
    def connectionMade(self) -> None:
        self.callLater = self.factory.reactor.callLater      # TimeoutMixin's timer, on our clock
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.secure = self.factory.implicit_tls
        maillog.connect(self.factory.service, self.peer, session=self.sid)
        no_delay(self.transport)
        self._writer = DirectWriter(self.transport)
        greeting = b"+OK " + self.factory.hostname.encode("idna") + b" POP3 server ready"
        if self.factory.offers_apop:
            self.magic = self.generateMagic()
            greeting += b" " + self.magic
        self.transport.write(greeting + b"\r\n")
        self.setTimeout(min(self.factory.prelogin_timeout, self.timeOut))   # RFC 1939's 10 minutes start at login

    def generateMagic(self) -> bytes:
        """The APOP timestamp `<pid.clock@hostname>` (RFC 1939 7), unique per greeting."""
        clock = int(self.factory.reactor.seconds() * 1_000_000)
        return b"<%d.%d.%d@%s>" % (os.getpid(), clock, next(_magic_counter), self.factory.hostname.encode("idna"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        """A dropped connection deletes nothing: the marks die with the session, the lock is freed."""
        self._gone = True
        if self._login_pending is not None:
            self._login_pending.cancel()       # a login held back by the throttle: nobody to answer
        logout, self._onLogout = self._onLogout, None
        if logout is not None:
            if self._committing is not None:      # keep the maildrop locked until the deletions are done
                self._committing.addBoth(lambda _: logout())
            else:
                logout()
        self.setTimeout(None)
        log_failure(self, self.factory.service, reason)
        maillog.disconnect(self.factory.service, self.peer, session=self.sid)

    def timeoutConnection(self) -> None:
        self.transport.write(POP3.TIMEOUT + b"\r\n")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.write(POP3.LINE_TOO_LONG + b"\r\n")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        # After STLS the next bytes handed to us were decrypted: whatever was left over from the
        # plaintext read has been dropped by then.
        self._discarding = False
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._discarding or self._gone:
            return
        log_once(self, self.factory.service)
        super().lineReceived(line)

    # ---- dispatch -------------------------------------------------------------------------------
    def state_COMMAND(self, line: bytes) -> None:
        command, _, rest = line.partition(b" ")
        args = (rest,) if command.upper() == b"PASS" and rest else tuple(rest.split())
        try:
            self.processCommand(command, *args)
        except Exception:
            maillog.log.failure("POP3 command failed session={session}", peer=self.peer, session=self.sid)
            self._error(POP3.LOCAL_ERROR)

    def processCommand(self, command: bytes, *args: bytes) -> Any:
        if self._discarding or self._quitting or self._gone:
            return None
        if self.blocked is not None:            # a slow command is running: keep the order (PIPELINING)
            self.blocked.append((command, args))
            if len(self.blocked) >= MAX_PIPELINED and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return None
        name = command.upper()
        if name not in ARGUMENTS:
            return self._error(POP3.UNKNOWN)
        if name not in (TRANSACTION if self.mbox is not None else AUTHORIZATION):
            return self._error(POP3.WRONG_STATE)
        fewest, most = ARGUMENTS[name]
        if not fewest <= len(args) <= most:
            return self._error(POP3.SYNTAX)
        errors = self._errors
        result = getattr(self, "do_" + name.decode("ascii"))(*args)
        if self._errors == errors:
            self._errors = 0                   # only consecutive errors end the session
        return result

    def _unblock(self, result: object) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        super()._unblock(result)

    def _send(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def _error(self, line: bytes) -> None:
        """An -ERR for a client mistake; too many of them end the session (DESIGN: too many errors)."""
        self._errors += 1
        if self._errors > self.factory.max_errors:
            self._send(POP3.TOO_MANY_ERRORS)
            self.transport.loseConnection()
            return
        self._send(line)

    # ---- AUTHORIZATION state -----------------------------------------------------------------
    def do_CAPA(self) -> None:
        self.transport.write(multiline(b"Capability list follows", b"".join(c + b"\r\n" for c in self.capabilities())))

    def capabilities(self) -> list[bytes]:
        """What this session really offers now (RFC 2449 5: the same list in both states)."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._may_send_password():
            caps += [b"USER", b"SASL PLAIN"]
        if self._can_start_tls():
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION mailappliance")
        return caps

    def _may_send_password(self) -> bool:
        return self.secure or address.in_networks(self.peer, self.factory.tls_settings.plaintext_auth_networks)

    def _can_start_tls(self) -> bool:
        return not self.secure and self.factory.tls is not None and self.factory.tls.available

    def do_STLS(self) -> None:
        if self.secure:
            return self._error(POP3.TLS_ACTIVE)
        if not self._can_start_tls():
            return self._error(POP3.TLS_UNAVAILABLE)
        self._send(b"+OK Begin TLS negotiation")
        self._discarding = True
        self._buffer = b""                 # LineOnlyReceiver's partial line: plaintext, dropped too
        self.transport.startTLS(self.factory.tls)
        self.secure = True
        self._userIs = None                # RFC 2595 4: forget anything learnt before TLS
        return None

    def do_USER(self, user: bytes) -> None:
        if not self._may_send_password():
            return self._error(POP3.PLAINTEXT_REFUSED)
        self._userIs = user
        self._send(b"+OK Send PASS")
        return None

    def do_PASS(self, password: bytes) -> Any:
        if not self._may_send_password():
            return self._error(POP3.PLAINTEXT_REFUSED)
        if self._userIs is None:
            return self._error(POP3.USER_FIRST)
        user, self._userIs = self._userIs, None
        return self._login(UsernamePassword(user, password), user, "USER")

    def do_APOP(self, user: bytes, digest: bytes) -> Any:
        """Allowed in cleartext: the digest proves the secret without showing it (RFC 1939 7).

        Our checker verifies the digest itself (stock APOPCredentials.checkPassword compares
        str with bytes on Python 3 and rejects every good digest).
        """
        if not self.factory.offers_apop:
            return self._error(POP3.NO_APOP)
        return self._login(pop3.APOPCredentials(self.magic, user, digest), user, "APOP")

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> Any:
        """SASL PLAIN only (RFC 5034), with or without an initial response."""
        if not self._may_send_password():
            return self._error(POP3.PLAINTEXT_REFUSED)
        if mechanism is None:
            self.transport.write(multiline(b"Supported mechanisms follow", b"PLAIN\r\n"))
            return None
        if mechanism.upper() != b"PLAIN":
            return self._error(POP3.UNKNOWN_MECHANISM)
        if initial is not None:
            return self._sasl_plain(initial)
        self.state = "AUTH"
        self._send(b"+ ")
        return None

    def state_AUTH(self, line: bytes) -> Any:
        self.state = "COMMAND"
        if line.strip() == b"*":
            return self._error(POP3.AUTH_CANCELLED)
        return self._sasl_plain(line.strip())

    def _sasl_plain(self, response: bytes) -> Any:
        try:
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            return self._error(POP3.BAD_BASE64)
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            return self._error(POP3.BAD_BASE64)
        authzid, login, password = parts
        if authzid and authzid != login:        # acting for someone else is not offered
            refused = self.factory.login.refuse(service=self.factory.service, peer=self.peer, mechanism="PLAIN",
                                                login=login.decode("utf-8", "replace"),
                                                reason="authorization identity refused", session=self.sid)
            return self._longOperation(self._answer_login(refused))
        return self._login(UsernamePassword(login, password), login, "PLAIN")

    def _login(self, credentials: Any, login: bytes, mechanism: str) -> defer.Deferred:
        """Through the one login path (appliance.realm); later commands wait for the answer (PIPELINING)."""
        d = self.factory.login.attempt(credentials, IMaildrop, service=self.factory.service, peer=self.peer,
                                       login=login.decode("utf-8", "replace"), mechanism=mechanism, session=self.sid)
        return self._longOperation(self._answer_login(d))

    def _answer_login(self, d: defer.Deferred) -> defer.Deferred:
        self._login_pending = d
        return d.addCallbacks(self._logged_in, self._login_failed)

    def _logged_in(self, logged_in: LoggedIn) -> None:
        self._login_pending = None
        if self._gone:
            logged_in.logout()
            return
        self.mbox, self._onLogout = logged_in.avatar, logged_in.logout
        self.setTimeout(self.timeOut)
        self._send(b"+OK Maildrop has %d messages (%d octets)" % (self.mbox.count(), self.mbox.octets()))

    def _login_failed(self, failure: Failure) -> None:
        """Words to the client stay generic; the story went to the log in appliance.realm."""
        self._login_pending = None
        if self._gone:
            return None
        if failure.check(cred_error.UnauthorizedLogin):
            return self._send(POP3.AUTH_FAILED)
        if failure.check(MaildropInUse):
            return self._send(POP3.IN_USE)
        if failure.check(DirectoryUnavailable):
            return self._send(POP3.DIRECTORY_DOWN)
        if failure.check(LoginThrottled):
            return self._send(POP3.LOGIN_THROTTLED)
        return self._send(POP3.MAILDROP_DOWN)

    # ---- TRANSACTION state -------------------------------------------------------------------
    def do_STAT(self) -> None:
        self._send(b"+OK %d %d" % (self.mbox.count(), self.mbox.octets()))

    def do_LIST(self, number: bytes | None = None) -> None:
        if number is None:
            listing = b"".join(b"%d %d\r\n" % (n + 1, entry.size) for n, entry in self.mbox.live())
            self.transport.write(multiline(b"%d messages (%d octets)" % (self.mbox.count(), self.mbox.octets()),
                                           listing))
            return
        n = self._message(number)
        if n is not None:
            self._send(b"+OK %d %d" % (n + 1, self.mbox.entry(n).size))

    def do_UIDL(self, number: bytes | None = None) -> None:
        if number is None:
            listing = b"".join(b"%d %s\r\n" % (n + 1, entry.uid.encode("ascii")) for n, entry in self.mbox.live())
            self.transport.write(multiline(b"Unique-id listing follows", listing))
            return
        n = self._message(number)
        if n is not None:
            self._send(b"+OK %d %s" % (n + 1, self.mbox.entry(n).uid.encode("ascii")))

    def do_RETR(self, number: bytes) -> defer.Deferred | None:
        n = self._message(number)
        if n is None:
            return None
        return self._send_message(n, lambda wire: stuffed_parts(b"%d octets" % len(wire.raw), wire.stuffed))

    def do_TOP(self, number: bytes, lines: bytes) -> defer.Deferred | None:
        n = self._message(number)
        if n is None:
            return None
        if not lines.isdigit():
            return self._error(POP3.SYNTAX)
        count = int(lines)
        return self._send_message(n, lambda wire: multiline_parts(b"Top of message follows", top(wire.raw, count)))

    def _send_message(self, n: int, frame: Callable[[Wire], list[bytes]]) -> defer.Deferred | None:
        """Answer at once when the read-ahead holds the message, else once the pool has read it.

        The synchronous case skips a Deferred chain and _longOperation's timer juggling per RETR;
        it only runs when no earlier command is pending (processCommand queues behind those), so
        answers keep the commands' order.
        """
        wire = self.mbox.ready(n)
        if wire is not None:
            self._writer.writeSequence(frame(wire))
            return None
        d = self.mbox.read_wire(n)
        d.addCallback(lambda wire: None if self._gone else self._writer.writeSequence(frame(wire)))
        d.addErrback(self._read_failed)
        return self._longOperation(d)

    def _read_failed(self, failure: Failure) -> None:
        if self._gone:
            return
        if failure.check(MessageGone):
            return self._send(POP3.MESSAGE_GONE)
        if not failure.check(OSError):
            maillog.log.failure("POP3 read failed session={session}", failure, peer=self.peer, session=self.sid)
        return self._send(POP3.READ_FAILED)

    def do_DELE(self, number: bytes) -> None:
        n = self._message(number)
        if n is not None:
            self.mbox.delete(n)
            self._send(b"+OK Message %d deleted" % (n + 1))

    def do_RSET(self) -> None:
        self.mbox.undelete_all()
        self._send(b"+OK Maildrop has %d messages (%d octets)" % (self.mbox.count(), self.mbox.octets()))

    def do_NOOP(self) -> None:
        self._send(b"+OK")

    def _message(self, number: bytes) -> int | None:
        """The 0-based number of a live message, or None after answering -ERR."""
        n = parse_number(number)
        if n is None:
            self._error(POP3.BAD_NUMBER)
            return None
        try:
            self.mbox.entry(n)
        except NoSuchMessage:
            self._error(POP3.NO_SUCH_MESSAGE)
            return None
        return n

    # ---- UPDATE state ---------------------------------------------------------------------------
    def do_QUIT(self) -> defer.Deferred | None:
        """Deletions happen here and only here (RFC 1939 6), before the lock is released."""
        self._quitting = True
        if self.mbox is None:
            self._send(b"+OK Bye")
            self.transport.loseConnection()
            return None
        self._committing = self.mbox.commit()
        self._committing.addCallbacks(lambda _: self._send(b"+OK Bye"), self._commit_failed)
        self._committing.addBoth(lambda _: self.transport.loseConnection())
        return self._committing

    def _commit_failed(self, failure: Failure) -> None:
        maillog.error("pop3-update-failed", session=self.sid, peer=self.peer, reason=failure.getErrorMessage())
        self._send(POP3.NOT_KEPT)


class POP3Factory(protocol.ServerFactory):
    """Shared settings of one POP3 listener; each connection gets a POP3Server."""

    protocol = POP3Server
    noisy = False              # no "Starting factory" at info level: the `started` line says it
    # What appliance.connlimit answers a connection it refuses.
    refusals = {connlimit.PER_CLIENT: POP3.TOO_MANY_CONNECTIONS, connlimit.PER_SERVICE: POP3.SERVER_BUSY,
                connlimit.DESCRIPTORS: POP3.SERVER_BUSY}

    def __init__(self, *, login: Login, directory: Any, hostname: str, tls: Any, tls_settings: Any,
                 implicit_tls: bool, reactor: Any, max_errors: int = 10, prelogin_timeout: int = 60) -> None:
        self.login = login
        self.directory = directory
        self.hostname = hostname
        self.tls = tls
        self.tls_settings = tls_settings
        self.implicit_tls = implicit_tls
        self.reactor = reactor
        self.max_errors = max_errors
        self.prelogin_timeout = prelogin_timeout
        self.service = "pop3s" if implicit_tls else "pop3"

    @property
    def offers_apop(self) -> bool:
        """Asked per connection: the directory may gain or lose its first shared secret at any time."""
        return bool(getattr(self.directory, "supports_shared_secrets", False))
