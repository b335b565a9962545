"""Who may see the status page: allowed networks, sessions, HTTP Basic through the one Login.

The Gate is driven with twisted.web's DummyRequest and a Login double that answers like
appliance.realm.Login (a LoggedIn, or a failure); the decisions are what a client would see:
the status code, the challenge, and the log line.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from appliance import address
from appliance.interfaces import UserRecord
from appliance.realm import LoggedIn
from appliance.web import access, site

ADMIN, USER = "admin@example.test", "user@example.test"
PASSWORDS = {ADMIN: "admin-pw", USER: "user-pw"}


@dataclass
class Settings:
    allow_networks: tuple = field(default_factory=lambda: address.parse_networks("127.0.0.1/32"))
    admins: tuple = (ADMIN,)


class FakeLogin:
    """Answers like Login.attempt: LoggedIn for the right password, UnauthorizedLogin otherwise."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str, str]] = []

    def attempt(self, credentials, interface, *, service, peer, login, mechanism):
        self.attempts.append((service, login, mechanism))
        name = credentials.username.decode()
        if PASSWORDS.get(name) == credentials.password.decode():
            return defer.succeed(LoggedIn(None, UserRecord(name), lambda: None))
        return defer.fail(UnauthorizedLogin("bad"))


class Secret(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"the page"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gate():
    clock = Clock()
    return site.Gate(lambda: Settings(), FakeLogin(), access.Sessions(clock), clock)


@pytest.fixture
def logged(monkeypatch):
    lines: list[tuple] = []
    monkeypatch.setattr("appliance.maillog.web_refused", lambda *args, **kw: lines.append(args))
    return lines


class Request(DummyRequest):
    """DummyRequest with the cookies twisted.web's Request parses from the Cookie header."""

    def __init__(self) -> None:
        super().__init__([b""])
        self.received_cookies: dict[bytes, bytes] = {}

    def getCookie(self, name: bytes) -> bytes | None:
        return self.received_cookies.get(name)


def request_from(host: str, headers: dict[bytes, bytes] | None = None, cookie: bytes | None = None) -> Request:
    request = Request()
    request.client = IPv4Address("TCP", host, 40000)
    request.path = b"/"
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    if cookie is not None:
        request.received_cookies[access.COOKIE] = cookie
    return request


def basic(login: str, password: str) -> dict[bytes, bytes]:
    return {b"authorization": b"Basic " + base64.b64encode(f"{login}:{password}".encode())}


def run(gate, request) -> bytes:
    result = gate.render(request, Secret())
    if result is NOT_DONE_YET:
        return b"".join(request.written)
    return result


def test_an_allowed_network_sees_the_page_without_login(gate, logged):
    request = request_from("127.0.0.1")
    assert run(gate, request) == b"the page"
    assert gate.login.attempts == [] and logged == []


def test_elsewhere_without_login_a_browser_gets_the_form_and_a_script_the_challenge(gate, logged):
    browser = request_from("192.0.2.1", {b"accept": b"text/html,*/*"})
    assert b'id="login"' in run(gate, browser) and browser.responseCode == 401
    assert browser.responseHeaders.getRawHeaders(b"www-authenticate") is None
    script = request_from("192.0.2.2")
    run(gate, script)
    assert script.responseCode == 401
    assert script.responseHeaders.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic realm=")
    assert [line[2:4] for line in logged] == [(401, access.ANONYMOUS), (401, access.ANONYMOUS)]


def test_basic_for_an_admin_shows_the_page_through_the_web_login(gate, logged):
    request = request_from("192.0.2.1", basic(ADMIN, "admin-pw"))
    assert run(gate, request) == b"the page"
    assert gate.login.attempts == [("web", ADMIN, "basic")] and logged == []


def test_basic_with_a_wrong_password_is_401_and_a_non_admin_403(gate, logged):
    wrong = request_from("192.0.2.1", basic(ADMIN, "guess"))
    assert b"the page" not in run(gate, wrong) and wrong.responseCode == 401
    user = request_from("192.0.2.1", basic(USER, "user-pw"))
    assert b"the page" not in run(gate, user) and user.responseCode == 403
    assert [(line[2], line[3]) for line in logged] == [(401, "bad credentials"), (403, access.NOT_ADMIN)]


def test_a_session_of_an_admin_opens_the_page_until_it_ends(gate, logged):
    token = gate.sessions.create(ADMIN)
    assert run(gate, request_from("192.0.2.1", cookie=token.encode())) == b"the page"
    gate.sessions.end(token)
    ended = request_from("192.0.2.1", cookie=token.encode())
    assert b"the page" not in run(gate, ended) and ended.responseCode == 401
    forged = request_from("192.0.2.1", cookie=b"made-up")
    assert b"the page" not in run(gate, forged) and forged.responseCode == 401


def test_a_session_is_worth_nothing_once_its_login_is_no_longer_an_admin():
    settings = Settings()
    gate = site.Gate(lambda: settings, FakeLogin(), access.Sessions(Clock()), Clock())
    token = gate.sessions.create(ADMIN)
    settings.admins = ()                   # a reload took the admin out of [web] admins
    request = request_from("192.0.2.1", cookie=token.encode())
    assert b"the page" not in run(gate, request) and request.responseCode == 401


def test_sessions_expire_when_idle_and_at_their_lifetime():
    clock = Clock()
    sessions = access.Sessions(clock, idle=60, lifetime=300)
    idle = sessions.create(ADMIN)
    clock.now += 61
    assert sessions.login(idle) is None
    busy = sessions.create(ADMIN)
    for _ in range(5):
        clock.now += 50
        assert sessions.login(busy) == ADMIN
    clock.now += 50
    assert sessions.login(busy) is None           # 300 s after it began, however busy


def test_the_session_table_is_bounded_oldest_first():
    sessions = access.Sessions(Clock(), limit=3)
    tokens = [sessions.create(ADMIN) for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.login(tokens[0]) is None and sessions.login(tokens[-1]) == ADMIN
    assert len(set(tokens)) == 5 and all(len(t) >= 40 for t in tokens)


def test_admins_compare_without_case():
    assert access.is_admin("Admin@Example.TEST", [ADMIN])
    assert not access.is_admin("", [ADMIN]) and not access.is_admin(USER, [ADMIN])


@pytest.mark.parametrize("header", [None, b"", b"Bearer abc", b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"),
                                    b"Basic " + base64.b64encode(b":password"), b"Basic " + base64.b64encode(b"\xff:x")])
def test_unusable_basic_headers_are_no_credentials(header):
    assert access.basic_credentials(header) is None


def test_the_web_listener_needs_a_certificate(tmp_path):
    """It is always TLS: without [tls] certificate the daemon refuses to start, naming the reason."""
    from appliance import checks, config
    from tests.unit.test_config import MINIMAL, write
    cfg = config.load(write(tmp_path, MINIMAL + "[tls]\ncertificate =\nkey =\n[listen]\nweb = tcp:8443\n"))
    assert checks.check_files(cfg) == [
        f"{cfg.path}: [tls] certificate: empty, but [listen] web need TLS; "
        "set it and run `mailappliance gen-cert` for a self-signed one"]


def test_a_refused_client_repeating_itself_writes_a_line_every_few_seconds(gate, logged):
    for _ in range(5):
        run(gate, request_from("192.0.2.1"))
    gate.refused._clock.now += site.LOG_EVERY
    run(gate, request_from("192.0.2.1"))
    run(gate, request_from("192.0.2.9"))
    assert [(line[0], line[3]) for line in logged] == [
        ("192.0.2.1", access.ANONYMOUS), ("192.0.2.1", f"{access.ANONYMOUS}, 4 more not logged"),
        ("192.0.2.9", access.ANONYMOUS)]
