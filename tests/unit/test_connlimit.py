"""Issue 10, defect 4: connection exhaustion. Every listener counts in one table (appliance.connlimit).

Driven as bytes: the real SMTP, POP3 and IMAP factories, each wrapped as tap.py wraps it, over
StringTransport, with time from a task.Clock.
"""
from __future__ import annotations

import pytest
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport

from appliance import address, connlimit
from appliance.config import LimitsSection, TLSSection
from appliance.imap import FolderWatcher, IMAPFactory
from appliance.inline import InlinePool, InlineReactor
from appliance.realm import AuthThrottle, Login, MailRealm
from tests.unit.imap.harness import Checker
from tests.unit.test_pop3 import World
from tests.unit.test_smtp_server import Rig, plain


def test_what_counts_as_one_client():
    assert connlimit.client_key("192.0.2.7") == "192.0.2.7"
    assert connlimit.client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert connlimit.client_key("2001:db8:1:2::1") == connlimit.client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert connlimit.client_key("2001:db8:1:3::1") != connlimit.client_key("2001:db8:1:2::1")
    assert connlimit.client_key("fe80::1%eth0") == "fe80::/64"
    assert connlimit.client_key("/run/socket") == "/run/socket"


class Listeners:
    """SMTP (port 25), POP3 and IMAP listeners sharing one table, as tap.build wires them."""

    def __init__(self, per_client=3, per_service=1000, reserve=10, descriptors=1024, trusted="") -> None:
        self.clock = InlineReactor()
        self.table = connlimit.ConnectionTable(per_client=per_client, per_service=per_service,
                                               descriptor_reserve=reserve, descriptors=descriptors,
                                               exempt=address.parse_networks(trusted))
        self.smtp_rig = Rig("mx", idle_timeout_prelogin=60)
        self.smtp_rig.factory.clock = self.clock
        self.pop3_world = World()
        self.imap_factory = IMAPFactory(
            login=Login(Portal(MailRealm(None), [Checker()]), AuthThrottle(self.clock), self.clock),
            tls=None, tls_settings=TLSSection("", ""), implicit_tls=False, reactor=self.clock,
            pool=InlinePool(), watcher=FolderWatcher(self.clock, InlinePool()), prelogin_timeout=60)
        self.factories = {
            "smtp": connlimit.LimitedFactory(self.smtp_rig.factory, self.table, "smtp", "smtp", self.clock),
            "pop3": connlimit.LimitedFactory(self.pop3_world.factory, self.table, "pop3", "pop3", self.clock),
            "pop3s": connlimit.LimitedFactory(self.pop3_world.factory, self.table, "pop3", "pop3s", self.clock),
            "imap": connlimit.LimitedFactory(self.imap_factory, self.table, "imap", "imap", self.clock),
        }

    def connect(self, listener: str, host: str, settle: bool = True):
        """A new connection; with `settle`, a refused one is closed as the reactor would after its answer."""
        peer = IPv6Address("TCP", host, 4000) if ":" in host else IPv4Address("TCP", host, 4000)
        protocol = self.factories[listener].buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        if settle and isinstance(protocol, connlimit.Refusal):
            protocol.connectionLost(None)
        return protocol, transport


def test_pop3_per_client_limit_and_the_ipv4_mapped_form_is_the_same_client():
    world = Listeners(per_client=3)
    for host in ("192.0.2.1", "::ffff:192.0.2.1", "192.0.2.1"):
        _, transport = world.connect("pop3", host)
        assert transport.value().startswith(b"+OK")
    _, transport = world.connect("pop3s", "::ffff:192.0.2.1")      # the TLS port counts with the plain one
    assert transport.value() == b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
    assert transport.disconnecting
    _, transport = world.connect("pop3", "192.0.2.2")              # another client is served
    assert transport.value().startswith(b"+OK")


def test_imap_per_client_limit_counts_an_ipv6_64_as_one_client():
    world = Listeners(per_client=2)
    world.connect("imap", "2001:db8:5:6::1")
    world.connect("imap", "2001:db8:5:6::abcd")
    _, transport = world.connect("imap", "2001:db8:5:6:1:2:3:4")
    assert transport.value() == b"* BYE Too many connections from your address\r\n"
    _, transport = world.connect("imap", "2001:db8:5:7::1")
    assert transport.value().startswith(b"* OK")


def test_closing_a_connection_frees_its_place():
    world = Listeners(per_client=1)
    protocol, transport = world.connect("pop3", "192.0.2.1")
    assert world.connect("pop3", "192.0.2.1")[1].value().startswith(b"-ERR [SYS/TEMP]")
    protocol.connectionLost(None)
    assert world.table.total == 0
    assert world.connect("pop3", "192.0.2.1")[1].value().startswith(b"+OK")


def test_trusted_networks_have_no_per_client_limit_but_a_service_cap():
    world = Listeners(per_client=1, per_service=5, trusted="127.0.0.0/8")
    answers = [world.connect("smtp", "127.0.0.1")[1].value()[:3] for _ in range(6)]
    assert answers == [b"220"] * 5 + [b"421"]


def test_smtp_refusal_is_421_470():
    world = Listeners(per_client=1)
    world.connect("smtp", "198.51.100.1")
    assert world.connect("smtp", "198.51.100.1")[1].value() == b"421 4.7.0 Too many connections from your address\r\n"


def test_idle_pop3_and_imap_from_one_address_do_not_stop_smtp_for_another_client():
    """300 idle POP3 connections under a 256-descriptor limit took SMTP down (the issue): now each
    service has its share of the descriptors, and SMTP still greets a newcomer."""
    world = Listeners(per_client=10_000, reserve=16, descriptors=256)
    pop3_answers = [world.connect("pop3", "203.0.113.9")[1].value()[:4] for _ in range(300)]
    imap_answers = [world.connect("imap", "203.0.113.9")[1].value()[:5] for _ in range(300)]
    share = (256 - 16) // 3
    assert pop3_answers.count(b"+OK ") == share and imap_answers.count(b"* OK ") == share
    assert pop3_answers[share:] == [b"-ERR"] * (300 - share)
    _, transport = world.connect("smtp", "192.0.2.50")
    assert transport.value().startswith(b"220 ")
    assert world.table.total + world.table.descriptor_reserve <= 256


def test_descriptor_reserve_refuses_every_service_when_the_process_is_full():
    world = Listeners(per_client=10_000, per_service=10_000, reserve=4, descriptors=10)
    world.factories["smtp"].table.register("smtp")
    opened = [world.connect("pop3", "203.0.113.9")[1].value()[:3] for _ in range(6)]
    assert opened.count(b"+OK") == 2          # (10 - 4) // 3 kinds
    world.table.total = 6                     # other services hold the rest
    assert world.connect("smtp", "192.0.2.1")[1].value() == b"421 4.7.0 Too many connections, try again later\r\n"


def test_refused_client_that_never_reads_is_cut_off():
    world = Listeners(per_client=0)
    protocol, transport = world.connect("imap", "192.0.2.1", settle=False)
    transport.abortConnection = lambda: setattr(transport, "aborted", True)
    world.clock.advance(connlimit.REFUSAL_GRACE)
    assert getattr(transport, "aborted", False)


# ---- short idle timeouts before login -------------------------------------------------------------------

def test_pop3_prelogin_idle_timeout_is_short():
    world = Listeners()
    clock = world.pop3_world.reactor
    _, transport = world.connect("pop3", "192.0.2.1")
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and transport.value().endswith(b"-ERR Autologout timer expired, closing connection\r\n")


def test_imap_prelogin_idle_timeout_is_short():
    world = Listeners()
    protocol, transport = world.connect("imap", "192.0.2.1")
    world.clock.advance(60)
    assert transport.disconnecting


def test_smtp_says_421_to_a_client_silent_before_ehlo_but_waits_5_minutes_after():
    world = Listeners()
    _, silent = world.connect("smtp", "192.0.2.1")
    protocol, greeted = world.connect("smtp", "192.0.2.2")
    protocol.dataReceived(b"EHLO client.example\r\n")
    world.clock.advance(60)
    assert silent.disconnecting and silent.value().endswith(b"421 4.4.2 Timeout, closing connection\r\n")
    assert not greeted.disconnecting
    world.clock.advance(240)
    assert greeted.disconnecting


def test_submission_prelogin_timeout_lasts_until_auth():
    rig = Rig("submission", plaintext_ok="192.0.2.0/24", idle_timeout_prelogin=60)
    rig.send(b"EHLO c\r\n")
    assert rig.proto.timeout == 60
    rig.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"secret") + b"\r\n")
    assert rig.proto.timeout == LimitsSection().command_timeout


def test_imap_keeps_thirty_minutes_after_login(tmp_path):
    from tests.unit.imap.harness import Session, SyncReactor
    reactor = SyncReactor()
    session = Session(reactor, tmp_path, implicit=True)
    session.login()
    reactor.advance(29 * 60)
    assert not session.transport.disconnecting
    reactor.advance(60)
    assert session.transport.disconnecting


def test_refusals_in_flight_count_against_the_descriptors_and_are_dropped_when_short():
    world = Listeners(per_client=0, reserve=8, descriptors=20)
    refusals = [world.connect("imap", "192.0.2.1", settle=False) for _ in range(16)]
    assert world.table.total == 16                       # each refusal holds a descriptor until it closes
    assert world.factories["imap"].buildProtocol(IPv4Address("TCP", "192.0.2.1", 1)) is None
    for protocol, _ in refusals:
        protocol.connectionLost(None)
    assert world.table.total == 0
