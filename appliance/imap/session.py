"""One IMAP4rev1 connection: the state machine, command dispatch, login, and the replies' one exit.

Stock IMAP4Server gives us the line protocol, literals and the command tables (`<state>_<COMMAND>`
= handler and argument parsers). IMAPServer adds what it lacks or gets wrong for an
Internet-facing server:
- one command at a time: input is paused while a command waits on the disk, so replies keep order
  and a pipelining client cannot make us buffer without bound;
- TLS policy: LOGINDISABLED and no AUTH= before STARTTLS (except from plaintext_auth_networks),
  pipelined plaintext discarded at STARTTLS, failures NO [AUTHENTICATIONFAILED] (slowed by the
  one login path, appliance.realm), NO [UNAVAILABLE] when the directory cannot answer, no
  exception text to clients;
- the commands themselves, one mixin per job: LoginCommands (here), MailboxCommands (mailboxes.py),
  SelectedCommands (selected.py), SortThreadCommands (sortthread.py), FetchCommand (fetch.py),
  Arguments (parse.py).
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, interfaces, threads
from twisted.internet.protocol import ServerFactory
from twisted.mail import imap4
from twisted.mail.imap4 import IllegalClientResponse, IMAP4Server
from twisted.python.failure import Failure

from appliance import address, connlimit, maillog, replies
import appliance.imap.search as search
from appliance.imap.backend import Account, Folder, MailboxError
from appliance.imap.compress import CompressCommand
from appliance.imap.fetch import FetchCommand
from appliance.imap.mailboxes import MailboxCommands
from appliance.imap.parse import Arguments, Discard, mailbox_name, nonsync_literal_size
from appliance.imap.quota import QuotaCommands
from appliance.imap.selected import SelectedCommands
from appliance.imap.sortthread import SortThreadCommands
from appliance.imap.view import SequenceError, View
from appliance.imap.watcher import FolderWatcher
from appliance.interfaces import IAccount
from appliance.realm import LoggedIn, Login
from appliance.replies import IMAPReply
from appliance.tls import log_failure, log_once
from appliance.transport import no_delay

MAX_LINE = 65536                # one command line; UID sets from sync clients can be long
MAX_ERRORS = 20                 # BAD replies in a row (no good command between them) before BYE
CAPABILITIES = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE",
                b"UNSELECT", b"SPECIAL-USE", b"CHILDREN",
                b"LIST-EXTENDED",
                b"LIST-STATUS",
                b"ESEARCH",
                b"SORT",
                b"SORT=DISPLAY",
                b"ESORT",
                b"THREAD=ORDEREDSUBJECT",
                b"THREAD=REFERENCES",
                b"QUOTA", b"QUOTA=RES-STORAGE",         # imap/quota.py
                b"COMPRESS=DEFLATE"]                     # imap/compress.py


class LoginCommands:
    """The not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE PLAIN.

    Both LOGIN and AUTHENTICATE end in `_login`, which hands the credentials to the one login
    path (appliance.realm.Login: check, throttle, audit log, open the account); `_logged_in` and
    `_login_failed` only turn its outcome into the reply.
    """

    factory: "IMAPFactory"
    transport: Any
    peer: str
    secure: bool
    user: str
    account: Account | None
    state: str
    parseState: str
    _pendingLiteral: Any
    _buffer: bytes

    def _can_starttls(self) -> bool:
        tls = self.factory.tls
        return (not self.secure and tls is not None and tls.available
                and interfaces.ITLSTransport.providedBy(self.transport))

    def _auth_allowed(self) -> bool:
        return self.secure or address.in_networks(self.peer, self.factory.tls_settings.plaintext_auth_networks)

    def do_STARTTLS(self, tag: bytes) -> None:
        if not self._can_starttls():
            self._reply(tag, replies.IMAP_TLS_ACTIVE if self.secure else replies.IMAP_TLS_UNAVAILABLE)
            return
        self._buffer = b""           # plaintext pipelined after STARTTLS must not run inside TLS
        self._reply(tag, replies.IMAP_BEGIN_TLS)
        self.transport.startTLS(self.factory.tls)
        self.secure = True

    unauth_STARTTLS = (do_STARTTLS,)

    def do_LOGIN(self, tag: bytes, user: bytes, password: bytes) -> None:
        if not self._auth_allowed():
            self._reply(tag, replies.IMAP_LOGIN_DISABLED)
            return
        self._login(tag, user, password, "LOGIN")

    unauth_LOGIN = (do_LOGIN, Arguments.arg_astring, Arguments.arg_finalastring)

    def do_AUTHENTICATE(self, tag: bytes, line: bytes) -> None:
        mechanism, _, initial = line.strip().partition(b" ")
        if mechanism.upper() != b"PLAIN":
            self._reply(tag, replies.IMAP_UNKNOWN_MECHANISM)
        elif not self._auth_allowed():
            self._reply(tag, replies.IMAP_AUTHENTICATE_DISABLED)
        elif initial:
            self._plain(initial, tag)
        else:
            self.parseState = "pending"
            self._pendingLiteral = defer.Deferred()
            self._pendingLiteral.addCallback(self._plain, tag)
            self._pendingLiteral.addErrback(self._fail, tag)
            self.sendLine(replies.IMAP_SEND_AUTH_RESPONSE.line())

    unauth_AUTHENTICATE = (do_AUTHENTICATE, Arguments.arg_line)

    def _plain(self, response: bytes, tag: bytes) -> None:
        """The client's SASL PLAIN response (RFC 4616): authzid NUL login NUL password, in base64."""
        response = response.strip()
        if response == b"*":
            self._reply(tag, replies.IMAP_AUTH_CANCELLED)
            return
        try:
            decoded = base64.b64decode(response if response != b"=" else b"", validate=True)
            authzid, login, password = decoded.split(b"\0")
        except (binascii.Error, ValueError):
            self._reply(tag, replies.IMAP_BAD_PLAIN)
            return
        if authzid and authzid != login:
            refused = self.factory.login.refuse(service=self.factory.service, peer=self.peer, mechanism="PLAIN",
                                                login=login.decode("utf-8", "replace"),
                                                reason="authorization identity refused", session=self.sid)
            self._answer_login(refused, tag)
            return
        self._login(tag, login, password, "PLAIN")

    # ---- the login: through the one login path (appliance.realm) -----------------------------------------
    def _login(self, tag: bytes, login: bytes, password: bytes, mechanism: str) -> None:
        """Check `login`/`password` and answer `tag`; LOGIN and AUTHENTICATE PLAIN both end here."""
        d = self.factory.login.attempt(UsernamePassword(login, password), IAccount, service=self.factory.service,
                                       peer=self.peer, login=login.decode("utf-8", "replace"), mechanism=mechanism,
                                       session=self.sid)
        self._answer_login(d, tag)

    def _answer_login(self, d: defer.Deferred, tag: bytes) -> None:
        self._login_pending = d
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(tag,), errbackArgs=(tag,))

    def _logged_in(self, logged_in: LoggedIn, tag: bytes) -> None:
        self._login_pending = None
        if self.transport.disconnecting:
            return
        self.user, self.account = logged_in.user.address, logged_in.avatar
        self.user_record = logged_in.user          # its quota: imap/quota.py
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        self._reply(tag, replies.IMAP_LOGGED_IN, data=b" ".join(self.listCapabilities()))

    def _login_failed(self, failure: Failure, tag: bytes) -> None:
        """Words to the client stay generic; the story went to the log in appliance.realm."""
        self._login_pending = None
        if failure.check(defer.CancelledError):
            return
        if failure.check(UnauthorizedLogin):
            self._late_reply(tag, replies.IMAP_AUTH_FAILED)
        else:
            self._late_reply(tag, replies.IMAP_AUTH_UNAVAILABLE)

    def _late_reply(self, tag: bytes, reply: IMAPReply) -> None:
        """A login reply that may come after the client has gone."""
        if self.transport.connected and not self.transport.disconnecting:
            self._reply(tag, reply)


class IMAPServer(CompressCommand, LoginCommands, QuotaCommands, MailboxCommands, SelectedCommands, SortThreadCommands,
                 FetchCommand, Arguments, IMAP4Server):
    """One IMAP connection; the factory holds the shared parts."""

    MAX_LENGTH = MAX_LINE
    timeOut = 60                  # before login; POSTAUTH_TIMEOUT (30 min) after, as RFC 3501 5.4 asks
    factory: "IMAPFactory"

    def __init__(self) -> None:
        super().__init__()
        self.peer = ""
        self.sid = maillog.session_id()      # on every log line of this connection
        self.secure = False
        self.user = ""
        self.user_record: Any = None
        self._login_pending: defer.Deferred | None = None
        self.account: Account | None = None
        self.folder: Folder | None = None
        self.view: View | None = None
        self._busy = False
        self._errors = 0
        self._idle_tag: bytes | None = None
        self._syncing = False
        self._selected_name = ""
        self._announced: int | None = None     # size of a LITERAL+ literal the current line announced

    # ---- connection --------------------------------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.secure = self.factory.implicit_tls
        self.callLater = self.factory.reactor.callLater     # idle timeouts on the factory's clock
        self.timeOut = self.factory.prelogin_timeout          # until login; then POSTAUTH_TIMEOUT
        no_delay(self.transport)
        maillog.connect(self.factory.service, self.peer, session=self.sid)
        super().connectionMade()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._login_pending is not None:
            self._login_pending.cancel()      # a login held back by the throttle: nobody to answer
        self._leave_folder()
        log_failure(self, self.factory.service, reason)
        maillog.disconnect(self.factory.service, self.peer, session=self.sid)
        super().connectionLost(reason)

    def sendServerGreeting(self) -> None:
        self._respond(b"OK", None, replies.IMAP_GREETING.message(data=b" ".join(self.listCapabilities())))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(replies.IMAP_LINE_TOO_LONG.line())
        self.transport.loseConnection()

    def listCapabilities(self) -> list[bytes]:
        caps = list(CAPABILITIES)
        if self.state == "unauth":
            if self._can_starttls():
                caps.append(b"STARTTLS")
            caps.append(b"AUTH=PLAIN" if self._auth_allowed() else b"LOGINDISABLED")
        return caps

    # ---- one command at a time ---------------------------------------------------------------------
    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        log_once(self, self.factory.service)
        if self.parseState == "command":
            self._busy = True
        if not isinstance(self._pendingLiteral, Discard):
            self._announced = nonsync_literal_size(line)
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:
            maillog.log.failure("IMAP command failed session={session}", peer=self.peer, session=self.sid)
            self.parseState = "command"
            self._reply(line.split(b" ", 1)[0] or b"*", replies.IMAP_INTERNAL_ERROR)
        if self._busy and self.parseState == "command" and not self.paused and not self.transport.disconnecting:
            self.pauseProducing()

    def parse_command(self, line: bytes) -> None:
        """`tag COMMAND arguments`: dispatched by the current state (`<state>_<COMMAND>`)."""
        args = line.split(None, 2)
        if not args:
            self._reply(b"*", replies.IMAP_EMPTY_LINE)
            return
        if len(args) == 1:
            self._reply(args[0], replies.IMAP_MISSING_COMMAND)
            return
        tag, command, rest = args[0], args[1].upper(), (args[2] if len(args) == 3 else None)
        try:
            self.dispatchCommand(tag, command, rest)
        except IllegalClientResponse as exc:
            self._reply(tag, replies.IMAP_ILLEGAL_SYNTAX, detail=str(exc).encode("ascii", "replace"))

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes | None, uid: int | None = None) -> None:
        """Run `cmd` if the current state has it: RFC 3501 3 says which commands each state allows."""
        entry = self.lookupCommand(cmd) if cmd.isascii() else None   # stock lookup fails on 8-bit names
        if not entry:
            self._reply(tag, replies.IMAP_UNSUPPORTED)
            return
        # The stock parsers fail with a TypeError on None: a command with its arguments missing
        # would be logged as our bug and answered "Internal error" instead of "Missing argument".
        self._IMAP4Server__doCommand(tag, entry[0], [self, tag], entry[1:], rest or b"", uid)

    def _IMAP4Server__cbDispatch(self, result: tuple[Any, bytes | None], tag: bytes, fn: Callable, args: list,
                                 parseargs: tuple, uid: int | None) -> None:
        """One argument parsed: parse the rest (never None: see dispatchCommand)."""
        arg, rest = result
        args.append(arg)
        self._IMAP4Server__doCommand(tag, fn, args, parseargs, rest or b"", uid)

    def _IMAP4Server__ebDispatch(self, failure: Failure, tag: bytes) -> None:
        """Replaces the stock errback, which sends the exception text to the client."""
        if failure.check(IllegalClientResponse):
            detail = str(failure.value).encode("ascii", "replace")[:200]
            self._reply(tag, replies.IMAP_INVALID_ARGUMENTS, detail=detail)
        elif failure.check(imap4.IllegalMailboxEncoding):
            self._reply(tag, replies.IMAP_BAD_NAME_ENCODING)
        else:
            maillog.log.failure("IMAP argument parsing failed session={session}", failure, peer=self.peer,
                                session=self.sid)
            self._reply(tag, replies.IMAP_INTERNAL_ERROR)

    # ---- replies: every tagged answer leaves through _respond ---------------------------------------
    def _reply(self, tag: bytes | None, reply: IMAPReply, **kwargs: Any) -> None:
        """Send a named reply (appliance.replies) as the tagged answer to `tag`."""
        self._respond(reply.status.encode("ascii"), tag, reply.message(**kwargs))

    def _untagged(self, reply: IMAPReply, **kwargs: Any) -> None:
        self.sendUntaggedResponse(reply.status.encode("ascii") + b" " + reply.message(**kwargs))

    def _completed(self, tag: bytes, command: bytes) -> None:
        """`tag OK COMMAND completed`."""
        self._reply(tag, replies.IMAP_COMPLETED, command=command)

    def _respond(self, state: bytes, tag: bytes | None, message: bytes | None) -> None:
        if tag and state == b"OK":
            self._report_changes()        # other sessions' changes reach the client at every command
        super()._respond(state, tag, message)
        if tag and state in (b"OK", b"NO", b"BAD"):
            self._command_done(state)

    def _command_done(self, state: bytes) -> None:
        """A tagged reply ends the command: count BADs, skip a literal nobody read, read the next command."""
        if state == b"BAD":
            self._errors += 1
            if self._errors >= MAX_ERRORS:
                self.sendLine(replies.IMAP_TOO_MANY_ERRORS.line())
                self.transport.loseConnection()
                return
        else:
            self._errors = 0          # a good command (OK, or a NO that answers it) ends the streak
        unread, self._announced = self._announced, None
        if unread and not self.transport.disconnecting:
            self._skip_literal(unread)
        self._busy = False
        if self.paused and not self.transport.disconnecting:
            self.resumeProducing()

    def _skip_literal(self, size: int) -> None:
        """Swallow the octets of a LITERAL+ literal whose command was refused before reading it.

        The client sends them without waiting (RFC 7888 4), so unless they are read as a literal
        they would run as commands: an APPEND refused before login would execute its message.
        """
        if size > self.factory.max_message_size:
            self.sendLine(replies.IMAP_LITERAL_TOO_LARGE.line())
            self.transport.loseConnection()
            return
        self.parseState = "pending"
        self._pendingLiteral = Discard(size, self._after_skipped)
        self.setRawMode()

    def _after_skipped(self, rest: bytes) -> None:
        """The rest of a refused command's line after its literal: it may announce one more."""
        size = nonsync_literal_size(rest)
        if size:
            self._skip_literal(size)

    def _fail(self, failure: Failure, tag: bytes) -> None:
        """The one place command failures become replies; details go to the log only."""
        if failure.check(MailboxError):
            code = f"[{failure.value.code}] " if failure.value.code else ""
            self.sendNegativeResponse(tag, (code + str(failure.value)).encode("ascii", "replace"))
        elif failure.check(SequenceError, search.SearchError):
            self.sendBadResponse(tag, str(failure.value).encode("ascii", "replace"))
        else:
            maillog.log.failure("IMAP command failed session={session}", failure, peer=self.peer, login=self.user,
                                session=self.sid)
            self._reply(tag, replies.IMAP_SERVER_BUG)

    def _mailbox_names(self, tag: bytes, *raw: bytes) -> list[str] | None:
        """Mailbox names decoded from modified UTF-7 (RFC 3501 5.1.3), or None once the command is refused."""
        try:
            return [mailbox_name(name) for name in raw]
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return None

    def _run(self, fn: Callable, *args: Any) -> defer.Deferred:
        """Blocking mailbox work goes to the disk pool; its result comes back in the reactor."""
        return threads.deferToThreadPool(self.factory.reactor, self.factory.pool, fn, *args)

    # ---- any state (RFC 3501 6.1, RFC 2971) ----------------------------------------------------------
    def do_CAPABILITY(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"CAPABILITY " + b" ".join(self.listCapabilities()))
        self._completed(tag, b"CAPABILITY")

    unauth_CAPABILITY = auth_CAPABILITY = select_CAPABILITY = (do_CAPABILITY,)

    def do_NOOP(self, tag: bytes) -> None:
        if self.view is None:
            self._completed(tag, b"NOOP")
            return
        self._sync().addCallbacks(lambda _: self._completed(tag, b"NOOP"), self._fail, errbackArgs=(tag,))

    unauth_NOOP = auth_NOOP = select_NOOP = (do_NOOP,)
    select_CHECK = (do_NOOP,)

    def do_ID(self, tag: bytes, line: bytes) -> None:
        self.sendUntaggedResponse(b'ID ("name" "mailappliance")')
        self._completed(tag, b"ID")

    unauth_ID = auth_ID = select_ID = (do_ID, Arguments.arg_tokens)     # parameters may be literals

    def do_LOGOUT(self, tag: bytes) -> None:
        self._untagged(replies.IMAP_LOGGING_OUT)
        self._completed(tag, b"LOGOUT")
        self.transport.loseConnection()

    unauth_LOGOUT = auth_LOGOUT = select_LOGOUT = (do_LOGOUT,)


class IMAPFactory(ServerFactory):
    """The `imap` (STARTTLS) or `imaps` listener's shared parts; wrap imaps with tls.implicit()."""

    protocol = IMAPServer
    noisy = False              # no "Starting factory" at info level: the `started` line says it
    # What appliance.connlimit answers a connection it refuses: BYE instead of a greeting (RFC 3501 7.1.5).
    refusals = {connlimit.PER_CLIENT: replies.IMAP_TOO_MANY_CONNECTIONS.line(),
                connlimit.PER_SERVICE: replies.IMAP_SERVER_BUSY.line(),
                connlimit.DESCRIPTORS: replies.IMAP_SERVER_BUSY.line()}

    def __init__(self, *, login: Login, tls: Any, tls_settings: Any, implicit_tls: bool, reactor: Any, pool: Any,
                 max_message_size: int = 26214400, watcher: FolderWatcher | None = None, hostname: str = "",
                 prelogin_timeout: int = 60, quotas: Any = None):
        # hostname is accepted so appliance.tap builds POP3 and IMAP factories alike; IMAP's greeting
        # does not name the host.
        self.login = login
        self.tls = tls
        self.tls_settings = tls_settings
        self.implicit_tls = implicit_tls
        self.reactor = reactor
        self.pool = pool
        self.max_message_size = max_message_size
        self.prelogin_timeout = prelogin_timeout
        self.quotas = quotas           # store/quota.py Quotas; None = no limits (imap/quota.py)
        self.service = "imaps" if implicit_tls else "imap"
        self.watcher = watcher or FolderWatcher(reactor, pool)
