"""The web listener: a fixed set of paths, access control, and limits against bad clients.

- Paths are matched exactly against a fixed table (`Root`): nothing is ever read from disk
  by URL, so no URL (`/../../etc/passwd`, `%2e%2e`, ...) reaches a file; anything else is 404.
- The status page and /metrics are for [web] allow_networks without a login, and for
  [web] admins from anywhere after a login (HTTP Basic, or the form at /login and a session
  cookie); every other request is answered 401 or 403 and logged (maillog.web_refused).
  Client autoconfig (appliance.web.autoconfig) is public: a phone must read it before it
  knows any password.
- The listener is always TLS (tap.py wraps it like imaps): Basic credentials and session
  cookies never travel in clear, and the cookie is `Secure`, so it would not be sent back
  over plain HTTP anyway.
- Limits: request line and headers MAX_HEADER_BYTES in all and MAX_HEADERS lines (400 beyond);
  a body of MAX_BODY bytes (413 beyond: only the login form has one); all headers within
  HEADER_DEADLINE seconds of the connection or of the previous answer (408, then closed:
  a client trickling bytes cannot hold a connection); IDLE_TIMEOUT seconds of silence close
  the connection. How many connections: connlimit, the "web" kind, like every listener.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from appliance import connlimit, maillog
from appliance.interfaces import IMailUser
from appliance.web import access, autoconfig, page, plots
from appliance.web.events import EventsService
from appliance.web.metrics import MetricsResource

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 50
MAX_BODY = 4096
HEADER_DEADLINE = 10.0
IDLE_TIMEOUT = 30.0
EVENTS_SHOWN = 100
LOG_EVERY = 10.0          # seconds between two web-refused lines of one (peer, status, reason, login)
LOG_KEYS = 1024

_log = Logger(namespace="web")


def _refusal(status: bytes, text: bytes) -> bytes:
    """A complete HTTP answer for connlimit's Refusal (which adds the final CRLF itself)."""
    body = text + b"\r\n"
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + text)


REFUSALS = {
    connlimit.PER_CLIENT: _refusal(b"429 Too Many Requests", b"too many connections from your address"),
    connlimit.PER_SERVICE: _refusal(b"503 Service Unavailable", b"too many connections, try again later"),
    connlimit.DESCRIPTORS: _refusal(b"503 Service Unavailable", b"server busy, try again later"),
}


# --- the protocol: limits ---------------------------------------------------------------------------

class WebChannel(http.HTTPChannel):
    """HTTPChannel with tighter header limits and a deadline for receiving a request's headers."""

    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEADER_BYTES
    _deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.callLater(HEADER_DEADLINE, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def allHeadersReceived(self) -> None:
        self._stop_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent and self.transport is not None:
            self._start_deadline()      # the next request on this connection gets the same time

    def _too_slow(self) -> None:
        """RFC 9110 15.5.9: 408 to a client that has not sent its request in time; closed."""
        self._deadline = None
        if self.requests and not self._handlingRequest:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)


class WebRequest(server.Request):
    """A request whose body is refused (413, connection closed) beyond MAX_BODY bytes."""

    too_large = False
    _body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.content = io.BytesIO()
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.too_large:
            super().requestReceived(command, path, version)

    def _refuse_body(self) -> None:
        if self.too_large:
            return
        self.too_large = True
        self.channel.transport.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
        self.channel.loseConnection()


class WebSite(server.Site):
    """The Site of the web listener: our channel and request, quiet, with connlimit's answers."""

    protocol = WebChannel
    requestFactory = WebRequest
    noisy = False
    refusals = REFUSALS

    def startFactory(self) -> None:
        """No access log file, and no once-a-second timer keeping its date string fresh."""
        self._logFile = None

    def log(self, request: Any) -> None:
        """No access log: the refusals are logged by the gate; a line per page view is chatter."""


# --- the resources ---------------------------------------------------------------------------------

def _answer(request: Any, status: int, text: str, headers: dict[bytes, bytes] | None = None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return page.message(text)


def _secure_headers(request: Any) -> None:
    """No script, nothing fetched, never framed or cached, no Referer: the page is data only."""
    request.setHeader(b"content-security-policy",
                      b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                      b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"strict-transport-security", b"max-age=31536000")
    request.setHeader(b"server", b"mailappliance")        # not Twisted's version for every scanner


def _peer(request: Any) -> str:
    return getattr(request.getClientAddress(), "host", "") or ""


def _finish(request: Any, body: Any) -> None:
    if body is server.NOT_DONE_YET or request.finished or getattr(request, "_disconnected", False):
        return
    request.write(body)
    request.finish()


class RefusalLog:
    """maillog.web_refused, at most once per LOG_EVERY seconds for the same (peer, status, reason,
    login), the next line saying how many were left out: a client repeating a refused request on
    a kept-alive connection must not write the log full. At most LOG_KEYS keys are remembered."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str, str], tuple[float, int]] = OrderedDict()

    def __call__(self, peer: str, path: str, status: int, reason: str, login: str = "") -> None:
        key, now = (peer, status, reason, login), self._clock()
        last, left_out = self._seen.get(key, (None, 0))
        if last is not None and now - last < LOG_EVERY:
            self._seen[key] = (last, left_out + 1)
            return
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > LOG_KEYS:
            self._seen.popitem(last=False)
        maillog.web_refused(peer, path, status, f"{reason}, {left_out} more not logged" if left_out else reason, login)


class Gate:
    """The access decision for the guarded paths (the page and /metrics)."""

    CHALLENGE = {b"www-authenticate": b'Basic realm="mailappliance status", charset="UTF-8"'}

    def __init__(self, settings: Callable[[], Any], login: Any, sessions: access.Sessions,
                 clock: Callable[[], float]) -> None:
        self.settings = settings       # -> the current [web] section (re-read after a reload)
        self.login = login
        self.sessions = sessions
        self.refused = RefusalLog(clock)

    def render(self, request: Any, target: Resource) -> Any:
        web, peer = self.settings(), _peer(request)
        if access.allowed_network(peer, web.allow_networks):
            return target.render(request)
        token = request.getCookie(access.COOKIE)
        login = self.sessions.login(token.decode("ascii", "replace")) if token else None
        if login is not None and access.is_admin(login, web.admins):
            request.web_login = login               # the page offers "Log out" for the session
            return target.render(request)
        credentials = access.basic_credentials(request.getHeader(b"authorization"))
        if credentials is None:
            self.refused(peer, _path(request), 401, access.ANONYMOUS)
            return _answer(request, 401, page.LOGIN_NEEDED, {} if _wants_html(request) else self.CHALLENGE)
        d = self.check(credentials, peer, "basic", request)
        d.addCallback(self._basic_checked, request, target, peer, credentials[0])
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def check(self, credentials: tuple[str, str], peer: str, mechanism: str, request: Any) -> Deferred:
        """Deferred[str | None]: the admin's address, or None (wrong password, throttled, no admin)."""
        login, password = credentials
        d = self.login.attempt(UsernamePassword(login.encode("utf-8"), password.encode("utf-8")), IMailUser,
                               service="web", peer=peer, login=login, mechanism=mechanism)
        request.notifyFinish().addErrback(lambda _: d.cancel())   # the client left: stop waiting
        d.addCallbacks(self._logged_in, lambda failure: None)
        return d

    def _logged_in(self, logged_in: Any) -> str | None:
        logged_in.logout()
        return logged_in.user.address

    def _basic_checked(self, user: str | None, request: Any, target: Resource, peer: str, login: str) -> None:
        if user is None:
            self.refused(peer, _path(request), 401, "bad credentials", login)
            _finish(request, _answer(request, 401, page.LOGIN_FAILED, self.CHALLENGE))
        elif not access.is_admin(user, self.settings().admins):
            self.refused(peer, _path(request), 403, access.NOT_ADMIN, user)
            _finish(request, _answer(request, 403, page.NOT_ALLOWED))
        else:
            _finish(request, target.render(request))     # no web_login: Basic has no session to end

    def _failed(self, failure: Failure, request: Any) -> None:
        _log.failure("web request failed", failure)
        _finish(request, _answer(request, 500, "Internal error."))


def _wants_html(request: Any) -> bool:
    """A browser (it asks for text/html) gets the login form without a Basic challenge: a
    challenge would make it prompt first (and a headless one wait for ever) instead of showing
    the form. Scripts and Prometheus get the challenge and answer it with Basic."""
    return b"text/html" in (request.getHeader(b"accept") or b"")


def _path(request: Any) -> str:
    return request.path.decode("utf-8", "replace")


class LoginForm(Resource):
    """GET /login: the form; POST /login: a session cookie for an admin, 403 for anyone else."""

    isLeaf = True

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page.login_form()

    def render_POST(self, request: Any) -> Any:
        login = _field(request, b"login")
        password = _field(request, b"password")
        peer = _peer(request)
        if not login or len(login) > access.MAX_CREDENTIAL or len(password) > access.MAX_CREDENTIAL:
            self.gate.refused(peer, _path(request), 403, "bad login form", login[:100])
            return _answer(request, 403, page.LOGIN_FAILED)
        d = self.gate.check((login, password), peer, "form", request)
        d.addCallback(self._checked, request, peer, login)
        d.addErrback(self.gate._failed, request)
        return server.NOT_DONE_YET

    def _checked(self, user: str | None, request: Any, peer: str, login: str) -> None:
        if user is None or not access.is_admin(user, self.gate.settings().admins):
            reason = "bad credentials" if user is None else access.NOT_ADMIN
            self.gate.refused(peer, _path(request), 403, reason, user or login)
            _finish(request, _answer(request, 403, page.LOGIN_FAILED))
            return
        token = self.gate.sessions.create(user)
        request.addCookie(access.COOKIE, token.encode("ascii"), path=b"/", secure=True, httpOnly=True,
                          sameSite="strict", max_age=str(int(access.SESSION_LIFETIME)))
        request.redirect(b"/")
        request.setResponseCode(303)
        _finish(request, b"")


class Logout(Resource):
    """POST /logout ends the session. No CSRF token: the cookie is SameSite=Strict, so another
    site's form never carries it, and ending a session is all this does."""

    isLeaf = True

    def __init__(self, sessions: access.Sessions) -> None:
        super().__init__()
        self.sessions = sessions

    def render_POST(self, request: Any) -> bytes:
        token = request.getCookie(access.COOKIE)
        if token:
            self.sessions.end(token.decode("ascii", "replace"))
        request.addCookie(access.COOKIE, b"", path=b"/", secure=True, httpOnly=True, sameSite="strict",
                          max_age="0")
        request.redirect(b"/login")
        request.setResponseCode(303)
        return b""


def _field(request: Any, name: bytes) -> str:
    values = (request.args or {}).get(name) or [b""]
    return values[0].decode("utf-8", "replace")


class StatusPage(Resource):
    """GET /: the status page, built from the status report, the queue, the counters and the ring."""

    isLeaf = True

    def __init__(self, report: Any, queue: Any, counting: Any, events: EventsService, pool: Any,
                 reactor: Any) -> None:
        super().__init__()
        self.report, self.queue, self.counting, self.events = report, queue, counting, events
        self.pool, self.reactor = pool, reactor

    def render_GET(self, request: Any) -> Any:
        wanted = _query(request)
        d = self.report.collect()
        d.addCallback(self._with_plots)
        d.addCallback(self._render, request, wanted)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _with_plots(self, report: dict[str, Any]) -> Deferred:
        """The SVG plots are drawn on a pool thread: a plotting library is CPU work."""
        d = deferToThreadPool(self.reactor, self.pool, draw_plots, self.counting.counters)
        return d.addCallback(lambda svgs: (report, svgs))

    def _render(self, gathered: tuple[dict[str, Any], dict[str, str]], request: Any, wanted: str) -> None:
        report, svgs = gathered
        envelopes = list(self.queue.envelopes())
        view = page.View(
            report=report, svgs=svgs, wanted=wanted,
            events=self.events.ring.recent(EVENTS_SHOWN, wanted),
            destinations=page.deferred_destinations(envelopes),
            tls_share={span: self.events.counts.tls_share(seconds) for span, seconds in page.WINDOWS.items()},
            rejected_networks={span: self.events.counts.rejected_networks(seconds)
                               for span, seconds in page.WINDOWS.items()},
            login=getattr(request, "web_login", None))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        _finish(request, page.render(view))

    def _failed(self, failure: Failure, request: Any) -> None:
        _log.failure("building the status page failed", failure)
        _finish(request, _answer(request, 500, "The status page could not be built; see the log."))


def draw_plots(counters: Any) -> dict[str, str]:
    """Span -> SVG; a plot that fails is left out (the page says so) rather than failing the page."""
    drawn = {}
    for span in plots.SPANS:
        try:
            drawn[span] = plots.flow_svg(counters, span)
        except Exception:
            _log.failure("drawing the {span} plot failed", span=span)
    return drawn


def _query(request: Any) -> str:
    return _field(request, b"q")[:200]


class Root(Resource):
    """Every request: an exact path from a fixed table, or 404. Only GET and HEAD, but for the
    login form's POST."""

    isLeaf = True

    def __init__(self, gate: Gate, guarded: dict[bytes, Resource], public: dict[bytes, Resource],
                 forms: dict[bytes, Resource]) -> None:
        super().__init__()
        self.gate, self.guarded, self.public, self.forms = gate, guarded, public, forms

    def render(self, request: Any) -> Any:
        _secure_headers(request)
        path = request.path
        if path in self.public:
            return self.public[path].render(request)
        if path.lower() in self.public:            # Outlook varies the case of /Autodiscover/...
            return self.public[path.lower()].render(request)
        if path in self.forms:
            return self._method(request, (b"GET", b"HEAD", b"POST"), lambda: self.forms[path].render(request))
        target = self.guarded.get(path)
        if target is None:
            return _answer(request, 404, "Not found.")
        return self._method(request, (b"GET", b"HEAD"), lambda: self.gate.render(request, target))

    def _method(self, request: Any, allowed: tuple[bytes, ...], then: Callable[[], Any]) -> Any:
        if request.method not in allowed:
            return _answer(request, 405, "Method not allowed.", {b"allow": b", ".join(allowed)})
        return then()


class _CurrentLogin:
    """The Login of the wiring in service: a SIGHUP reload (appliance/reload.py) builds a new one
    when the directory or [logins] change, and the page must check passwords against that one."""

    def __init__(self, parts: Any) -> None:
        self._parts = parts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parts.wiring.login, name)


def make_site(top: Any, parts: Any, report: Any) -> WebSite:
    """The web listener's factory: the status page, /metrics, /login, /logout and autoconfig."""
    events = EventsService(parts.reactor.seconds)
    events.setServiceParent(top)
    sessions = access.Sessions(parts.reactor.seconds)
    gate = Gate(lambda: top.config.web, _CurrentLogin(parts), sessions, parts.reactor.seconds)
    counting = top.getServiceNamed("stats")
    status = StatusPage(report, parts.queue, counting, events, parts.pools["disk"], parts.reactor)
    guarded: dict[bytes, Resource] = {b"/": status, b"/metrics": MetricsResource(top)}
    forms: dict[bytes, Resource] = {b"/login": LoginForm(gate), b"/logout": Logout(sessions)}
    public = {path: resource for path, resource in autoconfig.resources(parts.cfg).items()
              if path not in guarded and path not in forms}
    site = WebSite(Root(gate, guarded, public, forms), timeout=IDLE_TIMEOUT, reactor=parts.reactor)
    return site
