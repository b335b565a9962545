"""Outbound delivery through a real `twistd mailappliance`: routing, retries, DSNs, restarts and a smarthost.

The appliance resolves through a real DNS server on loopback (`twistd dns`, dnsserver.py) and
delivers to Postfix's smtp-sink on 127.0.0.x ([delivery] nameservers and port point at them).
Retry schedules are shortened to seconds through the config, and every wait is bounded.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.dnsserver import DNSServer, a, mx
from tests.integration.harness import Appliance, free_port, make_message, wait_for
from tests.integration.test_outbound import SMTPSink

MX1, MX2, IMPLICIT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
ZONES = {
    "example.org": [mx("example.org", 10, "mx1.example.org"), mx("example.org", 20, "mx2.example.org"),
                    a("mx1.example.org", MX1), a("mx2.example.org", MX2)],
    "implicit.test": [a("implicit.test", IMPLICIT)],
    "nullmx.test": [mx("nullmx.test", 0, "")],
}
BUSY = ("-r", "RCPT", "-b", "450 4.2.0 mailbox busy")
ALICE = "alice@example.test"
SINK_WAIT = 20.0


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    server = DNSServer(str(tmp_path_factory.mktemp("dns")), ZONES)
    server.start()
    yield server
    server.stop()


class Net:
    """The outside world of one test: a port shared by every peer, smtp-sinks on 127.0.0.x."""

    def __init__(self, dns: DNSServer) -> None:
        self.dns = dns
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="e2e-")
        os.chmod(self.root, 0o755)          # smtp-sink may run as nobody and write below it
        self.sinks: list[SMTPSink] = []

    def sink(self, address: str, *options: str) -> SMTPSink:
        parent = tempfile.mkdtemp(dir=self.root)
        os.chmod(parent, 0o755)
        sink = SMTPSink(parent, address, self.port, *options)
        self.sinks.append(sink)
        return sink

    def stop(self, sink: SMTPSink) -> None:
        sink.stop()
        self.sinks.remove(sink)

    def delivery(self) -> dict[str, str]:
        """The [delivery] section that sends this appliance's mail into this world."""
        return {"nameservers": self.dns.nameserver, "port": str(self.port)}

    def close(self) -> None:
        for sink in self.sinks:
            sink.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def net(dns: DNSServer) -> Iterator[Net]:
    world = Net(dns)
    yield world
    world.close()


@pytest.fixture
def sender_appliance(make_appliance, net: Net) -> Callable[..., Appliance]:
    """make(queue={...}, **more): an appliance delivering into `net`, with alice as the sender."""
    def make(queue: dict[str, str] | None = None, **more: dict[str, str]) -> Appliance:
        return make_appliance(services=("smtp", "submission"), delivery=net.delivery(), queue=queue or {}, **more)
    return make


def submit(appliance: Appliance, *recipients: str, subject: str = "outbound") -> None:
    with appliance.submit("alice") as client:
        client.sendmail(ALICE, list(recipients), make_message(subject, sender=ALICE, to=", ".join(recipients)))


def notices(appliance: Appliance, action: str) -> list[str]:
    """The DSNs in alice's mailbox whose Action is `action` (failed or delayed)."""
    texts = [m.decode("utf-8", "replace") for m in appliance.messages(ALICE)]
    return [t for t in texts if "multipart/report" in t and f"Action: {action}" in t]


def one_transaction(sink: SMTPSink) -> str:
    [transaction] = wait_for(sink.transactions, SINK_WAIT)
    return transaction


def test_mail_goes_to_the_preferred_mx(sender_appliance, net):
    first, second = net.sink(MX1), net.sink(MX2)
    appliance = sender_appliance()
    submit(appliance, "dave@example.org", subject="preferred")
    transaction = one_transaction(first)
    assert "X-Rcpt-Args: <dave@example.org>" in transaction and "Subject: preferred" in transaction
    assert second.transactions() == []
    wait_for(lambda: f"to=\"mx1.example.org[{MX1}]:{net.port} 250" in appliance.log(), 5)


def test_a_refusing_first_mx_falls_back_to_the_second(sender_appliance, net):
    second = net.sink(MX2)                               # nobody listens on MX1
    appliance = sender_appliance()
    submit(appliance, "dave@example.org")
    assert "X-Rcpt-Args: <dave@example.org>" in one_transaction(second)


def test_a_4xx_first_mx_falls_back_to_the_second(sender_appliance, net):
    first, second = net.sink(MX1, *BUSY), net.sink(MX2)
    appliance = sender_appliance()
    submit(appliance, "dave@example.org")
    assert "X-Rcpt-Args: <dave@example.org>" in one_transaction(second)
    assert first.transactions() == []


def test_a_domain_without_mx_gets_mail_at_its_address(sender_appliance, net):
    sink = net.sink(IMPLICIT)
    appliance = sender_appliance()
    submit(appliance, "erin@implicit.test")
    assert "X-Rcpt-Args: <erin@implicit.test>" in one_transaction(sink)


def test_a_null_mx_bounces_to_the_sender(sender_appliance, net):
    appliance = sender_appliance()
    submit(appliance, "frank@nullmx.test", subject="to a null MX")
    [dsn] = wait_for(lambda: notices(appliance, "failed"), 10)
    assert "Final-Recipient: rfc822; frank@nullmx.test" in dsn
    assert "Status: 5.1.10" in dsn
    assert "Subject: to a null MX" in dsn                # the original headers come back


def test_a_5xx_bounces_at_once_with_the_remote_reply(sender_appliance, net):
    net.sink(MX1, "-f", "RCPT", "-B", "550 5.1.1 no such user here")
    second = net.sink(MX2)
    appliance = sender_appliance()
    submit(appliance, "nobody@example.org")
    [dsn] = wait_for(lambda: notices(appliance, "failed"), 10)
    assert "Status: 5.1.1" in dsn
    assert f"mx1.example.org[{MX1}]:{net.port} said: 550 5.1.1 no such user here" in dsn
    assert second.transactions() == []                    # a 5xx is final: no other MX is tried


def test_4xx_everywhere_is_retried_until_the_lifetime_ends_then_bounced(sender_appliance, net):
    first, second = net.sink(MX1, *BUSY), net.sink(MX2, *BUSY)
    appliance = sender_appliance(queue={"retry_initial": "1", "retry_max": "1", "max_queue_lifetime": "4"})
    started = time.monotonic()
    submit(appliance, "dave@example.org")
    [dsn] = wait_for(lambda: notices(appliance, "failed"), 20)
    assert time.monotonic() - started >= 4
    assert "Status: 4.4.7" in dsn and "said: 450 4.2.0 mailbox busy" in dsn
    assert appliance.log().count("deferred id=") >= 2, "it was retried before giving up"
    assert first.transactions() == second.transactions() == []


def test_the_sender_hears_once_that_mail_is_delayed(sender_appliance, net):
    net.sink(MX1, *BUSY)
    net.sink(MX2, *BUSY)
    appliance = sender_appliance(queue={"retry_initial": "1", "retry_max": "1", "delay_warning": "2"})
    submit(appliance, "dave@example.org", subject="slow one")
    [notice] = wait_for(lambda: notices(appliance, "delayed"), 20)
    assert "Final-Recipient: rfc822; dave@example.org" in notice
    assert "Status: 4.2.0" in notice and "Subject: Delayed Mail" in notice
    deferrals = appliance.log().count("deferred id=")
    wait_for(lambda: appliance.log().count("deferred id=") >= deferrals + 2, 10)   # more retries ...
    assert len(notices(appliance, "delayed")) == 1                                 # ... no second notice
    assert notices(appliance, "failed") == []


def test_a_retry_survives_a_crash_and_restart(sender_appliance, net):
    appliance = sender_appliance(queue={"retry_initial": "2", "retry_max": "2"})
    submit(appliance, "dave@example.org", subject="survivor")      # no MX answers yet
    wait_for(lambda: "deferred id=" in appliance.log(), 10)
    appliance.kill9()
    sink = net.sink(MX1)
    appliance.start()
    transaction = one_transaction(sink)
    assert "Subject: survivor" in transaction
    assert notices(appliance, "failed") == []


def test_a_smarthost_with_verified_tls_and_auth(make_appliance, net, tmp_path):
    """The smarthost is a second appliance (submission: STARTTLS, then AUTH) that relays on to the MX."""
    sink = net.sink(MX1)
    smarthost = make_appliance(services=("smtp", "submission"), appliance={"hostname": "localhost"},
                               delivery=net.delivery())
    password_file = tmp_path / "smarthost.pw"
    password_file.write_text(smarthost.users["alice"] + "\n")
    password_file.chmod(0o600)
    appliance = make_appliance(services=("smtp", "submission"), delivery=net.delivery(), relay={
        "trusted_networks": "", "smarthost": f"localhost:{smarthost.ports['submission']}",
        "smarthost_user": ALICE, "smarthost_password_file": str(password_file),
        "smarthost_ca_file": smarthost.cert_path})
    submit(appliance, "dave@example.org", subject="via the smarthost")
    transaction = one_transaction(sink)
    assert "Subject: via the smarthost" in transaction
    # The smarthost's Received line: it got the mail over TLS, from an authenticated client (RFC 3848).
    assert "by localhost (mailappliance) with ESMTPSA" in transaction
    assert f"to=\"localhost:{smarthost.ports['submission']} 250" in appliance.log()


def test_a_smarthost_whose_certificate_does_not_verify_gets_nothing(make_appliance, net, tmp_path):
    sink = net.sink(MX1)
    smarthost = make_appliance(services=("smtp", "submission"), appliance={"hostname": "localhost"},
                               delivery=net.delivery())
    other = make_appliance(services=("smtp",), appliance={"hostname": "localhost"})
    password_file = tmp_path / "smarthost.pw"
    password_file.write_text(smarthost.users["alice"] + "\n")
    appliance = make_appliance(services=("smtp", "submission"), delivery=net.delivery(), relay={
        "trusted_networks": "", "smarthost": f"localhost:{smarthost.ports['submission']}",
        "smarthost_user": ALICE, "smarthost_password_file": str(password_file),
        "smarthost_ca_file": other.cert_path})             # a different certificate than the smarthost's
    submit(appliance, "dave@example.org")
    wait_for(lambda: "deferred id=" in appliance.log(), 10)
    assert "4.7.5 TLS with localhost" in appliance.log()
    assert sink.transactions() == [] and "auth-ok" not in smarthost.log()
