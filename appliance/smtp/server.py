"""The ESMTP server protocol shared by the MX and submission listeners.

Built on twisted.mail.smtp.ESMTP (command lookup, reply formatting, timeouts) with what the
stock class lacks on the open Internet:
- commands are handled strictly one after another, even when the client pipelines and a
  check is asynchronous (stock Twisted answers out of order when validation is deferred);
- DATA is read in bulk: one scan per chunk finds <CRLF>.<CRLF> and notes whether any line
  starts with a dot; dots are unstuffed with one replace, only then, instead of a Python call
  per line (the ingest hot path; `find_end` and `unstuff` below);
- a transfer in progress is spooled to an unlinked file once large, within one memory budget
  for all transfers of the process (smtp/dataspool.py says what that bounds and what not);
- only <CRLF>.<CRLF> ends DATA; bare LF / bare CR are normalised (SMTP smuggling);
- plaintext pipelined after STARTTLS is discarded (CVE-2011-0411);
- AUTH is offered and accepted only under TLS (or from plaintext_auth_networks);
- SIZE, recipient, line-length and error limits, each with its RFC reply.

What a listener accepts (MX: local recipients; submission: AUTH required, own senders) is a
`Policy` (smtp/policy.py); what happens to an accepted message is the `Intake` (intake.py).
"""
from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable

from twisted.cred.credentials import CramMD5Credentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, interfaces, tcp
from twisted.internet.task import deferLater
from twisted.internet.protocol import ServerFactory
from twisted.mail.smtp import ESMTP
from twisted.python.failure import Failure

from appliance import address, connlimit, lineends, maillog, replies
from appliance.filters.base import Facts, Stage
from appliance.smtp.dataspool import DataBuffer, DataSpool
from appliance.tls import log_failure, log_once, session_info
from appliance.transport import DirectWriter, no_delay, plain_tcp
from appliance.errors import DirectoryUnavailable, QueueWriteError
from appliance.intake import Arrival
from appliance.interfaces import IMailUser
from appliance.realm import LoggedIn
from appliance.replies import Reply, SMTPReplyError

if TYPE_CHECKING:
    from appliance.intake import Intake
    from appliance.smtp.policy import Policy

MAX_LINE = 2048              # command line limit (RFC 5321 4.5.3.1.4 says 512; extensions need more)
MAX_PENDING_INPUT = 1 << 20  # pause reading when this much pipelined input waits
DATA_READ_SIZE = 1 << 18     # bytes per read during DATA (Twisted reads 64 KiB): fewer trips per message
_END = b"\r\n.\r\n"
_DOT_LINE = re.compile(rb"\r\n\.")      # a line that starts with a dot (sre's literal-prefix scan: fast)
_MAIL_PATH = re.compile(rb"^\s*(?P<path><[^<>]*>|[^\s<>]+)(?P<params>(?:\s+\S+)*)\s*$")


class Session:
    """Per-transaction state; RSET, HELO and STARTTLS start a new one."""

    def __init__(self) -> None:
        self.sender: str | None = None
        self.recipients: list[Any] = []       # envelope.Recipient
        self.rcpt_addresses: set[str] = set()
        self.given: list[str] = []            # the RCPT addresses accepted, in order, as the client named them


class ApplianceSMTP(ESMTP):
    """One SMTP connection. The factory supplies policy, intake, TLS and limits."""

    factory: "SMTPFactory"

    def __init__(self) -> None:
        super().__init__(contextFactory=None)
        self._input = b""
        self._busy = False
        self._paused = False
        self._discarding = False
        self._drop_input = False
        self._in_data = False
        self._data: DataBuffer | None = None   # the transfer in progress, without its last bytes...
        self._data_tail = b""                  # ...kept here (up to 4) for the <CRLF>.<CRLF> scan
        self._data_dotted = False              # a line of it starts with a dot: unstuff must look
        self._data_too_big = False
        self._errors = 0
        self._sasl: _SASLExchange | None = None
        self.helo: str | None = None
        self.esmtp = False
        self.secure = False
        self.user = None                      # interfaces.UserRecord after AUTH
        self._login_pending: defer.Deferred | None = None
        self.session = Session()
        self.peer = ""
        self.sid = maillog.session_id()       # the session id on every log line of this connection
        self.facts: Facts | None = None       # what the checks learn (appliance/filters)
        self._greeting = False                # the banner is still being sent (pregreet detection)
        self._refusal: SMTPReplyError | None = None   # a connect-stage refusal, answered at MAIL
        self._gone = False                    # the client hung up (connectionLost ran)
        self._batch: list[bytes] | None = None  # replies to the chunk of input being processed
        self._writer: DirectWriter | None = None
        self._answering_now = False           # _wait_for is adding its callback (see there)
        self._tcp: tcp.Connection | None = None  # plain_tcp(transport), until STARTTLS

    # ---- connection life cycle -------------------------------------------------------
    def connectionMade(self) -> None:
        f = self.factory
        if f.clock is not None:
            self.callLater = f.clock.callLater          # idle timeouts on the factory's clock
        self.host = f.hostname.encode("ascii")
        self.ctx = f.tls if (f.tls is not None and f.tls.available) else None
        self.canStartTLS = self.ctx is not None and interfaces.ITLSTransport.providedBy(self.transport)
        self.secure = f.implicit_tls
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        no_delay(self.transport)
        self._writer = DirectWriter(self.transport)
        self._tcp = plain_tcp(self.transport)
        maillog.connect(f.policy.name, self.peer, session=self.sid)
        # Connection limits are counted before we get here (appliance.connlimit, for every listener).
        self.facts = Facts(session=self.sid, service=f.policy.name, peer=self.peer, mx=not f.policy.offers_auth,
                           trusted=f.policy.insider(self))
        self._idle_timer()
        if f.checks and self.facts.inbound:
            self._wait_for(defer.ensureDeferred(self._checked_greeting()))
        else:
            self.sendLine(self._banner(" "))

    def _banner(self, separator: str) -> bytes:
        return f"220{separator}{self.factory.hostname} ESMTP mailappliance".encode()

    async def _checked_greeting(self) -> None:
        """The connect-stage checks, then the banner; pregreet detection while it is being sent.

        With pregreet on, the banner is two lines: the first at once, the last after the checks
        and (for a doubtful client, or for all with `pregreet = all`) a pause. A client that
        talks before the last line is a bot that does not wait for its turn (postscreen's
        pregreet test): refused 554 5.5.1. A connect-stage refusal (a DNSBL listing) is answered
        at MAIL, so the log shows whom the client meant to write to.
        """
        f, facts = self.factory, self.facts
        assert facts is not None
        mode = f.checks_settings.pregreet if f.checks_settings is not None else "off"
        self._greeting = mode != "off"
        if self._greeting:
            self.sendLine(self._banner("-"))
        try:
            await f.checks.run(Stage.CONNECT, facts)
        except SMTPReplyError as refusal:
            self._refusal = refusal
        if self._greeting and (mode == "all" or facts.doubtful) and f.checks_settings.pregreet_wait:
            await deferLater(f.clock or _reactor(), f.checks_settings.pregreet_wait, lambda: None)
        if self.transport.disconnecting or self._gone:
            return                          # no banner and no idle timer for a client that hung up
        self._greeting = False
        self.sendLine(self._banner(" "))
        self._idle_timer()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._gone = True
        self.setTimeout(None)
        if self._login_pending is not None:
            self._login_pending.cancel()        # a login held back by the throttle: nobody to answer
        log_failure(self, self.factory.policy.name, reason)
        maillog.disconnect(self.factory.policy.name, self.peer, session=self.sid)
        self._drop_data()
        self._input = b""

    def _idle_timer(self) -> None:
        """Silence allowed before the next command: short until the client is known, then RFC 5321's.

        "Known" is a greeting on the MX, a login on submission. A connection that says nothing (or
        only EHLO on submission) holds a descriptor for idle_timeout_prelogin seconds, not 5 minutes.
        """
        limits = self.factory.limits
        known = self.user is not None or (self.helo is not None and not self.factory.policy.offers_auth)
        self.timeout = limits.command_timeout if known else min(limits.idle_timeout_prelogin, limits.command_timeout)
        self.setTimeout(self.timeout)

    def timeoutConnection(self) -> None:
        self._reply(replies.TIMEOUT)
        self._hang_up()

    # ---- input: one command at a time --------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._greeting:
            return self._pregreet(data)
        self.resetTimeout()
        self._input += data
        if not self._busy:
            self._process_batched()
        self._flow_control()

    def _pregreet(self, data: bytes) -> None:
        """The client spoke before the banner ended: a bot (postscreen's pregreet test)."""
        self._greeting = False
        first = data.split(b"\n", 1)[0][:40].decode("ascii", "replace").strip()
        maillog.emit("check", session=self.sid, check="pregreet", stage="connect", verdict="reject",
                     peer=self.peer, reason=f"talked before the banner ended: {first!r}",
                     reply=replies.PREGREET.line().decode())
        self._reply(replies.PREGREET)
        self._hang_up()

    def _process_batched(self) -> None:
        """Run the complete commands received, their replies sent with one write at the end.

        A client that pipelines (RFC 2920) gets the replies to one chunk of commands in one
        segment, with one send() instead of one per reply; a client that waits for each reply
        sends one command per chunk and so still gets each reply at once.
        """
        if self._batch is None:
            self._batch = []
        try:
            self._process()
        finally:
            self._flush_replies()

    def _process(self) -> None:
        """Run every complete command in the input, stopping while one waits on a Deferred.

        Works on an offset into one buffer so a megabyte of pipelined commands costs one copy,
        not one per line.
        """
        buf, pos, self._input = self._input, 0, b""
        while pos < len(buf) and not self._busy and not self.transport.disconnecting:
            if self._in_data:
                pos = self._take_data(buf, pos)
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE:
                    pos, self._discarding = len(buf), True
                    self._reply_error(replies.LINE_TOO_LONG)
                break
            line, pos = buf[pos:end], end + 1
            if self._discarding:          # the tail of an overlong line
                self._discarding = False
                continue
            if len(line) > MAX_LINE:
                self._reply_error(replies.LINE_TOO_LONG)
                continue
            self._run(line.rstrip(b"\r"))
            if self._drop_input:
                self._drop_input, pos = False, len(buf)
        self._input = buf[pos:] + self._input

    def _flow_control(self) -> None:
        """Stop reading from a client that pipelines faster than we answer; memory stays bounded."""
        want_pause = self._busy and len(self._input) > MAX_PENDING_INPUT
        if want_pause != self._paused and not self.transport.disconnecting:
            self._paused = want_pause
            (self.transport.pauseProducing if want_pause else self.transport.resumeProducing)()

    def _run(self, line: bytes) -> None:
        """Dispatch one line (a command, or a step of an AUTH exchange)."""
        try:
            result = self._sasl_step(line) if self._sasl is not None else self._command(line)
        except Exception:
            maillog.log.failure("SMTP command failed session={session}", peer=self.peer, session=self.sid)
            result = self._reply_error(replies.LOCAL_ERROR)
        self._wait_for(result)

    def _wait_for(self, result: Any) -> None:
        """Hold later input until a pending answer is sent, so replies stay in order.

        One callback per answer (the ingest's hot path: the 250 after the queue's commit);
        `_answering_now` tells it whether it ran at once, inside addBoth, or later.
        """
        if not isinstance(result, defer.Deferred):
            return
        self._busy = self._answering_now = True
        result.addBoth(self._answered)
        self._answering_now = False

    def _answered(self, outcome: object) -> None:
        """The pending answer is out (in the batch); when it came later, run what waited for it."""
        if isinstance(outcome, Failure):
            self._unexpected(outcome)
        if self._answering_now:           # answered at once: _process's loop carries on
            self._busy = self._answering_now = False
            return
        self._resume(None)

    def _resume(self, _: object) -> None:
        """Run the commands that waited for the pending answer."""
        self._busy = False
        if self.transport.disconnecting:
            self._flush_replies()
            return
        self._process_batched()
        self._flow_control()

    def _unexpected(self, failure: Failure) -> None:
        maillog.log.failure("SMTP command failed session={session}", failure, peer=self.peer, session=self.sid)
        self._reply_error(replies.LOCAL_ERROR)

    def _command(self, line: bytes) -> Any:
        if b"\0" in line:
            return self._reply_error(replies.BAD_BYTES)
        verb, _, rest = line.strip().partition(b" ")
        if not verb:
            return self._reply_error(replies.BAD_COMMAND)
        try:
            method = self.lookupMethod(verb)
        except UnicodeDecodeError:
            method = None
        if method is None or not verb.isalpha():
            return self._reply_error(replies.BAD_COMMAND)
        return method(rest.strip())

    # ---- replies ------------------------------------------------------------------------
    def sendLine(self, line: bytes) -> None:
        """Every reply goes out here (the base class's too): batched while input is processed."""
        self._send(line + b"\r\n")

    def _send(self, data: bytes) -> None:
        if self._batch is None and self._busy:
            # The answer a command waited for (the 250 after the queue's fsync): _resume, the
            # Deferred's last callback, sends it together with the replies to what waited.
            self._batch = []
        if self._batch is not None:
            self._batch.append(data)
        elif self._writer is not None:
            self._writer.write(data)
        else:
            self.transport.write(data)

    def _flush_replies(self, keep_batching: bool = False) -> None:
        """Send the batched replies with one write (before a hang-up, STARTTLS, or at the chunk's end)."""
        batch, self._batch = self._batch, ([] if keep_batching and self._batch is not None else None)
        if batch:
            data = b"".join(batch)
            if self._writer is not None:
                self._writer.write(data)
            else:
                self.transport.write(data)

    def _hang_up(self) -> None:
        """Close after the replies written so far."""
        self._flush_replies()
        self.transport.loseConnection()

    def _reply(self, reply: Reply, detail: str = "") -> None:
        self.sendLine(reply.line(detail))

    def _reply_error(self, reply: Reply, detail: str = "") -> None:
        """Answer with an error and close after too many: bots probing us get 421."""
        self._reply(reply, detail)
        self._errors += 1
        if self._errors >= self.factory.limits.max_errors:
            self._reply(replies.TOO_MANY_ERRORS)
            self._hang_up()

    def _fail(self, failure: Failure, stage: str, **log_fields: str) -> Any:
        """Turn a policy failure into its reply and a log line; unknown recipients wait, after a few."""
        if failure.check(SMTPReplyError):
            reply, detail = failure.value.reply, failure.value.detail
        elif failure.check(DirectoryUnavailable):
            maillog.error("directory-unavailable", session=self.sid, service=self.factory.policy.name,
                          reason=failure.getErrorMessage())
            reply, detail = replies.DIRECTORY_UNAVAILABLE, ""
        else:
            maillog.log.failure("SMTP {stage} failed session={session}", failure, stage=stage, session=self.sid)
            reply, detail = replies.LOCAL_ERROR, ""
        maillog.rejected(self.factory.policy.name, self.peer, stage, reply.line(detail).decode(), session=self.sid,
                         **log_fields)
        delay = self._bad_recipient_delay(stage, reply)
        if delay:
            return deferLater(self.factory.clock or _reactor(), delay, self._reply_error, reply, detail)
        self._reply_error(reply, detail)
        return None

    def _bad_recipient_delay(self, stage: str, reply: Reply) -> float:
        """Seconds before answering one more unknown recipient: 1, 2, 4 ... up to 30 once a client
        has tried `bad_recipients_before_delay` of them (a directory harvest slows to a crawl;
        [limits] max_errors still closes the session)."""
        settings, facts = self.factory.checks_settings, self.facts
        if stage != "RCPT" or reply.enhanced != "5.1.1" or settings is None or facts is None:
            return 0.0
        facts.bad_recipients += 1
        over = facts.bad_recipients - settings.bad_recipients_before_delay
        if settings.bad_recipients_before_delay == 0 or over <= 0 or facts.trusted:
            return 0.0
        return float(min(30, 2 ** (over - 1)))

    # ---- greeting commands ----------------------------------------------------------------
    def do_HELO(self, rest: bytes) -> Any:
        return self._greet(rest, esmtp=False)

    def do_EHLO(self, rest: bytes) -> Any:
        return self._greet(rest, esmtp=True)

    def _greet(self, rest: bytes, esmtp: bool) -> Any:
        if not rest:
            return self._reply_error(replies.SYNTAX.with_text("HELO/EHLO requires a domain or address literal"))
        helo = rest.decode("ascii", "replace")[:255]
        checks, facts = self.factory.checks, self.facts
        if checks and facts is not None:
            facts.helo = helo
            d = checks.run(Stage.HELO, facts)
            d.addCallbacks(lambda _: self._greeted(helo, esmtp), self._fail, errbackArgs=("HELO",))
            return d
        self._greeted(helo, esmtp)
        return None

    def _greeted(self, helo: str, esmtp: bool) -> None:
        self.helo = helo
        self.esmtp = esmtp
        self.session = Session()
        self._idle_timer()
        head = f"250-{self.factory.hostname}" if esmtp else f"250 {self.factory.hostname}"
        if not esmtp:
            self.sendLine(head.encode())
            return
        extensions = self._extensions()
        lines = [head] + [f"250-{ext}" for ext in extensions[:-1]] + [f"250 {extensions[-1]}"]
        self._send(b"".join(line.encode() + b"\r\n" for line in lines))

    def _extensions(self) -> list[str]:
        ext = ["PIPELINING", f"SIZE {self.factory.limits.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.canStartTLS and not self.secure:
            ext.append("STARTTLS")
        mechanisms = self._mechanisms()
        if mechanisms and self.user is None:
            ext.append("AUTH " + " ".join(mechanisms))
        return ext

    def _mechanisms(self) -> list[str]:
        """AUTH is offered only where the policy wants it and the channel is safe for passwords."""
        if not self.factory.policy.offers_auth or not self._may_send_password():
            return []
        mechanisms = ["PLAIN", "LOGIN"]
        if self.factory.directory.supports_shared_secrets:
            mechanisms.append("CRAM-MD5")
        return mechanisms

    def _may_send_password(self) -> bool:
        return self.secure or address.in_networks(self.peer, self.factory.tls_settings.plaintext_auth_networks)

    def do_NOOP(self, rest: bytes) -> None:
        self._reply(replies.OK)

    def do_HELP(self, rest: bytes) -> None:
        self._reply(replies.HELP)

    def do_VRFY(self, rest: bytes) -> None:
        self._reply(replies.VRFY_NEVER)

    def do_EXPN(self, rest: bytes) -> None:
        self._reply_error(replies.EXPN_REFUSED)

    def do_RSET(self, rest: bytes) -> None:
        self.session = Session()
        self._reply(replies.RESET_OK)

    def do_QUIT(self, rest: bytes) -> None:
        self._reply(replies.BYE)
        self._hang_up()

    def ext_STARTTLS(self, rest: bytes) -> None:
        if self.secure:
            return self._reply_error(replies.TLS_ALREADY)
        if not self.canStartTLS:
            return self._reply_error(replies.TLS_UNAVAILABLE)
        self._reply(replies.START_TLS)
        self._drop_input = True       # CVE-2011-0411: nothing sent in plaintext survives the handshake
        self._flush_replies(keep_batching=True)    # the 220 goes out in plaintext, before the handshake
        self.transport.startTLS(self.ctx)
        self._tcp = None                       # the TLS layer cuts the chunks from now on
        self.secure = True
        # RFC 3207 4.2: discard all knowledge obtained from the client before TLS, the login
        # included (AUTH from a plaintext_auth_network must not carry over into the TLS session).
        self.helo, self.esmtp, self.session = None, False, Session()
        self.user, self._sasl = None, None
        if self.facts is not None:
            self.facts.helo, self.facts.login = "", ""
            self.facts.trusted = self.factory.policy.insider(self)
        self._idle_timer()
        self._tls_logged = False

    def lookupMethod(self, command: bytes) -> Callable[[bytes], Any] | None:
        log_once(self, self.factory.policy.name)
        return super().lookupMethod(command)

    # ---- AUTH (RFC 4954) -------------------------------------------------------------------
    def ext_AUTH(self, rest: bytes) -> Any:
        if self.user is not None:
            return self._reply_error(replies.ALREADY_AUTHENTICATED)
        if not self.factory.policy.offers_auth:
            return self._reply_error(replies.NOT_IMPLEMENTED)
        if not self._may_send_password():
            return self._reply_error(replies.TLS_REQUIRED)
        if self.helo is None:
            return self._reply_error(replies.NEED_HELO)
        if self.session.sender is not None:
            return self._reply_error(replies.BAD_SEQUENCE)
        mechanism, _, initial = rest.partition(b" ")
        name = mechanism.decode("ascii", "replace").upper()
        if name not in self._mechanisms():
            return self._reply_error(replies.UNKNOWN_MECHANISM)
        self._sasl = _SASLExchange(name, self.factory.hostname)
        if initial:
            return self._sasl_step(initial.strip())
        return self._sasl_challenge()

    def _sasl_challenge(self) -> None:
        assert self._sasl is not None
        self.sendLine(b"334 " + base64.b64encode(self._sasl.challenge()))

    def _sasl_step(self, line: bytes) -> Any:
        exchange = self._sasl
        assert exchange is not None
        if line == b"*":
            self._sasl = None
            return self._reply_error(replies.AUTH_ABORTED)
        try:
            decoded = base64.b64decode(line, validate=True) if line != b"=" else b""
        except (binascii.Error, ValueError):
            self._sasl = None
            return self._reply_error(replies.BAD_BASE64)
        try:
            credentials = exchange.respond(decoded)
        except ValueError:
            self._sasl = None
            return self._reply_error(replies.BAD_BASE64)
        if credentials is None:
            return self._sasl_challenge()
        self._sasl = None
        return self._check_credentials(exchange.mechanism, credentials)

    def _check_credentials(self, mechanism: str, credentials: Any) -> defer.Deferred:
        """Through the one login path (appliance.realm); later commands wait for the answer."""
        login = credentials.username.decode("utf-8", "replace") if isinstance(credentials.username, bytes) \
            else str(credentials.username)
        d = self.factory.login.attempt(credentials, IMailUser, service=self.factory.policy.name, peer=self.peer,
                                       login=login, mechanism=mechanism, session=self.sid)
        self._login_pending = d
        d.addCallbacks(self._auth_ok, self._auth_failed)
        return d

    def _auth_ok(self, logged_in: LoggedIn) -> None:
        self._login_pending = None
        self.user = logged_in.user
        if self.facts is not None:
            self.facts.login, self.facts.trusted = self.user.address, True
        self._idle_timer()
        self._reply(replies.AUTH_OK)

    def _auth_failed(self, failure: Failure) -> None:
        self._login_pending = None
        if failure.check(defer.CancelledError):
            return None
        if failure.check(UnauthorizedLogin):
            return self._reply_error(replies.AUTH_FAILED)
        return self._reply(replies.AUTH_TEMPORARY)

    # ---- mail transaction ---------------------------------------------------------------------
    def do_MAIL(self, rest: bytes) -> Any:
        if self.helo is None:
            return self._reply_error(replies.NEED_HELO)
        if self.session.sender is not None:
            return self._reply_error(replies.NESTED_MAIL)
        parsed = _parse_path(rest, b"FROM:")
        if parsed is None:
            return self._reply_error(replies.SYNTAX)
        path, params = parsed
        sender = _mailbox(path, null_ok=True)
        if sender is None:
            return self._reply_error(replies.BAD_SENDER_SYNTAX)
        problem = self._mail_params(params)
        if problem is not None:
            return self._reply_error(*problem)
        if not self.factory.checks:         # no mail-stage checks: no Deferred unless the policy needs one
            try:
                answer = self.factory.policy.check_sender(self, sender)
            except Exception:
                return self._fail(Failure(), "MAIL", sender=sender)
            if not isinstance(answer, defer.Deferred):
                return self._sender_ok(answer, sender)
            d = answer
        else:
            d = defer.maybeDeferred(self.factory.policy.check_sender, self, sender)
        d.addCallback(self._check_sender, sender)
        d.addCallbacks(self._sender_ok, self._fail, callbackArgs=(sender,), errbackArgs=("MAIL",),
                       errbackKeywords={"sender": sender})
        return d

    def _check_sender(self, _: object, sender: str) -> Any:
        """The mail-stage checks (SPF, rates, hooks); a connect-stage refusal is answered here."""
        checks, facts = self.factory.checks, self.facts
        if not checks or facts is None:
            return None
        if self._refusal is not None:
            raise self._refusal
        facts.new_transaction(sender)
        return checks.run(Stage.MAIL, facts)

    def _mail_params(self, params: dict[str, str]) -> tuple[Reply, str] | None:
        self.declared_size = 0            # MAIL's SIZE= (RFC 1870), for the quota check at RCPT
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit():
                    return replies.SYNTAX, "bad SIZE"
                if int(value) > self.factory.limits.max_message_size:
                    return replies.MESSAGE_TOO_BIG, ""
                self.declared_size = int(value)
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return replies.UNKNOWN_PARAMETER, f"BODY={value}"
            elif key == "AUTH":
                continue  # RFC 4954 5: accepted, and not trusted
            else:
                return replies.UNKNOWN_PARAMETER, key
        return None

    def _sender_ok(self, _: object, sender: str) -> None:
        self.session.sender = sender
        self._reply(replies.SENDER_OK)

    def do_RCPT(self, rest: bytes) -> Any:
        if self.session.sender is None:
            return self._reply_error(replies.NEED_MAIL)
        parsed = _parse_path(rest, b"TO:")
        if parsed is None:
            return self._reply_error(replies.SYNTAX)
        path, params = parsed
        if params:
            return self._reply_error(replies.UNKNOWN_PARAMETER, next(iter(params)))
        rcpt = _mailbox(path, null_ok=False, default_domain=self.factory.domains[0])
        if rcpt is None:
            return self._reply_error(replies.BAD_RECIPIENT_SYNTAX)
        if len(self.session.rcpt_addresses) >= self.factory.limits.max_recipients:
            return self._reply(replies.TOO_MANY_RECIPIENTS)
        if not self.factory.checks:   # no rcpt-stage checks: answer at once when the policy's answer is known
            try:
                answer = self.factory.policy.check_recipient(self, rcpt)
            except Exception:
                return self._fail(Failure(), "RCPT", sender=self.session.sender, rcpt=rcpt)
            known = fired(answer) if isinstance(answer, defer.Deferred) else answer
            if isinstance(known, Failure):
                return self._fail(known, "RCPT", sender=self.session.sender, rcpt=rcpt)
            if known is not PENDING:
                return self._recipient_ok(known, rcpt)
            d = answer
        else:
            d = defer.maybeDeferred(self.factory.policy.check_recipient, self, rcpt)
        d.addCallback(self._check_recipient, rcpt)
        d.addCallbacks(self._recipient_ok, self._fail, callbackArgs=(rcpt,), errbackArgs=("RCPT",),
                       errbackKeywords={"sender": self.session.sender, "rcpt": rcpt})
        return d

    def _check_recipient(self, recipients: list[Any], rcpt: str) -> Any:
        """The rcpt-stage checks (rates, greylisting, hooks) for a recipient the policy accepted."""
        checks, facts = self.factory.checks, self.facts
        if not checks or facts is None:
            return recipients
        facts.txn.rcpt = rcpt
        d = checks.run(Stage.RCPT, facts)
        d.addCallback(lambda _: recipients)
        return d

    def _recipient_ok(self, recipients: list[Any], rcpt: str) -> None:
        if self.facts is not None and rcpt not in self.facts.txn.recipients:
            self.facts.txn.recipients.append(rcpt)
        if rcpt not in self.session.rcpt_addresses:
            self.session.rcpt_addresses.add(rcpt)
            self.session.given.append(rcpt)
            known = {r.address for r in self.session.recipients}
            for r in recipients:
                if r.address not in known:
                    known.add(r.address)
                    self.session.recipients.append(r)
        self._reply(replies.RECIPIENT_OK)

    def do_DATA(self, rest: bytes) -> None:
        if self.session.sender is None:
            return self._reply_error(replies.NEED_MAIL)
        if not self.session.rcpt_addresses:
            return self._reply_error(replies.NEED_RCPT)
        self._reply(replies.START_DATA)
        self._in_data = True
        self._drop_data()
        self._data = self.factory.data_spool.buffer()
        self._data_tail = b"\r\n"   # so a leading ".\r\n" or "..": look like any other line
        self._data_dotted = False
        self._read_size(DATA_READ_SIZE)
        self._data_too_big = False
        self.setTimeout(self.factory.limits.data_timeout)

    def do_BDAT(self, rest: bytes) -> None:
        self._reply_error(replies.NOT_IMPLEMENTED)

    # ---- DATA in bulk -------------------------------------------------------------------------
    def _take_data(self, buf: bytes, pos: int) -> int:
        """Add input to the message, find <CRLF>.<CRLF> with one scan; return the new offset.

        The message goes to a DataBuffer (memory while small, an unlinked file once large); its
        last 4 bytes stay in `_data_tail` until more arrives, so a terminator split between two
        chunks is still found, and nothing after it is ever written to the buffer.
        """
        data = self._data
        assert data is not None
        tail = self._data_tail
        joined = tail + buf[pos:]
        end, self._data_dotted = find_end(joined, self._data_dotted)
        if end < 0:
            data.write(memoryview(joined)[:-4])
            self._data_tail = joined[-4:]
            if data.size > self.factory.limits.max_message_size + 1024 and not data.discarded:
                # Keep reading to the end of DATA, but stop storing (RFC 1870 6.3).
                self._data_too_big = True
                data.discard()
            return len(buf)
        consumed = end + len(_END) - len(tail)    # bytes of buf[pos:] that belonged to this message
        data.write(memoryview(joined)[:end + 2])  # keep the last line's CRLF
        self._data, self._data_tail = None, b""
        self._in_data = False
        self._read_size(None)
        self.setTimeout(self.timeout)
        self._wait_for(self._end_of_data(data))
        return pos + consumed

    def _read_size(self, size: int | None) -> None:
        """Read DATA in chunks of `size` (None: Twisted's 64 KiB again, for commands).

        Every read costs a trip through the reactor, Twisted's log context and our scan set-up;
        a 100 KiB message read in one or two reads instead of two or three saves that much. A
        chunk is scanned and written to the DataBuffer at once, and the reactor scans one at a
        time, so the process holds one such chunk outside the memory budget, not one per
        connection (smtp/dataspool.py). Plain TCP only: under TLS, its layer cuts the chunks.
        """
        conn = self._tcp
        if conn is not None and not conn.TLS:
            conn.bufferSize = size or tcp.Connection.bufferSize

    def _drop_data(self) -> None:
        """Close the transfer in progress, if any: its memory goes back to the budget, its file is closed."""
        if self._data is not None:
            self._data.close()
            self._data, self._data_tail = None, b""

    def _end_of_data(self, data: DataBuffer) -> Any:
        session, self.session = self.session, Session()
        if self._data_too_big or data.size - 2 > self.factory.limits.max_message_size:
            data.close()
            maillog.rejected(self.factory.policy.name, self.peer, "DATA", "552 5.3.4 too big", sender=session.sender,
                             session=self.sid)
            return self._reply_error(replies.MESSAGE_TOO_BIG)
        if data.error is not None:
            maillog.error("data-spool-failed", session=self.sid, service=self.factory.policy.name,
                          reason=str(data.error))
            maillog.rejected(self.factory.policy.name, self.peer, "DATA", "451 4.3.0 spool", sender=session.sender,
                             session=self.sid)
            return self._reply_error(replies.LOCAL_ERROR)
        body = unstuff(data.read(skip=2), self._data_dotted)   # drop our leading CRLF; read() closes the buffer
        if b"\0" in body:
            maillog.rejected(self.factory.policy.name, self.peer, "DATA", "554 5.6.0 NUL", sender=session.sender,
                             session=self.sid)
            return self._reply_error(replies.BAD_MESSAGE, "message contains NUL characters")
        arrival = self._arrival(session, body)
        d = self.factory.intake.accept(arrival)      # never raises: a failure comes in the Deferred
        d.addCallbacks(self._queued, self._not_queued, errbackArgs=(arrival.id, session.sender))
        return d

    def _arrival(self, session: Session, body: bytes) -> Arrival:
        """The message and what intake records about this session (envelope, Received, log)."""
        policy = self.factory.policy
        return Arrival(sender=session.sender or "", recipients=list(session.recipients), message=body,
                       service=policy.name, protocol=self.protocol_name, peer=self.peer, helo=self.helo or "",
                       tls=self.tls_description(), login=self.user.address if self.user is not None else "",
                       insider=policy.insider(self), submission=policy.submission, facts=self.facts,
                       session=self.sid, given=list(session.given))

    def _not_queued(self, failure: Failure, qid: str, sender: str | None) -> Any:
        """Refused by a check, or the queue could not make the message durable: 451 then, so
        the client keeps it and tries again."""
        if failure.check(QueueWriteError):
            maillog.log.failure("queue write failed id={qid}", failure, qid=qid)
            failure = Failure(SMTPReplyError(replies.LOCAL_ERROR))
        return self._fail(failure, "DATA", sender=sender)

    def _queued(self, qid: str) -> None:
        self._errors = 0      # as Postfix's smtpd_hard_error_limit: errors count "without delivering mail"
        self.sendLine(replies.QUEUED.line().rstrip() + b" " + qid.encode())

    # ---- facts the policy and the intake read ---------------------------------------------------
    @property
    def protocol_name(self) -> str:
        """RFC 3848 WITH values for Received: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.secure else "") + ("A" if self.user is not None else "")

    def tls_description(self) -> str:
        info = session_info(self.transport) if self.secure else None
        return f"version={info[0]} cipher={info[1]}" if info else ""


PENDING = object()     # fired(): the Deferred has no result yet


def fired(d: defer.Deferred) -> Any:
    """The result of a Deferred that has already fired (a Failure is handed over as handled), or PENDING.

    A directory lookup answered from memory comes as a Deferred that has fired already: its
    answer is sent in this turn without the callbacks, maybeDeferred and the wait for them
    (the way POP3 answers RETR at once when the read-ahead holds the message).
    """
    seen: list[Any] = []
    d.addBoth(lambda result: seen.append(result) or result)    # runs now only if d has fired; passes it on
    if not seen:
        return PENDING
    d.addBoth(lambda _: None)      # the caller owns the result now: no "Unhandled error" at GC
    return seen[0]


def find_end(joined: bytes, dotted: bool) -> tuple[int, bool]:
    """(where <CRLF>.<CRLF> starts in `joined`, or -1; whether a line seen so far starts with a dot).

    One C-speed scan per chunk. Until a dot-line is seen it looks for CRLF "." (which finds the
    end too), so a message without one needs no second scan for stuffing at its end; after one,
    for the end alone, so a client sending many dot-lines costs no Python step per line. A hit
    in the last four bytes that cannot be told yet stays undecided: the caller keeps those
    bytes and they are scanned again with the next chunk.
    """
    start = 0
    if not dotted:
        found = _DOT_LINE.search(joined)
        if found is None:
            return -1, False
        start = found.start()
        if joined.startswith(_END, start):
            return start, False
        if start + len(_END) > len(joined):
            return -1, False
        dotted = True
    return joined.find(_END, start), dotted


def unstuff(body: bytes, dotted: bool = True) -> bytes:
    """Undo dot-stuffing and normalise line ends to CRLF, in bulk.

    `body` ends with CRLF. `dotted`: a line may start with a dot (False when the scan of DATA saw
    none, so the search for stuffed lines is skipped). A bare LF or CR never ended DATA (only
    <CRLF>.<CRLF> does), and is turned into CRLF here so no later hop can read a second message
    into it.
    """
    if dotted and (body.startswith(b"..") or b"\r\n.." in body):   # most messages have no stuffed line: no copy
        body = (b"\r\n" + body).replace(b"\r\n..", b"\r\n.")[2:]
    return lineends.normalised(body)


def _parse_path(rest: bytes, keyword: bytes) -> tuple[str, dict[str, str]] | None:
    """Split `FROM:<path> PARAM=value ...` into the path text and upper-cased parameters."""
    if rest[: len(keyword)].upper() != keyword:
        return None
    match = _MAIL_PATH.match(rest[len(keyword):])
    if not match:
        return None
    try:
        path = match.group("path").decode("utf-8")
        params: dict[str, str] = {}
        for item in match.group("params").split():
            key, _, value = item.decode("ascii").partition("=")
            params[key.upper()] = value
    except UnicodeDecodeError:
        return None
    return path, params


def _mailbox(path: str, null_ok: bool, default_domain: str = "") -> str | None:
    """The address inside a reverse- or forward-path; "" for <>; None when malformed."""
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1]
    if ":" in path and path.startswith("@"):
        path = path.split(":", 1)[1]          # source route: ignored (RFC 5321 4.1.1.3)
    if path == "":
        return "" if null_ok else None
    if "@" not in path and path.lower() == "postmaster" and default_domain:
        path = f"postmaster@{default_domain}"  # RFC 5321 4.5.1
    if not address.is_valid(path):
        return None
    return address.normalise(path)


class _SASLExchange:
    """The server side of one SASL exchange: PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195)."""

    def __init__(self, mechanism: str, hostname: str) -> None:
        self.mechanism = mechanism
        self._username: bytes | None = None
        self._cram = None
        if mechanism == "CRAM-MD5":
            self._cram = CramMD5Credentials(hostname.encode())
            self._cram.challenge = f"<{secrets.randbelow(10**10)}.{int(time.time())}@{hostname}>".encode()

    def challenge(self) -> bytes:
        if self.mechanism == "LOGIN":
            return b"Password:" if self._username is not None else b"Username:"
        if self._cram is not None:
            return self._cram.challenge
        return b""

    def respond(self, data: bytes) -> Any:
        """Feed one client response; the credentials when complete, None to send another challenge."""
        if self.mechanism == "PLAIN":
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1] or (parts[0] and parts[0] != parts[1]):
                raise ValueError("bad PLAIN response")
            return UsernamePassword(parts[1], parts[2])
        if self.mechanism == "LOGIN":
            if self._username is None:
                if not data:
                    raise ValueError("empty LOGIN user name")    # as PLAIN refuses an empty authcid
                self._username = data
                return None
            return UsernamePassword(self._username, data)
        assert self._cram is not None
        self._cram.setResponse(data)
        if not self._cram.username:
            raise ValueError("bad CRAM-MD5 response")
        return self._cram


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


_DEFAULT_SPOOL = DataSpool()      # the system's temporary folder; tap.py passes one under state_dir


class SMTPFactory(ServerFactory):
    """Builds ApplianceSMTP connections for one listener (appliance.connlimit counts them)."""

    protocol = ApplianceSMTP
    noisy = False              # no "Starting factory" at info level: the `started` line says it
    # What appliance.connlimit answers a connection it refuses.
    refusals = {connlimit.PER_CLIENT: replies.TOO_MANY_CONNECTIONS.line(),
                connlimit.PER_SERVICE: replies.SERVER_BUSY.line(), connlimit.DESCRIPTORS: replies.SERVER_BUSY.line()}

    def __init__(self, *, policy: "Policy", intake: "Intake", directory: Any, login: Any,
                 hostname: str, domains: tuple[str, ...], limits: Any, tls: Any, tls_settings: Any,
                 implicit_tls: bool, clock: Any, unlimited_networks: tuple[Any, ...] = (),
                 data_spool: DataSpool | None = None, checks: Any = None, checks_settings: Any = None) -> None:
        self.policy = policy
        self.intake = intake
        self.directory = directory
        self.login = login
        self.hostname = hostname
        self.domains = domains
        self.limits = limits
        self.tls = tls
        self.tls_settings = tls_settings
        self.implicit_tls = implicit_tls
        self.clock = clock
        self.unlimited_networks = unlimited_networks
        self.data_spool = data_spool if data_spool is not None else _DEFAULT_SPOOL   # one per process
        self.checks = checks                      # filters.pipeline.Pipeline, or None: no checks
        self.checks_settings = checks_settings    # config.ChecksSection: pregreet, bad recipients

    def buildProtocol(self, addr: Any) -> ApplianceSMTP:
        proto = self.protocol()
        proto.factory = self
        return proto
