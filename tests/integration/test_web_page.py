"""The status page in a real browser over TLS: an admin logs in and sees the mail just sent; a user
who is not an admin is refused. The appliance allows no network without a login here, so the
loopback browser is "from elsewhere"."""
from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request

import pytest

from tests.integration.browser import chromium
from tests.integration.harness import DOMAIN, PASSWORDS, make_message, wait_for
from tests.integration.test_reload import reload, rewrite

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


@pytest.fixture
def web_app(make_appliance):
    return make_appliance(services=("smtp", "web"), web={"allow_networks": "", "admins": ALICE})


def _url(app, path: str = "/") -> str:
    return f"https://127.0.0.1:{app.ports['web']}{path}"


def _log_in(driver, login: str, password: str) -> None:
    driver.find_element("id", "login").send_keys(login)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "submit").click()


def _number(driver, cell_id: str) -> int:
    return int(driver.find_element("id", cell_id).text)


def test_an_admin_logs_in_and_sees_the_mail_sent_and_the_plots(web_app, tmp_path):
    with web_app.smtp() as client:
        client.sendmail("someone@outside.example", [BOB], make_message("for the page"))
        client.sendmail("someone@outside.example", [ALICE], make_message("and another"))
    wait_for(lambda: web_app.messages("bob") and web_app.messages("alice"), timeout=15)

    with chromium(web_app.cert_path, str(tmp_path / "profile")) as driver:
        driver.get(_url(web_app))
        assert driver.find_elements("id", "login"), driver.page_source      # the login form, not the page
        assert not driver.find_elements("id", "flow")
        _log_in(driver, ALICE, PASSWORDS["alice"])
        wait_for(lambda: driver.find_elements("id", "flow"), timeout=20)

        assert driver.current_url == _url(web_app)
        assert _number(driver, "received-last_hour") == 2
        assert _number(driver, "delivered-last_hour") == 2
        assert _number(driver, "rejected-last_hour") == 0
        for span in ("hour", "day", "week"):
            assert driver.find_elements("css selector", f"#plot-{span} svg"), span
        # The hour plot's "received" series has a data point for the two messages (pygal's value desc).
        values = [int(float(v)) for v in re.findall(r'<desc class="value">([0-9.]+)</desc>',
                                                    driver.find_element("id", "plot-hour").get_attribute("innerHTML"))]
        assert 2 in values or sum(values) >= 4, values
        services = driver.find_element("id", "services").text
        assert re.search(rf"web .*127\.0\.0\.1:{web_app.ports['web']}", services), services
        assert f"Logged in as {ALICE}" in driver.page_source
        assert "days" in driver.find_element("id", "certificate").text

        cookie = next(c for c in driver.get_cookies() if c["name"] == "__Host-mailappliance")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # The events, filtered by an address: bob's delivery, not alice's.
        driver.get(_url(web_app, f"/?q={BOB}"))
        events = driver.find_element("id", "events").text
        assert f"rcpt={BOB}" in events and f"rcpt={ALICE}" not in events, events
        queue_id = re.search(r"delivered id=(\S+)", events).group(1)
        driver.get(_url(web_app, f"/?q={queue_id}"))
        by_id = driver.find_element("id", "events").text
        assert "received" in by_id and "delivered" in by_id and f"rcpt={ALICE}" not in by_id, by_id

        driver.find_element("css selector", "form[action='/logout'] button").click()
        wait_for(lambda: driver.find_elements("id", "login"), timeout=20)
        driver.get(_url(web_app))
        assert not driver.find_elements("id", "flow")                       # the session is over


def test_a_user_who_is_not_an_admin_is_refused(web_app, tmp_path):
    with chromium(web_app.cert_path, str(tmp_path / "profile")) as driver:
        driver.get(_url(web_app, "/login"))
        _log_in(driver, BOB, PASSWORDS["bob"])
        wait_for(lambda: "Login refused." in driver.page_source, timeout=20)
        assert not driver.find_elements("id", "flow")
        assert not [c for c in driver.get_cookies() if c["name"] == "__Host-mailappliance"]
        driver.get(_url(web_app))
        assert not driver.find_elements("id", "flow")
    wait_for(lambda: re.search(rf"web-refused service=web peer=127\.0\.0\.1 path=/login status=403 "
                               rf"login={BOB} reason=\"not an admin\"", web_app.log()), timeout=5)


def _metrics(app, login: str | None = None, password: str = "") -> tuple[int, dict, bytes]:
    """GET /metrics over TLS, with HTTP Basic when a login is given: (status, headers, body)."""
    context = app.tls_context()
    context.check_hostname = False
    request = urllib.request.Request(_url(app, "/metrics"))
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def test_metrics_from_elsewhere_need_an_admin_over_basic(web_app):
    """What a Prometheus scrape from another host sees: a Basic challenge, then the metrics."""

    def get(login: str | None = None, password: str = "") -> tuple[int, dict, bytes]:
        return _metrics(web_app, login, password)

    status, headers, _ = get()
    assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="mailappliance status"')
    assert get(ALICE, "wrong")[0] == 401
    assert get(BOB, PASSWORDS["bob"])[0] == 403
    status, headers, _ = get(ALICE, PASSWORDS["alice"])
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    log = web_app.log()
    assert "auth-failed service=web peer=127.0.0.1 login=alice@example.test mech=basic" in log
    assert 'path=/metrics status=401 reason="no login"' in log


def test_a_reload_that_names_a_new_admin_lets_them_in_and_keeps_the_page_serving(web_app):
    """SIGHUP with the web listener on: [web] admins is read again, the listener keeps serving."""
    assert _metrics(web_app, BOB, PASSWORDS["bob"])[0] == 403
    rewrite(web_app, web={"allow_networks": "", "admins": f"{ALICE}, {BOB}"})
    outcome = reload(web_app)
    assert "reloaded" in outcome and "[web] admins" in outcome, outcome
    assert _metrics(web_app, BOB, PASSWORDS["bob"])[0] == 200
    assert _metrics(web_app, ALICE, PASSWORDS["alice"])[0] == 200
