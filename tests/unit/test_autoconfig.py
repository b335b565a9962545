"""Automatic client setup, asked for the way each client asks, through a real twisted.web Site.

What is asserted is what the client reads: the elements Thunderbird's readFromXML takes from
clientConfig 1.1, the Account/Protocol elements Outlook takes from an Autodiscover 2006a answer
to its own request body, and the keys iOS/macOS take from the profile (parsed with plistlib).
"""
from __future__ import annotations

import plistlib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from xml.etree import ElementTree as ET

import pytest
from twisted.web.resource import Resource

from appliance import config
from appliance.web import autoconfig
from tests.unit.siterig import raw, serving, status_of

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test, example.org
state_dir = {state}
[listen]
smtp = tcp:2525
{listen}
"""
ALL_ON = "submission = tcp:587\nsmtps = tcp:465\nimaps = tcp:993\npop3s = tcp:995"

# The request Outlook sends (MS-OXDSCLI 4.1.1's example, with its line breaks and indentation)
OUTLOOK_REQUEST = (
    '<?xml version="1.0" encoding="utf-8"?>\r\n'
    '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">\r\n'
    "  <Request>\r\n"
    "    <EMailAddress>{address}</EMailAddress>\r\n"
    "    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\r\n"
    "  </Request>\r\n"
    "</Autodiscover>\r\n")
NS = {"a": autoconfig.NS_RESPONSE, "o": autoconfig.NS_OUTLOOK}

# readFromXML's accepted values (Thunderbird's Sanitizer.translate tables)
TB_SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
TB_AUTHENTICATIONS = {"password-cleartext", "plain", "password-encrypted", "secure", "GSSAPI", "NTLM",
                      "TLS-client-cert", "OAuth2", "none", "client-IP-address"}


def load(tmp_path, listen: str = ALL_ON) -> config.Config:
    path = tmp_path / "mailappliance.conf"
    path.write_text(CONF.format(state=tmp_path / "var", listen=listen))
    return config.load(str(path))


@pytest.fixture
def site(tmp_path):
    """Serve the autoconfig resources of the default configuration; yields the base URL."""
    with serve(load(tmp_path)) as base:
        yield base


@contextmanager
def serve(cfg: config.Config) -> Iterator[str]:
    """The autoconfig resources of `cfg` on a real Site; yields its base URL."""
    root = Resource()
    autoconfig.mount(root, autoconfig.resources(cfg))
    with serving(root) as port:
        yield f"http://127.0.0.1:{port}"


def fetch(url: str, data: bytes | None = None, method: str | None = None,
          headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


# ---------------------------------------------------------------- Thunderbird

def thunderbird_reads(body: bytes) -> dict:
    """What Thunderbird's readFromXML takes from a clientConfig, with the checks it makes on each."""
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    [provider] = root.findall("emailProvider")

    def server(element: ET.Element) -> dict:
        port = int(element.findtext("port"))
        assert 1 <= port <= 65535
        assert element.findtext("socketType") in TB_SOCKET_TYPES
        assert element.findtext("authentication") in TB_AUTHENTICATIONS
        assert not [child for child in element if "password" in child.tag.lower()]
        return {"type": element.get("type"), "hostname": element.findtext("hostname"), "port": port,
                "socketType": element.findtext("socketType"), "username": element.findtext("username"),
                "authentication": element.findtext("authentication")}

    return {"id": provider.get("id"), "domains": [d.text for d in provider.findall("domain")],
            "displayName": provider.findtext("displayName"),
            "incoming": [server(e) for e in provider.findall("incomingServer")],
            "outgoing": [server(e) for e in provider.findall("outgoingServer")]}


def expected_server(kind: str, port: int, socket: str) -> dict:
    return {"type": kind, "hostname": "mail.example.test", "port": port, "socketType": socket,
            "username": "%EMAILADDRESS%", "authentication": "password-cleartext"}


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                                  "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice@example.test",
                                  "/mail/config-v1.1.xml"])
def test_thunderbird_reads_imaps_pop3s_and_both_submission_ports_with_the_address_as_login(site, path):
    status, headers, body = fetch(site + path)
    assert status == 200
    assert headers["content-type"].startswith("text/xml")
    read = thunderbird_reads(body)
    assert read["id"] == "example.test"
    assert read["domains"] == ["example.test", "example.org"]
    assert read["incoming"] == [expected_server("imap", 993, "SSL"), expected_server("pop3", 995, "SSL")]
    assert read["outgoing"] == [expected_server("smtp", 465, "SSL"), expected_server("smtp", 587, "STARTTLS")]


def test_thunderbird_asking_autoconfig_of_the_second_domain_gets_that_domain_as_provider(site):
    status, _, body = fetch(site + "/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.org"})
    assert status == 200
    assert thunderbird_reads(body)["id"] == "example.org"
    status, _, body = fetch(site + "/mail/config-v1.1.xml?emailaddress=bob%40EXAMPLE.ORG")
    assert thunderbird_reads(body)["id"] == "example.org"


def test_services_that_are_off_are_left_out_and_ports_come_from_listen(tmp_path):
    with serve(load(tmp_path, "submission = tcp:10587\nimaps = tcp:interface=127.0.0.1:10993")) as base:
        status, _, body = fetch(base + "/mail/config-v1.1.xml")
    read = thunderbird_reads(body)
    assert read["incoming"] == [expected_server("imap", 10993, "SSL")]
    assert read["outgoing"] == [expected_server("smtp", 10587, "STARTTLS")]


def test_implicit_tls_is_offered_before_starttls_of_the_same_protocol(tmp_path):
    with serve(load(tmp_path, "imap = tcp:143\nimaps = tcp:993\nsubmission = tcp:587\nsmtps = tcp:465")) as base:
        read = thunderbird_reads(fetch(base + "/mail/config-v1.1.xml")[2])
        _, root = outlook_asks(base, "alice@example.test")
    assert read["incoming"] == [expected_server("imap", 993, "SSL"), expected_server("imap", 143, "STARTTLS")]
    assert [p.findtext("o:Port", namespaces=NS) for p in root.iterfind("o:Response/o:Account/o:Protocol", NS)] \
        == ["993", "465"]


def test_a_server_without_submission_describes_nothing(tmp_path):
    with serve(load(tmp_path, "imaps = tcp:993")) as base:
        for path in ("/mail/config-v1.1.xml", "/mobileconfig?emailaddress=alice@example.test"):
            status, _, body = fetch(base + path)
            assert status == 404 and b"no mail client access" in body


@pytest.mark.parametrize("query, status", [
    ("emailaddress=alice%40elsewhere.test", 404),
    ("emailaddress=%3Cscript%3Ealert(1)%3C%2Fscript%3E", 400),
    ("emailaddress=not-an-address", 400),
    ("emailaddress=a%40example.test&emailaddress=b%40example.test", 400),
    ("emailaddress=%FF%FE%40example.test", 400),
    ("emailaddress=" + "a" * 5000 + "%40example.test", 400),
])
def test_a_bad_or_foreign_address_is_a_clear_4xx_that_does_not_echo_it(site, query, status):
    for path in ("/mail/config-v1.1.xml", "/mobileconfig"):
        got, headers, body = fetch(f"{site}{path}?{query}")
        assert got == status, (path, body)
        assert headers["content-type"].startswith("text/plain")
        assert b"script" not in body and b"elsewhere" not in body and b"not-an" not in body


def test_wrong_methods_and_paths_below_a_file_are_refused(site):
    assert fetch(site + "/mail/config-v1.1.xml", data=b"x")[0] == 405
    assert fetch(site + "/mail/config-v1.1.xml", method="DELETE")[0] == 405
    assert fetch(site + "/autodiscover/autodiscover.xml")[0] == 405
    assert fetch(site + "/mail/config-v1.1.xml/../../etc/passwd")[0] == 404
    assert fetch(site + "/mail/config-v1.1.xml/extra")[0] == 404
    assert fetch(site + "/mail")[0] == 404


# ---------------------------------------------------------------- Outlook

def outlook_asks(base: str, address: str, schema: str = autoconfig.NS_OUTLOOK,
                 path: str = "/autodiscover/autodiscover.xml") -> tuple[int, ET.Element]:
    body = OUTLOOK_REQUEST.format(address=address, schema=schema).encode()
    status, headers, answer = fetch(base + path, data=body,
                                    headers={"Content-Type": "text/xml", "User-Agent": "Microsoft Office/16.0"})
    assert headers["content-type"].startswith("text/xml")
    root = ET.fromstring(answer)
    assert root.tag == f"{{{autoconfig.NS_RESPONSE}}}Autodiscover"
    return status, root


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"])
def test_outlook_gets_imap_pop3_and_smtp_with_ssl_and_the_address_as_login(site, path):
    status, root = outlook_asks(site, "Alice@example.test", path=path)
    assert status == 200
    [account] = root.findall("o:Response/o:Account", NS)
    assert account.findtext("o:AccountType", namespaces=NS) == "email"
    assert account.findtext("o:Action", namespaces=NS) == "settings"
    found = {p.findtext("o:Type", namespaces=NS): {c.tag.split("}")[1]: c.text for c in p}
             for p in account.findall("o:Protocol", NS)}
    assert list(found) == ["IMAP", "POP3", "SMTP"]
    for kind, port in (("IMAP", "993"), ("POP3", "995"), ("SMTP", "465")):
        assert found[kind]["Server"] == "mail.example.test"
        assert found[kind]["Port"] == port
        assert found[kind]["SSL"] == "on"
        assert found[kind]["Encryption"] == "SSL"
        assert found[kind]["LoginName"] == "Alice@example.test"
        assert found[kind]["AuthRequired"] == "on"
        assert not [tag for tag in found[kind] if "password" in tag.lower()]


def test_outlook_gets_starttls_on_587_when_465_is_off(tmp_path):
    with serve(load(tmp_path, "submission = tcp:587\nimaps = tcp:993")) as base:
        status, root = outlook_asks(base, "alice@example.test")
    protocols = root.findall("o:Response/o:Account/o:Protocol", NS)
    assert [p.findtext("o:Type", namespaces=NS) for p in protocols] == ["IMAP", "SMTP"]
    smtp = protocols[1]
    assert (smtp.findtext("o:Port", namespaces=NS), smtp.findtext("o:Encryption", namespaces=NS)) == ("587", "TLS")


def autodiscover_error(root: ET.Element) -> str:
    return root.findtext("o:Response/o:Error/o:ErrorCode", namespaces=NS)


def test_outlook_asking_for_another_domain_gets_error_500_and_another_schema_601(site):
    status, root = outlook_asks(site, "alice@elsewhere.test")
    assert (status, autodiscover_error(root)) == (200, "500")
    assert b"elsewhere" not in ET.tostring(root)
    mobilesync = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    status, root = outlook_asks(site, "alice@example.test", schema=mobilesync)
    assert (status, autodiscover_error(root)) == (200, "601")


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
          b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><Autodiscover><Request><EMailAddress>&lol3;'
          b'</EMailAddress></Request></Autodiscover>')
EXTERNAL = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>')


@pytest.mark.parametrize("body, status", [
    (LAUGHS, 400), (EXTERNAL, 400), (b"<Autodiscover><Request>", 400), (b"", 400),
    (b"<Autodiscover><Request><EMailAddress></EMailAddress></Request></Autodiscover>", 400),
    (b"<a>" * 20 + b"</a>" * 20, 400),
    (OUTLOOK_REQUEST.format(address="a@example.test", schema="x").encode() + b" " * 20000, 413),
])
def test_malformed_requests_entities_and_huge_bodies_get_a_4xx_with_error_600(site, body, status):
    got, _, answer = fetch(site + "/autodiscover/autodiscover.xml", data=body)
    assert got == status
    root = ET.fromstring(answer)
    assert autodiscover_error(root) == "600"
    assert b"root:" not in answer and b"lol" not in answer


# ---------------------------------------------------------------- Apple

def test_the_profile_is_a_mail_payload_for_imaps_and_smtps_without_passwords(site):
    status, headers, body = fetch(site + autoconfig.profile_link("Alice@example.test"))
    assert status == 200
    assert headers["content-type"] == "application/x-apple-aspen-config"
    assert headers["content-disposition"] == 'attachment; filename="example.test.mobileconfig"'
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    [mail] = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == "Alice@example.test"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"]) == ("mail.example.test", 993, True)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"]) == ("mail.example.test", 465, True)
    assert mail["IncomingMailServerUsername"] == mail["OutgoingMailServerUsername"] == "Alice@example.test"
    assert mail["IncomingMailServerAuthentication"] == mail["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    assert not {"IncomingPassword", "OutgoingPassword"} & set(mail)
    for payload in (profile, mail):
        uuid.UUID(payload["PayloadUUID"])


def test_the_profile_uuids_are_stable_per_address_so_a_new_download_replaces_the_old(site):
    def ids(email: str) -> tuple[str, str, str]:
        profile = plistlib.loads(fetch(site + autoconfig.profile_link(email))[2])
        return profile["PayloadUUID"], profile["PayloadContent"][0]["PayloadUUID"], profile["PayloadIdentifier"]

    first = ids("alice@example.test")
    assert ids("ALICE@example.test") == first == ids("alice@example.test")
    assert len(set(first[:2])) == 2
    other = ids("bob@example.test")
    assert not set(other) & set(first)


def test_the_profile_falls_back_to_starttls_and_pop3_when_only_those_are_on(tmp_path):
    with serve(load(tmp_path, "submission = tcp:587\npop3 = tcp:110")) as base:
        mail = plistlib.loads(fetch(base + "/mobileconfig?emailaddress=a%40example.org")[2])["PayloadContent"][0]
    assert (mail["EmailAccountType"], mail["IncomingMailServerPortNumber"], mail["OutgoingMailServerPortNumber"]) \
        == ("EmailTypePOP", 110, 587)


def test_without_an_address_the_profile_page_is_a_form_without_scripts(site):
    status, headers, body = fetch(site + "/mobileconfig")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<form method="get" action="/mobileconfig">' in body and b'name="emailaddress"' in body
    assert b"<script" not in body


def test_a_raw_head_request_gets_headers_only(site):
    port = int(site.rsplit(":", 1)[1])
    answer = raw(port, b"HEAD /mail/config-v1.1.xml HTTP/1.1\r\nHost: autoconfig.example.test\r\n"
                       b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b"\r\n\r\n")
