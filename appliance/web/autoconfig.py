"""Automatic mail client setup: a road warrior types an address and a password, nothing else.

Three clients, three formats, one description of the services (`Offer`s built from `[listen]`):
- Thunderbird (and Evolution, K-9, FairEmail...) GETs `clientConfig` version 1.1 from
  `autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=...` or
  `DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml`; the login is the placeholder
  `%EMAILADDRESS%`, which the client fills in itself.
- Outlook POSTs a "POX" Autodiscover request (MS-OXDSCLI, response schema outlook 2006a) to
  `/autodiscover/autodiscover.xml`, naming the address; the answer names it as LoginName.
- Apple devices install a configuration profile (`/mobileconfig?emailaddress=...`, a plist with
  one com.apple.mail.managed payload), unsigned: the device shows "Not Verified" and the user
  confirms; the device asks for the password.

Every service that is on is described, implicit TLS first (RFC 8314: it is preferred over
STARTTLS), and a service that is off is left out. No answer ever carries a password: the
appliance does not know them (only hashes), and a URL that handed one out would be a leak.

These resources are public (a client asks before it has logged in), so every input is treated as
hostile: the address is validated and never echoed in an error, the Autodiscover body is bounded
and parsed without DTDs (no entity expansion: no billion laughs, no external entities).
"""
from __future__ import annotations

import html
import plistlib
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree as ET
from xml.parsers import expat

from twisted.web.resource import Resource

from appliance import address
from appliance.dnsrecords import listen_port

MAX_ADDRESS = 254                # RFC 5321 4.5.3.1.3: the longest usable path is 256 octets with <>
MAX_BODY = 16 * 1024             # an Outlook request is about 400 bytes
MAX_DEPTH = 8                    # Autodiscover/Request/EMailAddress is 3 deep

NS_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
NS_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
NS_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"

PROFILE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "mobileconfig.mailappliance")   # the profiles' UUIDs: uuid5 in it
MOBILECONFIG_PATH = b"/mobileconfig"

# (protocol, [listen] key, socket type), in the order of preference within each protocol
SERVICES = (
    ("imap", "imaps", "SSL"), ("imap", "imap", "STARTTLS"),
    ("pop3", "pop3s", "SSL"), ("pop3", "pop3", "STARTTLS"),
    ("smtp", "smtps", "SSL"), ("smtp", "submission", "STARTTLS"),
)


@dataclass(frozen=True)
class Offer:
    """One way in: IMAP on 993 with implicit TLS, SMTP submission on 587 with STARTTLS, ..."""

    protocol: str                # imap | pop3 | smtp
    port: int
    socket: str                  # SSL (implicit TLS) | STARTTLS


@dataclass(frozen=True)
class Settings:
    """What every answer is made from: the parts of the configuration that clients need."""

    hostname: str
    domains: tuple[str, ...]
    offers: tuple[Offer, ...]

    def best(self, protocol: str) -> Offer | None:
        """The preferred offer of a protocol, for clients that take one (Outlook, Apple)."""
        return next((offer for offer in self.offers if offer.protocol == protocol), None)

    @property
    def usable(self) -> bool:
        """A client needs a way to read mail and a way to send it."""
        return bool((self.best("imap") or self.best("pop3")) and self.best("smtp"))


def settings(cfg: Any) -> Settings:
    """The offers of `[listen]`: a service that is off, or not on TCP, is left out."""
    offers = []
    for protocol, key, socket in SERVICES:
        bound = listen_port(getattr(cfg.listen, key, ""))
        if bound is not None:
            offers.append(Offer(protocol, bound[0], socket))
    return Settings(cfg.appliance.hostname, tuple(cfg.appliance.domains), tuple(offers))


class BadInput(ValueError):
    """Input a client should not have sent: answered with a 4xx, never echoed."""


def mail_address(text: str, known: tuple[str, ...]) -> str | None:
    """`local@domain` with the domain normalised, when it is a valid address; BadInput otherwise.
    None when the domain is not one of ours (a 404, or Autodiscover's error 500)."""
    text = text.strip()
    # printable only: a control, unassigned or private-use character has no business in an address,
    # and some (U+FFFE) cannot be written in the XML of the answers at all
    if len(text) > MAX_ADDRESS or not text.isprintable() or not address.is_valid(text):
        raise BadInput("not a mail address")
    local, domain = address.split(text)
    return f"{local}@{domain}" if domain in known else None


def query_address(request: Any) -> str | None:
    """The `emailaddress` query argument, decoded; None when absent. BadInput when it is garbled."""
    values = request.args.get(b"emailaddress")
    if not values:
        return None
    if len(values) > 1 or len(values[0]) > MAX_ADDRESS * 4:
        raise BadInput("one emailaddress, please")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("not UTF-8") from None


def _plain(request: Any, code: int, text: str) -> bytes:
    """A short fixed explanation: error bodies never contain what the client sent."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text.encode("utf-8") + b"\n"


def _headers(request: Any, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-cache")


class _Leaf(Resource):
    """A resource at one exact path: anything below it (`/mail/config-v1.1.xml/x`) is not found."""

    isLeaf = True

    def __init__(self, setup: Settings) -> None:
        super().__init__()
        self.setup = setup

    def render(self, request: Any) -> bytes:
        if request.postpath and request.postpath != [b""]:
            return _plain(request, 404, "not found")
        allowed = self.methods()
        if request.method not in allowed:
            # answered here, not by twisted.web: it says 501 for methods it does not know (DELETE)
            request.setHeader(b"allow", b", ".join(allowed))
            return _plain(request, 405, "method not allowed")
        if not self.setup.usable:
            return _plain(request, 404, "this server offers no mail client access (no IMAP/POP3 or no submission)")
        return super().render(request)

    def methods(self) -> list[bytes]:
        """The methods with a render_ method; HEAD wherever GET is (twisted.web answers it from GET)."""
        found = [name.encode() for name in ("GET", "POST") if hasattr(self, f"render_{name}")]
        return found + [b"HEAD"] * (b"GET" in found)


# ---------------------------------------------------------------- Thunderbird

class ThunderbirdConfig(_Leaf):
    """GET clientConfig 1.1 (the format Thunderbird's readFromXML reads)."""

    def render_GET(self, request: Any) -> bytes:
        try:
            given = query_address(request)
            found = mail_address(given, self.setup.domains) if given is not None else None
        except BadInput:
            return _plain(request, 400, "emailaddress must be one mail address")
        if given is not None and found is None:
            return _plain(request, 404, "this server does not serve mail for that domain")
        domain = address.domain_of(found) if found else self._domain_from_host(request)
        _headers(request, b"text/xml; charset=utf-8")
        return client_config(self.setup, domain)

    def _domain_from_host(self, request: Any) -> str:
        """Without an address, `autoconfig.DOMAIN` in the Host header says which domain is meant."""
        host = (request.getRequestHostname() or b"").decode("ascii", "replace").lower().rstrip(".")
        domain = host.removeprefix("autoconfig.")
        return domain if domain in self.setup.domains else self.setup.domains[0]


def client_config(setup: Settings, domain: str) -> bytes:
    """The clientConfig document: every domain of ours, every offer, the login `%EMAILADDRESS%`."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    for name in [domain] + [d for d in setup.domains if d != domain]:
        ET.SubElement(provider, "domain").text = name
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for offer in setup.offers:
        kind = "outgoingServer" if offer.protocol == "smtp" else "incomingServer"
        server = ET.SubElement(provider, kind, type=offer.protocol)
        for tag, text in (("hostname", setup.hostname), ("port", str(offer.port)), ("socketType", offer.socket),
                          ("username", "%EMAILADDRESS%"), ("authentication", "password-cleartext")):
            ET.SubElement(server, tag).text = text
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# ---------------------------------------------------------------- Outlook (Autodiscover POX)

@dataclass(frozen=True)
class AutodiscoverRequest:
    email: str
    schema: str


def parse_autodiscover(body: bytes) -> AutodiscoverRequest:
    """The EMailAddress and AcceptableResponseSchema of a POX request; BadInput for anything else.

    expat directly, with a DOCTYPE refused outright: without a DTD no entity can be declared, so
    nothing expands (billion laughs) and nothing is fetched (external entities). Elements are
    matched by local name: clients differ in how carefully they set the request namespace.
    """
    if len(body) > MAX_BODY:
        raise BadInput("too large")
    parser = expat.ParserCreate(namespace_separator=" ")
    path: list[str] = []
    texts: dict[str, str] = {}

    def start(name: str, attributes: dict) -> None:
        path.append(name.rsplit(" ", 1)[-1])
        if len(path) > MAX_DEPTH:
            raise BadInput("too deep")

    def end(name: str) -> None:
        path.pop()

    def data(text: str) -> None:
        if len(path) == 3 and path[:2] == ["Autodiscover", "Request"]:
            texts[path[2]] = texts.get(path[2], "") + text

    def refuse(*args: Any) -> None:
        raise BadInput("DOCTYPE refused")

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, ValueError, LookupError, UnicodeError) as exc:
        raise BadInput("not XML") from exc
    email = texts.get("EMailAddress", "").strip()
    if not email:
        raise BadInput("no EMailAddress")
    return AutodiscoverRequest(email, texts.get("AcceptableResponseSchema", NS_OUTLOOK).strip())


class Autodiscover(_Leaf):
    """POST the Outlook request, get the IMAP/POP3/SMTP settings (or an Autodiscover error)."""

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read(MAX_BODY + 1)
        _headers(request, b"text/xml; charset=utf-8")
        try:
            asked = parse_autodiscover(body)
        except BadInput:
            request.setResponseCode(413 if len(body) > MAX_BODY else 400)
            return autodiscover_error(self.setup, 600, "Invalid Request")
        if asked.schema != NS_OUTLOOK:
            return autodiscover_error(self.setup, 601, "Provider is not available")
        try:
            email = mail_address(asked.email, self.setup.domains)
        except BadInput:
            email = None
        if email is None:
            return autodiscover_error(self.setup, 500, "The e-mail address cannot be found.")
        return autodiscover_settings(self.setup, email)


def _autodiscover_root() -> tuple[ET.Element, ET.Element]:
    """Autodiscover (response schema 2006) holding Response (outlook 2006a), both as default namespaces,
    the way Exchange writes them."""
    root = ET.Element("Autodiscover", xmlns=NS_RESPONSE)
    return root, ET.SubElement(root, "Response", xmlns=NS_OUTLOOK)


def autodiscover_settings(setup: Settings, email: str) -> bytes:
    """Account/Protocol per protocol (its preferred offer): IMAP first, so Outlook picks it over POP3."""
    root, response = _autodiscover_root()
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    for protocol in ("imap", "pop3", "smtp"):
        offer = setup.best(protocol)
        if offer is None:
            continue
        entry = ET.SubElement(account, "Protocol")
        for tag, text in (("Type", protocol.upper()), ("Server", setup.hostname), ("Port", str(offer.port)),
                          ("DomainRequired", "off"), ("LoginName", email), ("SPA", "off"), ("SSL", "on"),
                          # MS-OXDSCLI: Encryption overrides SSL; TLS is STARTTLS, SSL implicit TLS
                          ("Encryption", "SSL" if offer.socket == "SSL" else "TLS"),
                          ("AuthRequired", "on")):
            ET.SubElement(entry, tag).text = text
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def autodiscover_error(setup: Settings, code: int, message: str) -> bytes:
    """An error response (MS-OXDSCLI ErrorCode: 500 unknown address, 600 invalid request, 601 no
    provider for the schema asked for). Id is a hash of the server's name, as Exchange's is."""
    root, response = _autodiscover_root()
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    error = ET.SubElement(response, "Error", Time=stamp, Id=str(zlib.crc32(setup.hostname.encode())))
    ET.SubElement(error, "ErrorCode").text = str(code)
    ET.SubElement(error, "Message").text = message
    ET.SubElement(error, "DebugData")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# ---------------------------------------------------------------- Apple (.mobileconfig)

class MobileConfig(_Leaf):
    """GET with ?emailaddress= -> the profile; without -> a small form asking for the address."""

    def render_GET(self, request: Any) -> bytes:
        try:
            given = query_address(request)
            email = mail_address(given, self.setup.domains) if given is not None else None
        except BadInput:
            return _plain(request, 400, "emailaddress must be one mail address")
        if given is None:
            _headers(request, b"text/html; charset=utf-8")
            return address_form(self.setup)
        if email is None:
            return _plain(request, 404, "this server does not serve mail for that domain")
        _headers(request, b"application/x-apple-aspen-config")
        filename = address.domain_of(email).encode("ascii") + b".mobileconfig"
        request.setHeader(b"content-disposition", b'attachment; filename="' + filename + b'"')
        return mobileconfig(self.setup, email)


def profile_link(email: str) -> str:
    """The URL path of an address's profile (for the status page or a welcome mail)."""
    return f"{MOBILECONFIG_PATH.decode()}?emailaddress={quote(email, safe='@')}"


def address_form(setup: Settings) -> bytes:
    """A form without JavaScript: type the address, get the profile."""
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Mail setup</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"></head><body>"
            f"<h1>Mail on {html.escape(setup.hostname)}</h1>"
            f"<form method=\"get\" action=\"{MOBILECONFIG_PATH.decode()}\">"
            f"<label>Your mail address <input type=\"email\" name=\"emailaddress\" required></label> "
            f"<button type=\"submit\">Get the profile</button></form>"
            f"<p>The profile sets up mail on an iPhone, iPad or Mac; the device asks for your password.</p>"
            f"</body></html>\n")
    return page.encode("utf-8")


def _reverse(hostname: str) -> str:
    return ".".join(reversed(hostname.split(".")))


def mobileconfig(setup: Settings, email: str) -> bytes:
    """The profile: one com.apple.mail.managed payload, no password keys (the device asks).

    The UUIDs and identifier are derived from the address, so downloading the profile again
    replaces the installed one instead of adding a second account.
    """
    canonical = address.normalise(email)
    incoming = setup.best("imap") or setup.best("pop3")
    outgoing = setup.best("smtp")
    assert incoming is not None and outgoing is not None       # _Leaf.render answered 404 otherwise
    identifier = f"{_reverse(setup.hostname)}.mailappliance.{uuid.uuid5(PROFILE_NAMESPACE, canonical)}"
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.mail",
        "PayloadUUID": str(uuid.uuid5(PROFILE_NAMESPACE, f"mail:{canonical}")).upper(),
        "PayloadDisplayName": f"Mail: {email}",
        "EmailAccountDescription": email,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": email,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": setup.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,        # on a STARTTLS port the device upgrades with STARTTLS
        "IncomingMailServerUsername": email,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": setup.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": email,
        "OutgoingPasswordSameAsIncomingPassword": True,   # one password prompt, not two
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid5(PROFILE_NAMESPACE, f"profile:{canonical}")).upper(),
        "PayloadDisplayName": f"Mail ({address.domain_of(email)})",
        "PayloadDescription": f"Mail for {email} on {setup.hostname}",
        "PayloadOrganization": address.domain_of(email),
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# ---------------------------------------------------------------- the paths

def resources(cfg: Any) -> dict[bytes, Resource]:
    """Public resources by path, mounted by site.py without access control (clients ask before login)."""
    setup = settings(cfg)
    thunderbird, outlook = ThunderbirdConfig(setup), Autodiscover(setup)
    return {
        b"/mail/config-v1.1.xml": thunderbird,
        b"/.well-known/autoconfig/mail/config-v1.1.xml": thunderbird,
        b"/autodiscover/autodiscover.xml": outlook,
        b"/Autodiscover/Autodiscover.xml": outlook,        # Outlook's own spelling; twisted.web paths are case-sensitive
        MOBILECONFIG_PATH: MobileConfig(setup),
    }


class _Folder(Resource):
    """An intermediate path segment (`/mail`, `/.well-known`): not a page of its own."""

    def render(self, request: Any) -> bytes:
        return _plain(request, 404, "not found")


def mount(root: Resource, table: dict[bytes, Resource]) -> None:
    """Put each resource at its path below `root`, making the folders on the way (for site.py and tests)."""
    for path, leaf in table.items():
        parts = path.strip(b"/").split(b"/")
        node = root
        for part in parts[:-1]:
            child = node.children.get(part)
            if child is None:
                child = _Folder()
                node.putChild(part, child)
            node = child
        node.putChild(parts[-1], leaf)
