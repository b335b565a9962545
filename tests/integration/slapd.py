"""A throwaway OpenLDAP server (Debian's slapd) on a free loopback port, for tests and bench/.

Each `Slapd` gets its own cn=config (built offline with `slapadd -n0` from the standard
schemas), its own mdb database for dc=example,dc=test, and optionally its own test CA and
server certificate for ldaps:// and StartTLS. It can be stopped, restarted on the same ports,
and paused with SIGSTOP to play a directory that accepts connections but never answers.
Nothing here uses or touches a system-wide slapd.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import time

from tests.integration.harness import free_port

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SLAPPASSWD = "/usr/sbin/slappasswd"
LDAPADD = "/usr/bin/ldapadd"
LDAPSEARCH = "/usr/bin/ldapsearch"
LDAPMODIFY = "/usr/bin/ldapmodify"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "misc")
PACKAGES = "slapd ldap-utils"

BASE_DN = "dc=example,dc=test"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "root-secret"
SERVICE_DN = f"cn=mailappliance,{BASE_DN}"
SERVICE_PASSWORD = "service-secret"
START_TIMEOUT = 10.0


def require_slapd() -> None:
    """Skip when slapd or ldap-utils are missing; under CI (CI set), fail instead."""
    import pytest

    missing = [path for path in (SLAPD, SLAPADD, SLAPPASSWD, LDAPADD, LDAPSEARCH) if not os.access(path, os.X_OK)]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: apt-get install {PACKAGES}"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def password_hash(scheme: str, password: str) -> str:
    """A userPassword value made by slappasswd: scheme is "{SSHA}" or "{CRYPT}" (SHA-512 crypt)."""
    command = [SLAPPASSWD, "-h", scheme, "-s", password]
    if scheme == "{CRYPT}":
        command += ["-c", "$6$%.16s"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


class SlapdError(RuntimeError):
    """slapd or one of its tools failed; the message carries their output."""


class Slapd:
    """One slapd process and its files below `folder`.

    `tls=True` also listens on ldaps:// and offers StartTLS with a certificate for `tls_names`
    signed by a fresh test CA (`ca_file`). `service_reads_passwords=True` lets the
    service account read userPassword (needed only for shared secrets); by default it may not.
    """

    def __init__(self, folder: str, tls: bool = False, service_reads_passwords: bool = False,
                 tls_names: tuple[str, ...] = ("127.0.0.1", "localhost")):
        self.folder = folder
        self.tls = tls
        self.tls_names = tls_names
        self.service_reads_passwords = service_reads_passwords
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.ca_file = os.path.join(folder, "ca.pem") if tls else ""
        self._config_dir = os.path.join(folder, "slapd.d")
        self._data_dir = os.path.join(folder, "data")
        self._process: subprocess.Popen | None = None
        self._log = os.path.join(folder, "slapd.log")

    # ---- addresses ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    # ---- life cycle --------------------------------------------------------------------------
    def setup(self, entries_ldif: str = "") -> None:
        """Write cn=config and load the base tree, the service account and `entries_ldif`."""
        os.makedirs(self._config_dir)
        os.makedirs(self._data_dir)
        if self.tls:
            write_test_certificates(self.folder, list(self.tls_names))
        self._slapadd("0", self._config_ldif())
        self._slapadd("1", self._base_ldif() + "\n" + entries_ldif)

    def start(self) -> None:
        """Start slapd in the foreground (-d 0) and wait until it answers a search."""
        if self._process is not None:
            return
        urls = self.url + (f" {self.ldaps_url}" if self.tls else "")
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen([SLAPD, "-F", self._config_dir, "-h", urls, "-d", "0"],
                                             stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SlapdError(f"slapd did not start: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate slapd (resuming it first if paused); files stay for a later start()."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing is ever answered."""
        assert self._process is not None, "slapd is not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None, "slapd is not running"
        self._process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- data --------------------------------------------------------------------------------
    def add(self, ldif: str) -> None:
        """Add entries to the running server as the root DN."""
        self._run([LDAPADD, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD], ldif)

    def modify(self, ldif: str) -> None:
        """Apply an LDIF of changes (changetype: modify) to the running server as the root DN."""
        self._run([LDAPMODIFY, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD], ldif)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self._log, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no slapd log)"

    # ---- internals ---------------------------------------------------------------------------
    def _answers(self) -> bool:
        result = subprocess.run([LDAPSEARCH, "-x", "-H", self.url, "-b", "", "-s", "base", "-o", "nettimeout=1",
                                 "(objectClass=*)", "1.1"], capture_output=True)
        return result.returncode == 0

    def _slapadd(self, database: str, ldif: str) -> None:
        self._run([SLAPADD, "-F", self._config_dir, "-n", database, "-q"], ldif)

    def _run(self, command: list[str], stdin: str) -> None:
        result = subprocess.run(command, input=stdin, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlapdError(f"{' '.join(command[:1])} failed ({result.returncode}): {result.stderr or result.stdout}")

    def _config_ldif(self) -> str:
        tls = ""
        if self.tls:
            tls = (f"olcTLSCACertificateFile: {self.ca_file}\n"
                   f"olcTLSCertificateFile: {os.path.join(self.folder, 'server.pem')}\n"
                   f"olcTLSCertificateKeyFile: {os.path.join(self.folder, 'server.key')}\n")
        schemas = "".join(f"include: file:///etc/ldap/schema/{name}.ldif\n\n" for name in SCHEMAS)
        return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {os.path.join(self.folder, 'slapd.pid')}
{tls}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {self._data_dir}
olcDbMaxSize: 67108864
olcSuffix: {BASE_DN}
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PASSWORD}
olcDbIndex: objectClass eq
olcDbIndex: mail,mailLocalAddress,cn eq
olcDbIndex: member eq
{self._acl_ldif()}"""

    def _acl_ldif(self) -> str:
        """The ACLs docs/directory.md recommends: the service account reads, passwords serve only binds."""
        password_readers = f'by dn.exact="{SERVICE_DN}" read ' if self.service_reads_passwords else ""
        return (f"olcAccess: {{0}}to attrs=userPassword by anonymous auth {password_readers}"
                f"by self =xw by * none\n"
                f'olcAccess: {{1}}to * by dn.exact="{SERVICE_DN}" read by self read by * none\n')

    def _base_ldif(self) -> str:
        return f"""dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: mailappliance
userPassword: {password_hash("{SSHA}", SERVICE_PASSWORD)}

dn: ou=people,{BASE_DN}
objectClass: organizationalUnit
ou: people

dn: ou=aliases,{BASE_DN}
objectClass: organizationalUnit
ou: aliases

dn: ou=groups,{BASE_DN}
objectClass: organizationalUnit
ou: groups
"""


def write_test_certificates(folder: str, names: list[str]) -> None:
    """ca.pem, server.pem and server.key in `folder`: a fresh CA and a server certificate for `names`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("mailappliance test CA", ca_key, "mailappliance test CA", ca_key, ca=True)
    server_cert = certificate(names[0], server_key, "mailappliance test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    with open(os.path.join(folder, "ca.pem"), "wb") as out:
        out.write(ca_cert.public_bytes(pem))
    with open(os.path.join(folder, "server.pem"), "wb") as out:
        out.write(server_cert.public_bytes(pem))
    with open(os.path.join(folder, "server.key"), "wb") as out:
        out.write(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
