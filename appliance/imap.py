"""IMAP4rev1 listeners (imap 143 with STARTTLS, imaps 993) on Twisted's IMAP4Server, over appliance.mailbox.

Stock IMAP4Server gives us the line protocol, argument and FETCH-attribute parsing, literals and
the command tables. This subclass adds what it lacks or gets wrong for an Internet-facing server:
- one command at a time: input is paused while a command waits on the disk, so replies keep order
  and a pipelining client cannot make us buffer without bound;
- TLS policy: LOGINDISABLED and no AUTH= before STARTTLS (except from plaintext_auth_networks),
  pipelined plaintext discarded at STARTTLS, failures NO [AUTHENTICATIONFAILED] slowed by
  AuthThrottle, NO [UNAVAILABLE] when the directory cannot answer, no exception text to clients;
- literals capped before any octet is read (and LITERAL+), sequence sets never expanded;
- the selected state over persistent UIDs and flags: FETCH from the metadata index, STORE, SEARCH,
  EXPUNGE, UID EXPUNGE, COPY/MOVE with COPYUID, APPEND with APPENDUID, UNSELECT, IDLE, ID,
  NAMESPACE, SPECIAL-USE, and updates from other sessions (EXISTS/EXPUNGE/FETCH).
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, interfaces, task, threads
from twisted.internet.protocol import ServerFactory
from twisted.mail import imap4
from twisted.mail.imap4 import IllegalClientResponse, IMAP4Server
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import address, maillog
from appliance import mime
from appliance.interfaces import IAccount
from appliance.mailbox import search
from appliance.realm import LoggedIn, Login
from appliance.store import SYSTEM_FLAGS, MailboxError, Meta
from appliance.store.account import DELIMITER, Account, normalise
from appliance.store.folder import Folder
from appliance.mailbox.view import SequenceError, View, format_flags, parse_set
from appliance.tls import log_once
from appliance.transport import no_delay

SERVICE = "imap"
IDLE_POLL = 1.0                 # seconds between checks of an idling folder (RFC 2177: new mail within 2 s)
MAX_LINE = 65536                # one command line; UID sets from sync clients can be long
MAX_STRING_LITERAL = 65536      # a literal that is not a message (names, passwords, search strings)
FETCH_BATCH_BYTES = 4 << 20     # message octets read per trip to the disk pool during FETCH
MAX_ERRORS = 20                 # BAD replies in one session before BYE
_LITERAL = re.compile(rb"^\{(\d{1,30})(\+?)\}$")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_FLAG_LIST = b"(" + " ".join(SYSTEM_FLAGS).encode() + b")"


def internaldate(seconds: float) -> bytes:
    """INTERNALDATE in UTC: `"17-Jul-1996 02:44:25 +0000"` (month names fixed, not from the locale)."""
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year,
                                                     t.tm_hour, t.tm_min, t.tm_sec)


def parse_date(text: bytes) -> float | None:
    """APPEND's date-time `"dd-Mon-yyyy hh:mm:ss +zzzz"` as epoch seconds; None when malformed."""
    try:
        return _parse_date(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError, IndexError):
        return None


def _parse_date(text: str) -> float:
    import calendar
    day_part, clock, zone = text.strip().split(" ")
    day, month, year = day_part.split("-")
    hour, minute, second = (int(v) for v in clock.split(":"))
    when = calendar.timegm((int(year), _MONTHS.index(month.capitalize()) + 1, int(day), hour, minute, second))
    sign = -1 if zone[0] == "-" else 1
    offset = sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    return float(when - offset)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n%b" % (len(data), data)


def _quote_name(name: str) -> bytes:
    encoded = name.encode("imap4-utf-7")
    return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@implementer(interfaces.IPushProducer)
class _Backpressure:
    """Registered with the transport during a big FETCH: `wait()` fires when its buffer has drained."""

    def __init__(self) -> None:
        self.paused = False
        self._waiting: list[defer.Deferred] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def wait(self) -> defer.Deferred:
        if not self.paused:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d


class FolderWatcher:
    """Polls the folders that sessions are idling on, and tells those sessions when one changed.

    One timer for the whole server; each folder is checked with a few stat calls in the pool and
    rescanned only when its new/ or cur/ changed.
    """

    def __init__(self, reactor: Any, pool: Any, interval: float = IDLE_POLL):
        self._reactor = reactor
        self._pool = pool
        self._watchers: dict[Folder, set["IMAPServer"]] = {}
        self._busy: set[Folder] = set()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._interval = interval

    def watch(self, folder: Folder, session: "IMAPServer") -> None:
        self._watchers.setdefault(folder, set()).add(session)
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def unwatch(self, folder: Folder, session: "IMAPServer") -> None:
        sessions = self._watchers.get(folder)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._watchers[folder]
        if not self._watchers and self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        for folder in list(self._watchers):
            if folder in self._busy:
                continue
            self._busy.add(folder)
            d = threads.deferToThreadPool(self._reactor, self._pool, _refresh_if_changed, folder)
            d.addCallback(self._checked, folder)
            d.addErrback(lambda failure: maillog.log.failure("IMAP folder poll failed", failure))
            d.addBoth(lambda _, f=folder: self._busy.discard(f))

    def _checked(self, changed: bool, folder: Folder) -> None:
        if changed:
            for session in list(self._watchers.get(folder, ())):
                session.folder_changed()


def _refresh_if_changed(folder: Folder) -> bool:
    before = folder.state
    if folder.changed():
        folder.refresh()
    return folder.state is not before


class IMAPServer(IMAP4Server):
    """One IMAP connection; the factory holds the shared parts."""

    IDENT = b"mailappliance IMAP4rev1 ready"
    MAX_LENGTH = MAX_LINE
    timeOut = 60                  # before login; POSTAUTH_TIMEOUT (30 min) after, as RFC 3501 5.4 asks
    factory: "IMAPFactory"

    def __init__(self) -> None:
        super().__init__()
        self.peer = ""
        self.secure = False
        self.user = ""
        self.account: Account | None = None
        self._login_pending: defer.Deferred | None = None
        self.folder: Folder | None = None
        self.view: View | None = None
        self._busy = False
        self._errors = 0
        self._tls_logged = False
        self._idle_tag: bytes | None = None
        self._syncing = False
        self._selected_name = ""

    # ---- connection --------------------------------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.secure = self.factory.implicit_tls
        no_delay(self.transport)
        maillog.connect(self.factory.service, self.peer)
        super().connectionMade()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._login_pending is not None:
            self._login_pending.cancel()      # a login held back by the throttle: nobody to answer
        self._leave_folder()
        maillog.disconnect(self.factory.service, self.peer)
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"* BYE Command line too long")
        self.transport.loseConnection()

    def _can_starttls(self) -> bool:
        tls = self.factory.tls
        return (not self.secure and tls is not None and tls.available
                and interfaces.ITLSTransport.providedBy(self.transport))

    def _auth_allowed(self) -> bool:
        return self.secure or address.in_networks(self.peer, self.factory.tls_settings.plaintext_auth_networks)

    def listCapabilities(self) -> list[bytes]:
        caps = [b"IMAP4rev1", b"LITERAL+", b"SASL-IR", b"ID", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE",
                b"UNSELECT", b"SPECIAL-USE", b"CHILDREN"]
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
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:
            maillog.log.failure("IMAP command failed", peer=self.peer)
            self.parseState = "command"
            self._respond(b"BAD", line.split(b" ", 1)[0] or b"*", b"Internal error")
        if self._busy and self.parseState == "command" and not self.paused and not self.transport.disconnecting:
            self.pauseProducing()

    def parse_command(self, line: bytes) -> None:
        if not line.strip():
            self._respond(b"BAD", b"*", b"Empty command line")
            return
        super().parse_command(line)

    def _respond(self, state: bytes, tag: bytes | None, message: bytes | None) -> None:
        super()._respond(state, tag, message)
        if tag and state in (b"OK", b"NO", b"BAD"):
            self._command_done(state)

    def _command_done(self, state: bytes) -> None:
        if state == b"BAD":
            self._errors += 1
            if self._errors >= MAX_ERRORS:
                self.sendLine(b"* BYE Too many errors")
                self.transport.loseConnection()
                return
        self._busy = False
        if self.paused and not self.transport.disconnecting:
            self.resumeProducing()

    def _IMAP4Server__ebDispatch(self, failure: Failure, tag: bytes) -> None:
        """Replaces the stock errback, which sends the exception text to the client."""
        if failure.check(IllegalClientResponse):
            self.sendBadResponse(tag, b"Invalid arguments: " + str(failure.value).encode("ascii", "replace")[:200])
        elif failure.check(imap4.IllegalMailboxEncoding):
            self.sendBadResponse(tag, b"Invalid mailbox name encoding")
        else:
            maillog.log.failure("IMAP argument parsing failed", failure, peer=self.peer)
            self.sendBadResponse(tag, b"Internal error")

    def _fail(self, failure: Failure, tag: bytes) -> None:
        """The one place command failures become replies; details go to the log only."""
        if failure.check(MailboxError):
            code = f"[{failure.value.code}] " if failure.value.code else ""
            self.sendNegativeResponse(tag, (code + str(failure.value)).encode("ascii", "replace"))
        elif failure.check(SequenceError, search.SearchError):
            self.sendBadResponse(tag, str(failure.value).encode("ascii", "replace"))
        else:
            maillog.log.failure("IMAP command failed", failure, peer=self.peer, login=self.user)
            self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error; the log has the details")

    def _run(self, fn: Callable, *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.factory.reactor, self.factory.pool, fn, *args)

    # ---- argument parsers (replacing the stock ones that accept any literal size) ---------------------
    def _literal_size(self, token: bytes, limit: int) -> tuple[int, bool]:
        match = _LITERAL.match(token)
        if not match:
            raise IllegalClientResponse("Malformed literal")
        size, nonsync = int(match.group(1)), bool(match.group(2))
        if size > limit:
            if nonsync:
                # The client sends the octets without waiting: the only safe answer is to hang up.
                self.sendLine(b"* BYE Literal too large")
                self.transport.loseConnection()
            raise IllegalClientResponse("Literal too large")
        return size, nonsync

    def _read_literal(self, size: int, nonsync: bool, holder: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.parseState = "pending"
        self._pendingLiteral = holder(size, d)
        if not nonsync:
            self.sendContinuationRequest(b"Ready for literal data")
        self.setRawMode()
        return d

    def arg_astring(self, line: bytes, final: bool = False) -> Any:
        line = line.lstrip(b" ")
        if line.startswith(b"{"):
            token, _, rest = line.partition(b" ")
            if rest:
                raise IllegalClientResponse("A literal must end the line")
            size, nonsync = self._literal_size(token, MAX_STRING_LITERAL)
            if final and size == 0:
                return (b"", b"")
            return self._read_literal(size, nonsync, imap4.LiteralString)
        if line.startswith(b'"'):
            match = re.match(rb'"((?:[^"\\]|\\.)*)"(?: |$)', line)
            if not match:
                raise IllegalClientResponse("Unmatched quotes")
            return re.sub(rb"\\(.)", rb"\1", match.group(1)), line[match.end():]
        return super().arg_astring(line, final)

    def arg_finalastring(self, line: bytes) -> Any:
        return self.arg_astring(line, final=True)

    def arg_literal(self, line: bytes) -> Any:
        size, nonsync = self._literal_size(line.strip(), self.factory.max_message_size)
        return self._read_literal(size, nonsync, imap4.LiteralFile)

    def arg_seqset(self, line: bytes) -> tuple[list, bytes]:
        token, _, rest = line.partition(b" ")
        try:
            return parse_set(token), rest
        except SequenceError as exc:
            raise IllegalClientResponse(str(exc)) from None

    def arg_fetchatt(self, line: bytes) -> tuple[list, bytes]:
        parser = imap4._FetchParser()
        try:
            parser.parseString(line)
        except Exception:
            raise IllegalClientResponse("Invalid fetch attributes") from None
        if not parser.result:
            raise IllegalClientResponse("Missing fetch attributes")
        return parser.result, b""

    def arg_flaglist(self, line: bytes) -> tuple[list, bytes]:
        flags, rest = super().arg_flaglist(line)
        return [flag.decode("ascii", "replace") for flag in flags], rest

    def opt_flags_date(self, line: bytes) -> tuple[tuple, bytes]:
        """APPEND's optional `(flags)` and `"date-time"`."""
        flags: list[str] = []
        if line.startswith(b"("):
            end = line.find(b")")
            if end < 0:
                raise IllegalClientResponse("Mismatched parenthesis")
            flags = [f.decode("ascii", "replace") for f in line[1:end].split()]
            line = line[end + 1:].lstrip(b" ")
        date = None
        if line.startswith(b'"'):
            end = line.find(b'"', 1)
            date = parse_date(line[1:end]) if end > 0 else None
            if date is None:
                raise IllegalClientResponse("Invalid date-time")
            line = line[end + 1:].lstrip(b" ")
        return (flags, date), line

    def _name(self, raw: bytes) -> str:
        try:
            return normalise(raw.decode("imap4-utf-7"))
        except Exception:
            raise MailboxError("Invalid mailbox name encoding", "CANNOT") from None

    # ---- not authenticated -------------------------------------------------------------------------
    def do_CAPABILITY(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"CAPABILITY " + b" ".join(self.listCapabilities()))
        self.sendPositiveResponse(tag, b"CAPABILITY completed")

    unauth_CAPABILITY = (do_CAPABILITY,)
    auth_CAPABILITY = select_CAPABILITY = unauth_CAPABILITY

    def do_STARTTLS(self, tag: bytes) -> None:
        if not self._can_starttls():
            self.sendNegativeResponse(tag, b"TLS not available" if not self.secure else b"TLS already active")
            return
        self._buffer = b""           # plaintext pipelined after STARTTLS must not run inside TLS
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        self.transport.startTLS(self.factory.tls)
        self.secure = True

    unauth_STARTTLS = (do_STARTTLS,)

    def do_LOGIN(self, tag: bytes, user: bytes, password: bytes) -> None:
        if not self._auth_allowed():
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS")
            return
        self._login(tag, user, password, "LOGIN")

    unauth_LOGIN = (do_LOGIN, arg_astring, arg_finalastring)

    def do_AUTHENTICATE(self, tag: bytes, line: bytes) -> None:
        mechanism, _, initial = line.strip().partition(b" ")
        if mechanism.upper() != b"PLAIN":
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
        elif not self._auth_allowed():
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] Authentication is disabled before STARTTLS")
        elif initial:
            self._plain(initial, tag)
        else:
            self.parseState = "pending"
            self._pendingLiteral = defer.Deferred()
            self._pendingLiteral.addCallback(self._plain, tag)
            self._pendingLiteral.addErrback(self._fail, tag)
            self.sendLine(b"+ ")

    unauth_AUTHENTICATE = (do_AUTHENTICATE, IMAP4Server.arg_line)

    def _plain(self, response: bytes, tag: bytes) -> None:
        response = response.strip()
        if response == b"*":
            self.sendBadResponse(tag, b"Authentication cancelled")
            return
        try:
            decoded = base64.b64decode(response if response != b"=" else b"", validate=True)
            authzid, login, password = decoded.split(b"\0")
        except (binascii.Error, ValueError):
            self.sendBadResponse(tag, b"Malformed PLAIN response")
            return
        if authzid and authzid != login:
            refused = self.factory.login.refuse(service=self.factory.service, peer=self.peer, mechanism="PLAIN",
                                                login=login.decode("utf-8", "replace"),
                                                reason="authorization identity refused")
            self._answer_login(refused, tag)
            return
        self._login(tag, login, password, "PLAIN")

    # ---- the login: through the one login path (appliance.realm) ------------------------------
    def _login(self, tag: bytes, login: bytes, password: bytes, mechanism: str) -> None:
        d = self.factory.login.attempt(UsernamePassword(login, password), IAccount, service=self.factory.service,
                                       peer=self.peer, login=login.decode("utf-8", "replace"), mechanism=mechanism)
        self._answer_login(d, tag)

    def _answer_login(self, d: defer.Deferred, tag: bytes) -> None:
        self._login_pending = d
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(tag,), errbackArgs=(tag,))

    def _logged_in(self, logged_in: LoggedIn, tag: bytes) -> None:
        self._login_pending = None
        if self.transport.disconnecting:
            return
        self.user, self.account = logged_in.user.address, logged_in.avatar
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        self.sendPositiveResponse(tag, b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in")

    def _login_failed(self, failure: Failure, tag: bytes) -> None:
        """Words to the client stay generic; the story went to the log in appliance.realm."""
        self._login_pending = None
        if failure.check(defer.CancelledError):
            return
        if failure.check(UnauthorizedLogin):
            self._late_reply(tag, b"[AUTHENTICATIONFAILED] Authentication failed")
        else:
            self._late_reply(tag, b"[UNAVAILABLE] Temporary authentication failure, try again later")

    def _late_reply(self, tag: bytes, message: bytes) -> None:
        if self.transport.connected and not self.transport.disconnecting:
            self.sendNegativeResponse(tag, message)

    # ---- any state ---------------------------------------------------------------------------------
    def do_NOOP(self, tag: bytes) -> None:
        if self.view is None:
            self.sendPositiveResponse(tag, b"NOOP completed")
            return
        self._sync().addCallbacks(lambda _: self.sendPositiveResponse(tag, b"NOOP completed"),
                                  self._fail, errbackArgs=(tag,))

    unauth_NOOP = auth_NOOP = select_NOOP = (do_NOOP,)
    select_CHECK = (do_NOOP,)

    def do_ID(self, tag: bytes, line: bytes) -> None:
        self.sendUntaggedResponse(b'ID ("name" "mailappliance")')
        self.sendPositiveResponse(tag, b"ID completed")

    unauth_ID = auth_ID = select_ID = (do_ID, IMAP4Server.arg_line)

    def do_NAMESPACE(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b'NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)

    # ---- folders -------------------------------------------------------------------------------------
    def _account_call(self, tag: bytes, method: str, *names: bytes, done: bytes = b"completed") -> None:
        try:
            args = [self._name(name) for name in names]
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return
        d = self._run(getattr(self.account, method), *args)
        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, method.upper().encode() + b" " + done),
                       self._fail, errbackArgs=(tag,))

    def do_CREATE(self, tag: bytes, name: bytes) -> None:
        self._account_call(tag, "create", name.rstrip(DELIMITER.encode()))

    def do_DELETE(self, tag: bytes, name: bytes) -> None:
        if self.folder is not None and normalise(name.decode("imap4-utf-7", "replace")) == self._selected_name:
            self._leave_folder()
            self.state = "auth"
        self._account_call(tag, "delete", name)

    def do_RENAME(self, tag: bytes, old: bytes, new: bytes) -> None:
        self._account_call(tag, "rename", old, new)

    def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._account_call(tag, "subscribe", name)

    def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._account_call(tag, "unsubscribe", name)

    auth_CREATE = select_CREATE = (do_CREATE, arg_finalastring)
    auth_DELETE = select_DELETE = (do_DELETE, arg_finalastring)
    auth_RENAME = select_RENAME = (do_RENAME, arg_astring, arg_finalastring)
    auth_SUBSCRIBE = select_SUBSCRIBE = (do_SUBSCRIBE, arg_finalastring)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (do_UNSUBSCRIBE, arg_finalastring)

    def do_LIST(self, tag: bytes, reference: bytes, pattern: bytes, command: bytes) -> None:
        try:
            ref, pat = self._name(reference) if reference else "", self._name(pattern) if pattern else ""
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return
        d = self._run(self._list, ref, pat, command == b"LSUB")
        d.addCallback(self._listed, tag, command)
        d.addErrback(self._fail, tag)

    auth_LIST = select_LIST = (do_LIST, arg_astring, arg_finalastring, b"LIST")
    auth_LSUB = select_LSUB = (do_LIST, arg_astring, arg_finalastring, b"LSUB")

    def _list(self, reference: str, pattern: str, subscribed_only: bool) -> list[tuple[list[str], str]]:
        """Blocking: (attributes, name) of the folders matching reference+pattern (RFC 3501 6.3.8)."""
        account = self.account
        assert account is not None
        if not pattern:
            return [(["\\Noselect"], "")]
        regex = imap4.wildcardToRegexp(reference + pattern, DELIMITER)
        names = account.names()
        chosen = account.subscriptions() if subscribed_only else set(names)
        found = []
        for name in names:
            if name in chosen and regex.match(name):
                attributes = ["\\HasChildren" if account.has_children(name) else "\\HasNoChildren"]
                special = account.special_use(name)
                if special:
                    attributes.append(special)
                found.append((attributes, name))
        return found

    def _listed(self, found: list[tuple[list[str], str]], tag: bytes, command: bytes) -> None:
        for attributes, name in found:
            self.sendUntaggedResponse(b"%b (%b) \"%b\" %b" % (command, " ".join(attributes).encode(),
                                                             DELIMITER.encode(), _quote_name(name)))
        self.sendPositiveResponse(tag, command + b" completed")

    def do_STATUS(self, tag: bytes, name: bytes, items: list[bytes]) -> None:
        wanted = [item.upper() for item in items if isinstance(item, bytes)]
        if not wanted or any(w not in (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN")
                             for w in wanted):
            self.sendBadResponse(tag, b"Invalid STATUS items")
            return
        try:
            folder_name = self._name(name)
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return
        d = self._run(lambda: self.account.folder(folder_name).refresh())
        d.addCallback(self._status, tag, folder_name, wanted)
        d.addErrback(self._fail, tag)

    auth_STATUS = select_STATUS = (do_STATUS, arg_astring, IMAP4Server.arg_plist)

    def _status(self, snapshot: Any, tag: bytes, name: str, wanted: list[bytes]) -> None:
        values = {b"MESSAGES": len(snapshot.uids), b"RECENT": len(snapshot.fresh), b"UIDNEXT": snapshot.uidnext,
                  b"UIDVALIDITY": snapshot.uidvalidity,
                  b"UNSEEN": sum(1 for flags in snapshot.flags if "\\Seen" not in flags)}
        body = b" ".join(b"%b %d" % (w, values[w]) for w in wanted)
        self.sendUntaggedResponse(b"STATUS " + _quote_name(name) + b" (" + body + b")")
        self.sendPositiveResponse(tag, b"STATUS completed")

    def do_APPEND(self, tag: bytes, name: bytes, flags_date: tuple, message: Any) -> None:
        flags, date = flags_date
        data = message.read()
        try:
            folder_name = self._name(name)
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return

        def append() -> tuple[int, int]:
            assert self.account is not None
            if not self.account.exists(folder_name):
                raise MailboxError("Mailbox does not exist", "TRYCREATE")
            folder = self.account.folder(folder_name)
            uid = folder.append(data, frozenset(f for f in flags if f in SYSTEM_FLAGS), date)
            return folder.state.uidvalidity, uid

        d = self._run(append)
        d.addCallback(lambda result: self._after_change().addCallback(
            lambda _: self.sendPositiveResponse(tag, b"[APPENDUID %d %d] APPEND completed" % result)))
        d.addErrback(self._fail, tag)

    auth_APPEND = select_APPEND = (do_APPEND, arg_astring, opt_flags_date, arg_literal)

    # ---- selecting -------------------------------------------------------------------------------------
    def _select(self, tag: bytes, raw_name: bytes, readonly: bool, command: bytes) -> None:
        self._leave_folder()
        self.state = "auth"
        try:
            name = self._name(raw_name)
        except MailboxError as exc:
            self._fail(Failure(exc), tag)
            return

        def open_folder() -> tuple[Folder, Any, frozenset[int]]:
            assert self.account is not None
            folder = self.account.folder(name)
            snapshot = folder.refresh()
            claimed = frozenset() if readonly else folder.claim(snapshot.fresh)
            return folder, folder.state, claimed

        d = self._run(open_folder)
        d.addCallback(self._selected, tag, name, readonly, command)
        d.addErrback(self._fail, tag)

    def _selected(self, result: tuple, tag: bytes, name: str, readonly: bool, command: bytes) -> None:
        folder, snapshot, claimed = result
        self.folder, self.view, self._selected_name = folder, View(snapshot, claimed, readonly), name
        view = self.view
        permanent = b"()" if readonly else _FLAG_LIST
        lines = [b"* FLAGS " + _FLAG_LIST, b"* OK [PERMANENTFLAGS %b] Flags permitted" % permanent,
                 b"* %d EXISTS" % view.exists, b"* %d RECENT" % len(view.recent)]
        unseen = view.first_unseen()
        if unseen:
            lines.append(b"* OK [UNSEEN %d] First unseen" % unseen)
        lines += [b"* OK [UIDVALIDITY %d] UIDs valid" % snapshot.uidvalidity,
                  b"* OK [UIDNEXT %d] Predicted next UID" % snapshot.uidnext]
        self.transport.writeSequence([line + b"\r\n" for line in lines])
        self.state = "select"
        mode = b"READ-ONLY" if readonly else b"READ-WRITE"
        self.sendPositiveResponse(tag, b"[%b] %b completed" % (mode, command))

    auth_SELECT = select_SELECT = (_select, arg_astring, False, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (_select, arg_astring, True, b"EXAMINE")

    def _leave_folder(self) -> None:
        if self.folder is not None and self._idle_tag is not None:
            self.factory.watcher.unwatch(self.folder, self)
        self.folder = self.view = None
        self._idle_tag = None

    def do_UNSELECT(self, tag: bytes) -> None:
        self._leave_folder()
        self.state = "auth"
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT = (do_UNSELECT,)

    def do_CLOSE(self, tag: bytes) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if view.readonly:
            self.do_UNSELECT(tag)
            return
        doomed = [uid for uid, flags in zip(view.known.uids, view.known.flags) if "\\Deleted" in flags]
        d = self._run(folder.expunge, doomed) if doomed else defer.succeed(None)
        d.addCallback(lambda _: self.do_UNSELECT(tag))
        d.addErrback(self._fail, tag)

    select_CLOSE = (do_CLOSE,)

    # ---- updates from other sessions and from delivery -------------------------------------------------
    def _sync(self, allow_expunge: bool = True) -> defer.Deferred:
        """Refresh the folder, claim \\Recent for new mail, and send what changed."""
        folder, view = self.folder, self.view
        if folder is None or view is None:
            return defer.succeed(None)

        def refresh() -> tuple[Any, frozenset[int]]:
            snapshot = folder.refresh() if folder.changed() else folder.state
            claimed = frozenset() if view.readonly or not snapshot.fresh else folder.claim(snapshot.fresh)
            return folder.state, claimed

        return self._run(refresh).addCallback(self._send_updates, allow_expunge)

    def _send_updates(self, result: tuple[Any, frozenset[int]], allow_expunge: bool = True) -> None:
        snapshot, claimed = result
        if self.view is None or self.transport.disconnecting:
            return
        lines = self.view.updates(snapshot, claimed, allow_expunge)
        if lines:
            self.transport.writeSequence([line + b"\r\n" for line in lines])

    def _after_change(self) -> defer.Deferred:
        """After this session changed its folder: report EXISTS/FETCH, but never EXPUNGE mid-command."""
        if self.view is None or self.folder is None:
            return defer.succeed(None)
        self._send_updates((self.folder.state, frozenset()), allow_expunge=False)
        return defer.succeed(None)

    def _adopt_quietly(self, snapshot: Any) -> list[bytes]:
        """Take in our own flag changes (already shown to the client): only EXISTS/RECENT lines remain."""
        assert self.view is not None
        lines = self.view.updates(snapshot, allow_expunge=False) or []
        return [line for line in lines if b" FETCH " not in line]

    def folder_changed(self) -> None:
        """Called by the FolderWatcher while this session idles."""
        if self._idle_tag is not None and not self._syncing:
            self._syncing = True
            d = self._sync()
            d.addErrback(lambda failure: maillog.log.failure("IMAP IDLE update failed", failure, peer=self.peer))
            d.addBoth(lambda _: setattr(self, "_syncing", False))

    def do_IDLE(self, tag: bytes) -> None:
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendLine(b"+ idling")
        if self.folder is not None:
            self.factory.watcher.watch(self.folder, self)
            self.folder_changed()

    auth_IDLE = select_IDLE = (do_IDLE,)

    def parse_idle(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        if self.folder is not None:
            self.factory.watcher.unwatch(self.folder, self)
        self.parseState = "command"
        if line.strip().upper() == b"DONE":
            self.sendPositiveResponse(tag, b"IDLE terminated")
        else:
            self.sendBadResponse(tag, b"Expected DONE")

    # ---- FETCH -----------------------------------------------------------------------------------------
    def do_FETCH(self, tag: bytes, ranges: list, query: list, uid: int = 0) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        try:
            items = view.resolve(ranges, bool(uid))
        except SequenceError as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        kinds = {part.type for part in query}
        if uid:
            kinds.add("uid")
        marks_seen = not view.readonly and any(
            p.type in ("rfc822", "rfc822text") or p.type == "body" and not p.peek and _has_section(p) for p in query)
        d = self._mark_seen(items) if marks_seen else defer.succeed(None)
        if kinds & {"envelope", "internaldate", "rfc822size", "bodystructure"}:
            d.addCallback(lambda _: self._run(folder.meta, [u for _, u in items]))
        else:
            d.addCallback(lambda _: {})
        d.addCallback(self._stream, items, query, bool(uid), marks_seen)
        if marks_seen:
            d.addCallback(lambda _: self.transport.writeSequence(
                [line + b"\r\n" for line in self._adopt_quietly(folder.state)]))
        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, b"FETCH completed"), self._fail, errbackArgs=(tag,))

    select_FETCH = (do_FETCH, arg_seqset, arg_fetchatt)

    def _mark_seen(self, items: list[tuple[int, int]]) -> defer.Deferred:
        folder, view = self.folder, self.view
        assert folder is not None and view is not None
        current = folder.state
        changes = {u: current.flags_of(u) | {"\\Seen"} for _, u in items
                   if u in current.position and "\\Seen" not in current.flags_of(u)}
        if not changes:
            return defer.succeed(None)
        return self._run(folder.store, changes)

    def _stream(self, metas: dict[int, Meta], items: list[tuple[int, int]], query: list, by_uid: bool,
                flags_changed: bool) -> defer.Deferred:
        """Write the FETCH responses: from the index alone when possible, else reading in batches."""
        needs_body = any(p.type in ("rfc822", "rfc822header", "rfc822text", "body") for p in query)
        view = self.view
        assert view is not None
        state = self.folder.state if self.folder is not None else view.known
        if not needs_body:
            chunk: list[bytes] = []
            for seq, uid in items:
                response = self._fetch_response(seq, uid, None, metas, query, by_uid, flags_changed, state)
                if response is not None:
                    chunk.append(response)
            self.transport.writeSequence(chunk)
            return defer.succeed(None)
        return self._stream_bodies(list(items), metas, query, by_uid, flags_changed, state)

    @defer.inlineCallbacks
    def _stream_bodies(self, items: list[tuple[int, int]], metas: dict[int, Meta], query: list, by_uid: bool,
                       flags_changed: bool, state: Any) -> Any:
        folder = self.folder
        assert folder is not None
        pressure = _Backpressure()
        self.transport.registerProducer(pressure, True)
        try:
            while items and not self.transport.disconnecting:
                raws = yield self._run(_read_batch, folder, [u for _, u in items[:256]])
                batch, items = items[:len(raws)], items[len(raws):]
                out = []
                for (seq, uid), raw in zip(batch, raws):
                    if raw is not None:
                        response = self._fetch_response(seq, uid, raw, metas, query, by_uid, flags_changed, state)
                        if response is not None:
                            out.append(response)
                self.transport.writeSequence(out)
                yield pressure.wait()
        finally:
            self.transport.unregisterProducer()

    def _fetch_response(self, seq: int, uid: int, raw: bytes | None, metas: dict[int, Meta], query: list,
                        by_uid: bool, flags_changed: bool, state: Any) -> bytes | None:
        meta = metas.get(uid)
        view = self.view
        assert view is not None
        if uid not in state.position:
            return None            # expunged by another session meanwhile: nothing to show
        flags = format_flags(state.flags_of(uid), uid in view.recent)
        out: list[bytes] = []
        if by_uid and not any(p.type == "uid" for p in query):
            out.append(b"UID %d" % uid)
        for part in query:
            kind = part.type
            if kind == "uid":
                out.append(b"UID %d" % uid)
            elif kind == "flags":
                out.append(b"FLAGS " + flags)
            elif kind in ("envelope", "internaldate", "rfc822size", "bodystructure"):
                if meta is None:
                    return None
                out.append({"envelope": b"ENVELOPE " + meta.envelope,
                            "internaldate": b"INTERNALDATE " + internaldate(meta.internaldate),
                            "rfc822size": b"RFC822.SIZE %d" % meta.size,
                            "bodystructure": b"BODYSTRUCTURE " + meta.bodystructure}[kind])
            elif raw is not None:
                out.append(_body_item(part, raw))
        if flags_changed and not any(p.type == "flags" for p in query):
            out.append(b"FLAGS " + flags)
        return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(out))

    # ---- STORE, SEARCH, EXPUNGE, COPY, MOVE ----------------------------------------------------------
    def do_STORE(self, tag: bytes, ranges: list, mode: bytes, flags: list[str], uid: int = 0) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        mode = mode.upper()
        if mode.lstrip(b"+-") not in (b"FLAGS", b"FLAGS.SILENT"):
            self.sendBadResponse(tag, b"Invalid STORE item")
            return
        try:
            items = view.resolve(ranges, bool(uid))
        except SequenceError as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        wanted = frozenset(f for f in flags if f in SYSTEM_FLAGS)
        current = folder.state
        changes: dict[int, frozenset[str]] = {}
        for _, u in items:
            if u not in current.position:
                continue
            old = current.flags_of(u)
            new = old | wanted if mode.startswith(b"+") else old - wanted if mode.startswith(b"-") else wanted
            if new != old:
                changes[u] = new
        silent = mode.endswith(b".SILENT")
        d = self._run(folder.store, changes) if changes else defer.succeed(current)
        d.addCallback(self._stored, tag, items, silent, bool(uid))
        d.addErrback(self._fail, tag)

    select_STORE = (do_STORE, arg_seqset, IMAP4Server.arg_atom, arg_flaglist)

    def _stored(self, snapshot: Any, tag: bytes, items: list[tuple[int, int]], silent: bool, by_uid: bool) -> None:
        view = self.view
        assert view is not None
        out = self._adopt_quietly(snapshot)
        if not silent:
            for seq, u in items:
                if u in snapshot.position:
                    uid_part = b" UID %d" % u if by_uid else b""
                    out.append(b"* %d FETCH (FLAGS %b%b)" % (seq, format_flags(snapshot.flags_of(u), u in view.recent),
                                                           uid_part))
        self.transport.writeSequence([line + b"\r\n" for line in out])
        self.sendPositiveResponse(tag, b"STORE completed")

    def do_SEARCH(self, tag: bytes, charset: bytes | None, line: bytes, uid: int = 0) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if charset is not None and charset.upper().strip(b'"') not in (b"US-ASCII", b"UTF-8"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
            return
        try:
            nodes = search.parse(line)
        except search.SearchError as exc:
            self.sendBadResponse(tag, str(exc).encode())
            return
        known, current = view.known, folder.state
        candidates = [search.Candidate(i + 1, u, current.flags_of(u) if u in current.position else known.flags[i],
                                       u in view.recent) for i, u in enumerate(known.uids)]
        d = self._run(search.run, nodes, candidates, folder.read, folder.meta)
        d.addCallback(self._searched, tag, bool(uid))
        d.addErrback(self._fail, tag)

    select_SEARCH = (do_SEARCH, IMAP4Server.opt_charset, IMAP4Server.arg_line)

    def _searched(self, found: list, tag: bytes, by_uid: bool) -> None:
        numbers = b" ".join(b"%d" % (c.uid if by_uid else c.seq) for c in found)
        self.sendUntaggedResponse(b"SEARCH" + (b" " + numbers if numbers else b""))
        self.sendPositiveResponse(tag, b"SEARCH completed")

    def do_EXPUNGE(self, tag: bytes, ranges: list | None = None) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None
        if view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        current = folder.state
        allowed = None if ranges is None else {u for _, u in view.resolve(ranges, True)}
        doomed = [u for u, flags in zip(current.uids, current.flags)
                  if "\\Deleted" in flags and (allowed is None or u in allowed)]
        d = self._run(folder.expunge, doomed)
        d.addCallback(lambda snapshot: self._send_updates((snapshot, frozenset())))
        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, b"EXPUNGE completed"), self._fail,
                       errbackArgs=(tag,))

    select_EXPUNGE = (do_EXPUNGE,)

    def do_COPY(self, tag: bytes, ranges: list, name: bytes, uid: int = 0, move: bool = False) -> None:
        view, folder = self.view, self.folder
        assert view is not None and folder is not None and self.account is not None
        if move and view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
            return
        try:
            items = view.resolve(ranges, bool(uid))
            target_name = self._name(name)
        except (SequenceError, MailboxError) as exc:
            self._fail(Failure(exc), tag)
            return
        account = self.account
        source_state = folder.state

        def copy() -> tuple[int, list[int], list[int]]:
            if not account.exists(target_name):
                raise MailboxError("Mailbox does not exist", "TRYCREATE")
            target = account.folder(target_name)
            uids = [u for _, u in items if u in source_state.position]
            metas = folder.meta(uids)
            copied, new = [], []
            for u in uids:
                try:
                    data = folder.read(u)
                except (KeyError, FileNotFoundError):
                    continue
                flags = source_state.flags_of(u) - ({"\\Deleted"} if move else set())
                new.append(target.append(data, frozenset(flags), metas[u].internaldate if u in metas else None))
                copied.append(u)
            if move and copied:
                folder.expunge(copied)
            return target.state.uidvalidity, copied, new

        d = self._run(copy)
        d.addCallback(self._copied, tag, move)
        d.addErrback(self._fail, tag)

    select_COPY = (do_COPY, arg_seqset, arg_finalastring)

    def _copied(self, result: tuple[int, list[int], list[int]], tag: bytes, move: bool) -> None:
        validity, copied, new = result
        code = b""
        if copied:
            code = b"[COPYUID %d %b %b] " % (validity, _uid_set(copied), _uid_set(new))
        if move:
            if code:
                self.sendUntaggedResponse(b"OK " + code.strip())
            assert self.folder is not None
            self._send_updates((self.folder.state, frozenset()))
            self.sendPositiveResponse(tag, b"MOVE completed")
        else:
            self._after_change()
            self.sendPositiveResponse(tag, code + b"COPY completed")

    def do_MOVE(self, tag: bytes, ranges: list, name: bytes, uid: int = 0) -> None:
        self.do_COPY(tag, ranges, name, uid, move=True)

    select_MOVE = (do_MOVE, arg_seqset, arg_finalastring)

    def do_UID(self, tag: bytes, command: bytes, line: bytes) -> None:
        command = command.upper()
        if command == b"EXPUNGE":
            ranges, rest = self.arg_seqset(line)
            if rest.strip():
                raise IllegalClientResponse("Too many arguments")
            self.do_EXPUNGE(tag, ranges)
            return
        if command not in (b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE"):
            raise IllegalClientResponse("Unknown UID command")
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, IMAP4Server.arg_atom, IMAP4Server.arg_line)

    # ---- the end -------------------------------------------------------------------------------------
    def do_LOGOUT(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"BYE Logging out")
        self.sendPositiveResponse(tag, b"LOGOUT completed")
        self.transport.loseConnection()

    unauth_LOGOUT = auth_LOGOUT = select_LOGOUT = (do_LOGOUT,)


def _has_section(part: Any) -> bool:
    return bool(part.empty or part.header is not None or part.text is not None or part.mime is not None)


def _read_batch(folder: Folder, uids: list[int]) -> list[bytes | None]:
    """Blocking: read the first few of `uids` for FETCH, stopping once FETCH_BATCH_BYTES are in memory."""
    out: list[bytes | None] = []
    total = 0
    for uid in uids:
        try:
            data: bytes | None = folder.read(uid)
        except (KeyError, FileNotFoundError):
            data = None
        out.append(data)
        total += len(data or b"")
        if total >= FETCH_BATCH_BYTES:
            break
    return out


def _body_item(part: Any, raw: bytes) -> bytes:
    """One of RFC822, RFC822.HEADER, RFC822.TEXT, BODY, BODY[section]<partial>."""
    if part.type == "rfc822":
        return b"RFC822 " + _literal(raw)
    if part.type == "rfc822header":
        return b"RFC822.HEADER " + _literal(mime.split_head(raw)[0])
    if part.type == "rfc822text":
        return b"RFC822.TEXT " + _literal(mime.split_head(raw)[1])
    if not _has_section(part):
        return b"BODY " + mime.bodystructure(mime.parse(raw), extended=False)
    numbers = tuple(p + 1 for p in part.part)
    fields: list[bytes] | None = None
    negate = False
    if part.header is not None:
        fields = list(part.header.fields or [])
        negate = bool(part.header.negate)
        kind = "HEADER.FIELDS" if fields else "HEADER"
    elif part.text is not None:
        kind = "TEXT"
    elif part.mime is not None:
        kind = "MIME"
    else:
        kind = ""
    label = b".".join(b"%d" % n for n in numbers)
    if kind:
        label += (b"." if label else b"") + kind.encode()
        if fields:
            label += (b".NOT" if negate else b"") + b" (" + b" ".join(fields) + b")"
    try:
        data: bytes | None = mime.section(raw, numbers, kind, fields, negate)
    except mime.SectionError:
        data = None
    origin = b""
    if part.partialBegin is not None and data is not None:
        origin = b"<%d>" % part.partialBegin
        data = data[part.partialBegin:part.partialBegin + part.partialLength]
    return b"BODY[%b]%b %b" % (label, origin, b"NIL" if data is None else _literal(data))


def _uid_set(uids: list[int]) -> bytes:
    """1,2,3,5 -> `1:3,5` (RFC 4315 uid-set)."""
    parts, start, prev = [], None, None
    for uid in uids:
        if start is None:
            start = prev = uid
        elif uid == prev + 1:
            prev = uid
        else:
            parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = uid
    if start is not None:
        parts.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(parts)


class IMAPFactory(ServerFactory):
    """Shared parts of every IMAP connection on one listener."""

    protocol = IMAPServer

    def __init__(self, *, login: Login, hostname: str, tls: Any, tls_settings: Any, implicit_tls: bool,
                 reactor: Any, pool: Any, max_message_size: int = 26214400,
                 watcher: FolderWatcher | None = None):
        self.login = login
        self.hostname = hostname
        self.tls = tls
        self.tls_settings = tls_settings
        self.implicit_tls = implicit_tls
        self.reactor = reactor
        self.pool = pool
        self.max_message_size = max_message_size
        self.service = "imaps" if implicit_tls else "imap"
        self.watcher = watcher or FolderWatcher(reactor, pool)
