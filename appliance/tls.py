"""Server TLS from [tls]: one context for STARTTLS and implicit TLS, replaced on reload (SIGHUP)."""
from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from appliance import maillog
from appliance.config import TLSSection
from appliance.errors import ConfigError

# Older versions are never offered: raiseMinimumTo also excludes SSLv3, TLS 1.0 and 1.1.
_MINIMUM = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_CERTIFICATE_DAYS = 3650
# TLS 1.2 suites: Mozilla's "intermediate" profile (v5.7), forward-secret AEAD only. No CBC and no
# SHA-1 MAC (Lucky13, POODLE-style padding oracles), no static RSA key exchange (no forward secrecy).
# DHE suites are listed as Mozilla does but stay unused: no DH parameters are loaded. TLS 1.3
# suites are set apart by OpenSSL and are all AEAD: they are left as they are.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                 "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")


class TLSFileError(Exception):
    """A certificate or key file that cannot be used; `key` names the [tls] key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The server's TLS settings, usable with `transport.startTLS()` and TLSMemoryBIOFactory.

    Each new connection takes the current context, so a reload changes certificates for new
    connections without touching the ones already open.
    """

    def __init__(self, section: TLSSection, source: str = ""):
        """Load the certificate now; raise ConfigError when [tls] names files that cannot be used."""
        self._section = section
        self._source = source          # the configuration file, for problem lines
        self._context: SSL.Context | None = None
        problem = self.reload()
        if problem:
            raise ConfigError([problem])

    @property
    def available(self) -> bool:
        """False when [tls] certificate is empty: STARTTLS is then not offered."""
        return bool(self._section.certificate)

    def getContext(self) -> SSL.Context:
        if self._context is None:
            raise RuntimeError("TLS is not configured: [tls] certificate is empty")
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)

    def reload(self) -> str | None:
        """Re-read the files; on a problem keep the old context and return the problem line."""
        if not self.available:
            return None
        try:
            self._context = make_context(self._section)
        except TLSFileError as exc:
            return f"{self._source}: [tls] {exc.key}: {exc}"
        return None

    def adopt(self, other: "ServerTLS") -> None:
        """Put in service the settings and context a reload built aside (appliance.reload).

        This object stays the one every listener and session holds, so new connections and a
        later STARTTLS get the new pair, while an established TLS connection keeps the
        SSL.Connection (and context) it was made with: nobody is dropped.
        """
        self._section, self._source, self._context = other._section, other._source, other._context


def make_context(section: TLSSection) -> SSL.Context:
    """A server context for the chain and key in `section`, refusing versions below min_version."""
    key, chain = load_pair(section.certificate, section.key)
    options = ssl.CertificateOptions(privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
                                     raiseMinimumTo=_MINIMUM[section.min_version],
                                     acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS))
    try:
        context = options.getContext()
    except SSL.Error as exc:
        raise TLSFileError("certificate", f"OpenSSL refused {section.certificate}: {exc}") from None
    # An idle TLS connection (IMAP IDLE, a quiet POP3 session) then holds no 34 KiB read and
    # write buffers: the difference between ~100 KiB and ~60 KiB per idle client.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_alpn_select_callback(_no_alpn)
    return context


def _no_alpn(connection: SSL.Connection, offered: list[bytes]) -> object:
    """Go on without ALPN, whatever the client offers (RFC 7301 3.2 allows no answer): every
    listener speaks one protocol, HTTP/1.1 for the web one. Twisted's own callback answered b""
    when nothing matched, which pyOpenSSL turns into a TLS "internal error" alert: every browser,
    and any client offering ALPN, could not connect."""
    return SSL.NO_OVERLAPPING_PROTOCOLS


def load_pair(cert_path: str, key_path: str) -> tuple[crypto.PKey, list[crypto.X509]]:
    """The PEM chain (leaf first) and its private key; TLSFileError when unusable or not matching."""
    certificates = _read_certificates(cert_path)
    key = _read_key(key_path)
    if _public_bytes(certificates[0].public_key()) != _public_bytes(key.public_key()):
        raise TLSFileError("key", f"{key_path} does not match the certificate {cert_path}")
    return (crypto.PKey.from_cryptography_key(key),
            [crypto.X509.from_cryptography(certificate) for certificate in certificates])


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TLSFileError(key, f"cannot read {path}: {exc.strerror}; "
                                "`mailappliance gen-cert` writes a self-signed pair") from None


def _read_certificates(path: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_read(path, "certificate"))
    except ValueError:
        raise TLSFileError("certificate", f"{path} holds no PEM certificate") from None


def _read_key(path: str):
    try:
        return serialization.load_pem_private_key(_read(path, "key"), password=None)
    except TypeError:
        raise TLSFileError("key", f"{path} is encrypted; the appliance needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSFileError("key", f"{path} holds no PEM private key") from None


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def implicit(factory: IProtocolFactory, server_tls: ServerTLS) -> TLSMemoryBIOFactory:
    """The factory for smtps, pop3s and imaps: TLS from the first byte, then `factory`'s protocol."""
    return TLSMemoryBIOFactory(server_tls, False, factory)


def session_info(transport: object) -> tuple[str, str] | None:
    """(protocol version, cipher) of a TLS connection after its handshake; None for plain connections."""
    connection = _tls_connection(transport)
    if connection is None:
        return None
    cipher = connection.get_cipher_name()
    if not cipher:
        return None
    return connection.get_protocol_version_name(), cipher


def _tls_connection(transport: object) -> SSL.Connection | None:
    """Walk down through protocol wrappers to the OpenSSL connection, if there is one."""
    for _ in range(8):  # wrappers (policies, TLS) nest a few levels at most
        if transport is None:
            return None
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if callable(get_handle) else None
        if isinstance(handle, SSL.Connection):
            return handle
        transport = getattr(transport, "transport", None)
    return None


# Also in every self-signed certificate: mail clients on the machine itself (msmtp, fetchmail,
# neomutt pointed at 127.0.0.1 or localhost) check the name they connected to, and the demo's
# hostname resolves nowhere.
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


def generate_self_signed(hostname: str, cert_path: str, key_path: str) -> None:
    """Write a new EC P-256 key (mode 0600) and a ten-year self-signed certificate for `hostname`,
    localhost, 127.0.0.1 and ::1; clients trust it by naming the certificate file as their CA file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName(_self_signed_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(key_path, key_pem, 0o600)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _self_signed_names(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dict.fromkeys((hostname, *LOOPBACK_NAMES))]
    return names + [x509.IPAddress(ipaddress.ip_address(address)) for address in LOOPBACK_ADDRESSES]


def _write(path: str, data: bytes, mode: int) -> None:
    """Replace `path` whole, with `mode` whatever the umask, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
    os.replace(temporary, path)


def log_once(conn: object, service: str) -> None:
    """Log a connection's TLS version and cipher once, as soon as the handshake has made them known.

    `conn` is a protocol with `transport`, `peer` and `secure` (SMTP, POP3 and IMAP all have them).
    """
    if getattr(conn, "secure", False) and not getattr(conn, "_tls_logged", False):
        info = session_info(conn.transport)  # type: ignore[attr-defined]
        if info:
            conn._tls_logged = True  # type: ignore[attr-defined]
            maillog.tls(service, conn.peer, *info, session=getattr(conn, "sid", ""))  # type: ignore[attr-defined]


def log_failure(conn: object, service: str, reason: object) -> None:
    """Log a `tls-failed` line when a connection ended on a TLS error (called from connectionLost).

    A handshake that fails (the client refuses our certificate, no shared version or cipher,
    plaintext sent to a TLS port) reaches the protocol only as the reason it lost its connection,
    as pyOpenSSL's SSL.Error: without this line the log shows a connect and a disconnect, no why.
    """
    text = failure_reason(reason)
    if text is not None:
        maillog.tls_failed(service, getattr(conn, "peer", ""), text, session=getattr(conn, "sid", ""))


def failure_reason(reason: object) -> str | None:
    """OpenSSL's words for a connection lost to a TLS error ("tlsv1 alert unknown ca"); None for any other end."""
    error = getattr(reason, "value", None)
    if not isinstance(error, SSL.Error):
        return None
    details = error.args[0] if error.args and isinstance(error.args[0], list) else []
    words = [str(item[-1]) for item in details if isinstance(item, tuple) and item and item[-1]]
    return "; ".join(words) or str(error) or type(error).__name__
