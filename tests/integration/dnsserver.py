"""A real authoritative DNS server on loopback (`twistd dns --pyzone`), serving zones a test writes.

It runs as its own process, so both in-process tests and an appliance started as a `twistd`
subprocess can resolve through it. Nothing outside Twisted is installed for it.
Standard library only, like harness.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.integration.harness import default_bindir, end_process, log_tail

START_TIMEOUT = 15.0


def mx(name: str, preference: int, exchange: str) -> str:
    """An MX record; exchange "" is the root, i.e. a null MX (RFC 7505) when preference is 0."""
    return f"MX({name!r}, {preference}, {exchange!r})"


def a(name: str, address: str) -> str:
    return f"A({name!r}, {address!r})"


def aaaa(name: str, address: str) -> str:
    return f"AAAA({name!r}, {address!r})"


def txt(name: str, *strings: str) -> str:
    """A TXT record of one or more character-strings (SPF, DKIM and DMARC records, DNSBL texts).

    twisted.names encodes TXT data as bytes (a str fails when the answer is sent: SERVFAIL).
    """
    return f"TXT({name!r}, {', '.join(repr(part.encode()) for part in strings)})"


def ptr(name: str, target: str) -> str:
    """A PTR record: name is the reverse name (9.2.0.192.in-addr.arpa)."""
    return f"PTR({name!r}, {target!r})"


def srv(name: str, priority: int, weight: int, port: int, target: str) -> str:
    """An SRV record (RFC 2782); target "" is the root: `0 0 0 .`, the service is not offered."""
    return f"SRV({name!r}, {priority}, {weight}, {port}, {target!r})"


def cname(name: str, target: str) -> str:
    return f"CNAME({name!r}, {target!r})"


def reverse_name(ip: str) -> str:
    """The in-addr.arpa or ip6.arpa name of an address."""
    import ipaddress
    return ipaddress.ip_address(ip).reverse_pointer


def free_udp_tcp_port() -> int:
    """A loopback port free for both UDP and TCP right now (DNS answers on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _answers(port: int, name: str) -> bool:
    """True once the server answers a UDP query for `name`'s SOA (any reply counts)."""
    labels = b"".join(bytes([len(part)]) + part.encode("ascii") for part in name.split("."))
    query = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x06\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(query, ("127.0.0.1", port))
            return sock.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


class DNSServer:
    """`twistd -n dns` on 127.0.0.1:port, authoritative for the zones given.

    zones maps an origin ("example.test") to its records, made with mx()/a()/aaaa(); an SOA is added.
    A name without records is NXDOMAIN; a name with records but none of the asked type is NODATA.
    """

    def __init__(self, root: str, zones: dict[str, list[str]], bindir: str | None = None) -> None:
        self.root = os.path.abspath(root)
        self.zones = zones
        self.bindir = bindir or default_bindir()
        self.port = free_udp_tcp_port()
        self.log_path = os.path.join(self.root, "dns.log")
        self.process: subprocess.Popen | None = None

    def _write_zone(self, origin: str, records: list[str]) -> str:
        path = os.path.join(self.root, f"{origin}.zone.py")
        soa = (f"SOA({origin!r}, mname='ns.{origin}', rname='hostmaster.{origin}', serial=1, refresh=3600,"
               f" retry=600, expire=86400, minimum=60, ttl=60)")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("zone = [\n" + "".join(f"    {line},\n" for line in [soa, *records]) + "]\n")
        return path

    def start(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        zone_args = [f"--pyzone={self._write_zone(origin, records)}" for origin, records in self.zones.items()]
        command = [os.path.join(self.bindir, "twistd"), "-n", "--pidfile=", f"--logfile={self.log_path}",
                   "dns", "--interface=127.0.0.1", f"--port={self.port}", *zone_args]
        self.process = subprocess.Popen(command, cwd=self.root, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        probe = next(iter(self.zones))
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port, probe):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"DNS server did not start; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        end_process(self.process, 5)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    @property
    def nameserver(self) -> str:
        """The `[delivery] nameservers` value that points at this server."""
        return f"127.0.0.1:{self.port}"
