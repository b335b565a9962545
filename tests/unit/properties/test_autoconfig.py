"""The public autoconfig resources under any input: a 4xx or a well-formed answer, never a crash or 5xx,
never the input echoed where it could be read as markup.

Two levels: the parsers alone (many examples, cheap), and HTTP through a real twisted.web Site
on a loopback port (fewer examples: each is a real request).
"""
from __future__ import annotations

import plistlib
import urllib.error
import urllib.parse
import urllib.request
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

import pytest
from twisted.web.resource import Resource
from hypothesis import example, given, strategies as st

from appliance import config
from appliance.web import autoconfig
from tests.unit.properties.strategies import any_bytes, examples
from tests.unit.siterig import serving

DOMAINS = ("example.test", "example.org")
CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test, example.org
state_dir = {state}
[listen]
submission = tcp:587
smtps = tcp:465
imaps = tcp:993
pop3s = tcp:995
"""
NS = {"a": autoconfig.NS_RESPONSE, "o": autoconfig.NS_OUTLOOK}
ERROR_BODIES = {b"emailaddress must be one mail address\n", b"this server does not serve mail for that domain\n"}

# what a client might put where the address goes: markup, entities, blanks, unicode, our domains
address_text = st.one_of(
    st.text(max_size=80),
    st.builds(lambda local, domain: f"{local}@{domain}",
              st.text(min_size=1, max_size=30), st.sampled_from(DOMAINS + ("elsewhere.test", "EXAMPLE.ORG", ""))),
    st.sampled_from(["<b>x</b>@example.test", "a&amp;b@example.test", "]]>@example.test", "a@example.test\n",
                     "\ufffe@example.test", '"quoted local"@example.test', "a" * 300 + "@example.test"]))


def request_body(text: str, escaped: bool) -> bytes:
    inner = escape(text) if escaped else text
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{autoconfig.NS_REQUEST}"><Request>'
            f"<EMailAddress>{inner}</EMailAddress><AcceptableResponseSchema>{autoconfig.NS_OUTLOOK}"
            "</AcceptableResponseSchema></Request></Autodiscover>").encode("utf-8", "surrogatepass")


autodiscover_bodies = st.one_of(any_bytes, st.builds(request_body, address_text, st.booleans()))


@given(autodiscover_bodies)
@example(b'<!DOCTYPE a [<!ENTITY x "y">]><Autodiscover/>')
@example(b'<?xml version="1.0" encoding="x-unknown"?><a/>')
@example(b'<?xml version="1.0" encoding="utf-16"?><a/>')
@example(b"\xff\xfe<\x00a\x00/\x00>\x00")
def test_parsing_any_body_gives_a_request_or_bad_input(body):
    try:
        asked = autoconfig.parse_autodiscover(body)
    except autoconfig.BadInput:
        return
    assert asked.email and asked.email == asked.email.strip()


@given(address_text)
def test_any_address_text_is_ours_foreign_or_bad_input_and_what_passes_can_be_written_as_xml(text):
    try:
        found = autoconfig.mail_address(text, DOMAINS)
    except autoconfig.BadInput:
        return
    if found is not None:
        assert found.rsplit("@", 1)[1] in DOMAINS
        element = ET.Element("LoginName")
        element.text = found
        assert ET.fromstring(ET.tostring(element)).text == found
        assert plistlib.loads(plistlib.dumps({"a": found}))["a"] == found


# ---------------------------------------------------------------- through HTTP

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("autoconfig") / "mailappliance.conf"
    path.write_text(CONF.format(state=path.parent / "var"))
    root = Resource()
    autoconfig.mount(root, autoconfig.resources(config.load(str(path))))
    with serving(root) as port:
        yield f"http://127.0.0.1:{port}"


def fetch(url: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as answer:
            return answer.status, answer.headers["content-type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


@examples(0.3)
@given(st.one_of(st.binary(max_size=400), address_text.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       st.sampled_from(["/mail/config-v1.1.xml", "/mobileconfig"]))
@example(b"alice@example.test", "/mobileconfig")
@example(b"alice@elsewhere.test", "/mail/config-v1.1.xml")
@example(b"&lt;x&gt;@example.org", "/mobileconfig")
def test_any_emailaddress_query_gets_an_answer_or_a_fixed_4xx(base, value, path):
    status, kind, body = fetch(f"{base}{path}?emailaddress={urllib.parse.quote_from_bytes(value)}")
    assert status in (200, 400, 404), (status, body)
    if status != 200:
        assert body in ERROR_BODIES and kind.startswith("text/plain")
    elif path == "/mobileconfig":
        mail = plistlib.loads(body)["PayloadContent"][0]
        assert mail["EmailAddress"].rsplit("@", 1)[1] in DOMAINS
        assert not {"IncomingPassword", "OutgoingPassword"} & set(mail)
    else:
        ET.fromstring(body)
        assert value not in body or value in (b"example.test", b"example.org")


@examples(0.3)
@given(autodiscover_bodies)
def test_any_autodiscover_body_gets_settings_or_an_autodiscover_error_never_the_input(base, body):
    status, kind, answer = fetch(base + "/autodiscover/autodiscover.xml", data=body)
    assert status in (200, 400, 413), (status, answer)
    assert kind.startswith("text/xml")
    root = ET.fromstring(answer)
    error = root.find("o:Response/o:Error", NS)
    if error is not None:
        assert error.findtext("o:ErrorCode", namespaces=NS) in ("500", "600", "601")
        assert error.findtext("o:Message", namespaces=NS) in (
            "The e-mail address cannot be found.", "Invalid Request", "Provider is not available")
        assert not error.findtext("o:DebugData", namespaces=NS)
        return
    assert status == 200
    asked = autoconfig.parse_autodiscover(body)
    logins = {p.findtext("o:LoginName", namespaces=NS) for p in root.iterfind("o:Response/o:Account/o:Protocol", NS)}
    assert logins == {autoconfig.mail_address(asked.email, DOMAINS)}
