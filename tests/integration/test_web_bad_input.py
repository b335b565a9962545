"""The web listener under bad input, on a real twistd with raw TLS sockets: huge headers, a huge
body, a client trickling its request, path traversal, too many connections. Each gets a clear
HTTP answer or is cut off, and SMTP on the same process still answers. Every loop is bounded."""
from __future__ import annotations

import socket
import ssl
import time
from contextlib import ExitStack

import pytest

from appliance.web import site
from tests.integration.harness import wait_for


@pytest.fixture
def web_app(make_appliance):
    # allow_networks is the default (loopback): the page itself is open to these clients.
    return make_appliance(services=("smtp", "web"), limits={"max_connections_per_ip": "5"})


def _tls(app) -> ssl.SSLContext:
    context = app.tls_context()
    context.check_hostname = False
    return context


def _connect(app, timeout: float = 10) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", app.ports["web"]), timeout=timeout)
    return _tls(app).wrap_socket(sock, server_hostname="mail.example.test")


def _read_all(sock: ssl.SSLSocket, limit: int = 1 << 20) -> bytes:
    """Everything until the server closes (bounded by `limit` bytes and the socket timeout)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _ask(app, request: bytes) -> bytes:
    with _connect(app) as sock:
        sock.sendall(request)
        return _read_all(sock)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _smtp_answers(app) -> None:
    with app.smtp() as client:
        assert client.noop()[0] == 250


def test_the_page_is_served_over_tls_to_an_allowed_network(web_app):
    answer = _ask(web_app, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 200 and b'id="flow"' in answer
    assert b"content-security-policy: default-src 'none'" in answer.lower()


def test_a_client_offering_alpn_is_served_without_it(web_app):
    """Browsers offer h2 and http/1.1 by ALPN; the TLS handshake used to fail with an alert."""
    context = _tls(web_app)
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", web_app.ports["web"]), timeout=10)
    with context.wrap_socket(raw, server_hostname="mail.example.test") as sock:
        assert sock.selected_alpn_protocol() is None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _status(_read_all(sock)) == 200


def test_plain_http_gets_no_page(web_app):
    with socket.create_connection(("127.0.0.1", web_app.ports["web"]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(10)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
    assert b"HTTP/1.1 200" not in data and b"<html" not in data


def test_huge_headers_are_refused_with_400(web_app):
    many = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"a" * 200) for n in range(60))
    answer = _ask(web_app, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert _status(answer) == 400
    count = b"".join(b"X-%d: 1\r\n" % n for n in range(site.MAX_HEADERS + 5))
    assert _status(_ask(web_app, b"GET / HTTP/1.1\r\nHost: x\r\n" + count + b"\r\n")) == 400
    _smtp_answers(web_app)


def test_a_huge_body_is_refused_with_413(web_app):
    body = b"login=a&password=" + b"x" * (site.MAX_BODY * 4)
    head = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with _connect(web_app) as sock:
        sock.sendall(head)
        answer = _read_all(sock)
    assert _status(answer) == 413
    chunked = (b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    with _connect(web_app) as sock:
        sock.sendall(chunked)
        for _ in range(10):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (site.MAX_BODY, b"x" * site.MAX_BODY))
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
        assert _status(_read_all(sock)) == 413


def test_a_client_trickling_its_request_is_cut_off_with_408(web_app):
    started = time.monotonic()
    with _connect(web_app, timeout=site.HEADER_DEADLINE + 10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        for _ in range(int(site.HEADER_DEADLINE * 2) + 10):       # a byte a second, as slowloris does
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
            sock.settimeout(1)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError):
                break
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert site.HEADER_DEADLINE - 1 <= elapsed <= site.HEADER_DEADLINE + 5
    _smtp_answers(web_app)


@pytest.mark.parametrize("path", [b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/..%2f..%2fetc%2fpasswd",
                                  b"//etc/passwd", b"/metrics/../../etc/passwd"])
def test_path_traversal_finds_nothing(web_app, path):
    answer = _ask(web_app, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 404 and b"root:" not in answer


def test_other_methods_are_refused(web_app):
    answer = _ask(web_app, b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 405 and b"allow: get, head" in answer.lower()


def test_too_many_connections_are_refused_and_smtp_still_answers(web_app):
    with ExitStack() as held:
        for _ in range(5):
            held.enter_context(_connect(web_app))
        refused = _ask(web_app, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(refused) == 429 and b"too many connections" in refused
        _smtp_answers(web_app)
    wait_for(lambda: _status(_ask(web_app, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200,
             timeout=10)
    assert "connection-refused service=web peer=127.0.0.1 reason=per-client" in web_app.log()
