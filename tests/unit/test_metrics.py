"""/metrics (appliance/web/metrics.py): what a Prometheus server scraping the appliance reads.

The text is parsed with prometheus_client's own parser, as Prometheus would read it; the events
come from the real maillog functions the daemon calls; the connection counts from the real
connlimit factories; the certificate from a real ServerTLS.
"""
from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from appliance import __version__, connlimit, maillog, tls
from appliance.config import TLSSection
from appliance.envelope import Envelope, Recipient
from appliance.web import metrics
from appliance.web.metrics import MetricsResource

NOW = 1_800_000_000.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(resource: Resource, accept: str = "") -> tuple[str, str]:
    """(content type, body) of a GET, through twisted.web's request test helper."""
    request = DummyRequest([b""])
    if accept:
        request.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
    body = resource.render(request)
    return request.responseHeaders.getRawHeaders(b"content-type")[0].decode(), body.decode()


class Top(MultiService):
    """The parts of the ApplianceService the metrics read: children, `config`, `tls`."""

    def __init__(self, tls_served: Any = None) -> None:
        super().__init__()
        self.tls = tls_served
        self.config = None
        self.reactor = Clock()
        self.reactor.advance(NOW)            # the appliance's clock: queue ages are measured with it


@pytest.fixture
def top():
    """A running top service with /metrics mounted; stopped (unsubscribing the counters) after the test."""
    service = Top()
    service.startService()
    yield service
    service.stopService()


def test_the_text_is_prometheus_format_and_names_its_metrics(top):
    content_type, body = scrape(MetricsResource(top))
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert families["mailappliance_messages_received"].type == "counter"
    assert families["mailappliance_delivery_delay_seconds"].type == "histogram"
    assert [s.labels for s in families["mailappliance_build_info"].samples] == [{"version": __version__}]
    assert "process_resident_memory_bytes" in families          # the process's own numbers
    assert all(name.startswith(("mailappliance_", "process_")) for name in families)


def test_openmetrics_is_given_to_a_scraper_that_asks_for_it(top):
    content_type, body = scrape(MetricsResource(top), accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_counters_move_with_the_mail_events(top):
    resource = MetricsResource(top)
    maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 100, ["bob@example.test"], "ESMTP")
    maillog.received("Q2", "submission", "192.0.2.2", "bob@example.test", 100, ["x@example.org"], "ESMTPSA")
    maillog.received("Q3", "submission", "192.0.2.2", "bob@example.test", 100, ["y@example.org"], "ESMTPSA")
    maillog.delivered("Q1", "bob@example.test", "/var/mail/bob/new/1.M1", 0.2)
    maillog.delivered("Q2", "x@example.org", "mx.example.org[192.0.2.9]:25 250 2.0.0 ok", 40.0)
    maillog.deferred("Q3", "y@example.org", "4.4.1 connection refused", 300)
    maillog.bounced("Q3", "y@example.org", "5.1.1 no such user")
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_messages_received_total", service="smtp") == 1
    assert value(samples, "mailappliance_messages_received_total", service="submission") == 2
    assert value(samples, "mailappliance_recipients_delivered_total", destination="local") == 1
    assert value(samples, "mailappliance_recipients_delivered_total", destination="remote") == 1
    assert value(samples, "mailappliance_recipients_deferred_total") == 1
    assert value(samples, "mailappliance_recipients_bounced_total") == 1


def test_the_queue_saying_local_or_relay_decides_the_destination(top):
    resource = MetricsResource(top)
    # The queue's `via=` (the recipient is ours, or relayed) wins over guessing from `to=`.
    maillog.emit("delivered", id="Q1", rcpt="x@example.org", to="smarthost:587 250 ok", delay="1.0", via="relay")
    maillog.emit("delivered", id="Q2", rcpt="bob@example.test", to="bob@example.test", delay="1.0", via="local")
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_recipients_delivered_total", destination="remote") == 1
    assert value(samples, "mailappliance_recipients_delivered_total", destination="local") == 1


def test_the_delivery_delay_lands_in_its_histogram_bucket(top):
    resource = MetricsResource(top)
    maillog.delivered("Q1", "bob@example.test", "/var/mail/bob/new/1.M1", 0.3)
    maillog.delivered("Q2", "x@example.org", "mx.example.org[192.0.2.9]:25 250 ok", 700.0)
    samples = parse(scrape(resource)[1])
    local = {"destination": "local"}
    assert value(samples, "mailappliance_delivery_delay_seconds_bucket", le="0.1", **local) == 0
    assert value(samples, "mailappliance_delivery_delay_seconds_bucket", le="0.5", **local) == 1
    assert value(samples, "mailappliance_delivery_delay_seconds_sum", **local) == pytest.approx(0.3)
    remote = {"destination": "remote"}
    assert value(samples, "mailappliance_delivery_delay_seconds_bucket", le="300.0", **remote) == 0
    assert value(samples, "mailappliance_delivery_delay_seconds_bucket", le="900.0", **remote) == 1
    assert value(samples, "mailappliance_delivery_delay_seconds_count", **remote) == 1


def test_a_rejection_is_counted_once_under_its_check_or_its_reply(top):
    resource = MetricsResource(top)
    greylisted = "451 4.7.1 Greylisted, please try again later"
    # A check's refusal is logged as its `check` line, then the server's `rejected` line.
    maillog.emit("check", session="s1", check="greylist", stage="rcpt", verdict="tempfail", peer="192.0.2.7",
                 reply=greylisted)
    maillog.rejected("smtp", "192.0.2.7", "RCPT", greylisted, sender="a@example.org", rcpt="bob@example.test")
    maillog.rejected("smtp", "192.0.2.8", "DATA", "552 5.3.4 too big")
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_rejections_total", reason="greylist", code="451") == 1
    assert value(samples, "mailappliance_rejections_total", reason="too big", code="552") == 1
    assert sum(v for (name, _), v in samples.items() if name == "mailappliance_rejections_total") == 2


def test_logins_by_result_and_protocol_tls_versions_and_connections(top):
    resource = MetricsResource(top)
    maillog.auth("imaps", "192.0.2.1", "bob@example.test", True, "PLAIN")
    maillog.auth("submission", "192.0.2.1", "bob@example.test", False, "LOGIN", "bad password")
    maillog.auth("smtps", "192.0.2.1", "bob@example.test", False, "PLAIN", "bad password")
    maillog.tls("smtp", "192.0.2.1", "TLSv1.3", "TLS_AES_256_GCM_SHA384")
    maillog.tls("pop3s", "192.0.2.1", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    maillog.connect("smtp", "192.0.2.1")
    maillog.emit("connection-refused", service="smtp", peer="192.0.2.1", reason="per-client")
    maillog.emit("web-refused", service="web", peer="192.0.2.1", path="/metrics", status=403, reason="network")
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_logins_total", result="ok", protocol="imap") == 1
    assert value(samples, "mailappliance_logins_total", result="failed", protocol="smtp") == 2
    assert value(samples, "mailappliance_tls_handshakes_total", service="smtp", version="TLSv1.3") == 1
    assert value(samples, "mailappliance_tls_handshakes_total", service="pop3s", version="TLSv1.2") == 1
    assert value(samples, "mailappliance_connections_total", service="smtp") == 1
    assert value(samples, "mailappliance_connections_refused_total", service="smtp", reason="per-client") == 1
    assert value(samples, "mailappliance_web_refused_total", status="403") == 1


def test_events_count_only_while_the_service_runs():
    top = Top()
    resource = MetricsResource(top)
    maillog.received("Q0", "smtp", "192.0.2.1", "a@example.org", 1, ["b@example.test"], "SMTP")
    top.startService()
    maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 1, ["b@example.test"], "SMTP")
    top.stopService()
    maillog.received("Q2", "smtp", "192.0.2.1", "a@example.org", 1, ["b@example.test"], "SMTP")
    assert value(parse(scrape(resource)[1]), "mailappliance_messages_received_total", service="smtp") == 1


def test_a_rebuilt_resource_keeps_counting_in_the_same_registry(top):
    MetricsResource(top)
    maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 1, ["b@example.test"], "SMTP")
    again = MetricsResource(top)
    maillog.received("Q2", "smtp", "192.0.2.1", "a@example.org", 1, ["b@example.test"], "SMTP")
    assert value(parse(scrape(again)[1]), "mailappliance_messages_received_total", service="smtp") == 2
    assert [s.name for s in top].count(metrics.SERVICE_NAME) == 1


def test_an_event_with_odd_fields_is_counted_without_failing(top):
    resource = MetricsResource(top)
    maillog.emit("delivered", id="Q1", rcpt="b@example.test", to="/var/mail/b", delay="soon")
    maillog.emit("tls", service="smtp", peer="192.0.2.1", version="TLSv9\nsecret")
    maillog.emit("received")
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_recipients_delivered_total", destination="local") == 1
    assert value(samples, "mailappliance_tls_handshakes_total", service="smtp", version="other") == 1
    assert value(samples, "mailappliance_messages_received_total", service="unknown") == 1


# --- read at scrape time ------------------------------------------------------------------------

class Queue:
    def __init__(self, envelopes: list[Envelope]) -> None:
        self.list = envelopes

    def envelopes(self) -> list[Envelope]:
        return self.list


def with_queue(queue: Queue) -> Top:
    top = Top()
    named = MultiService()
    named.setName("queue")
    named.envelopes = queue.envelopes
    named.setServiceParent(top)
    return top


def test_queue_gauges_read_the_queue_at_each_scrape():
    waiting = Recipient("x@slow.example", local=False, last_error="4.4.1 connection refused")
    queue = Queue([Envelope("A1", "a@example.test", [waiting], received_at=NOW - 5400),
                   Envelope("A2", "a@example.test", [Recipient("bob@example.test")], received_at=NOW - 10, held=True)])
    resource = MetricsResource(with_queue(queue))
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_queue_messages") == 2
    assert value(samples, "mailappliance_queue_deferred_messages") == 1
    assert value(samples, "mailappliance_queue_held_messages") == 1
    assert value(samples, "mailappliance_queue_recipients") == 2
    assert value(samples, "mailappliance_queue_oldest_message_age_seconds") == 5400
    queue.list.clear()
    emptied = parse(scrape(resource)[1])
    assert value(emptied, "mailappliance_queue_messages") == 0
    assert ("mailappliance_queue_oldest_message_age_seconds", frozenset()) in emptied    # 0, not missing


class Inner(Factory):
    """The protocol factory a listener wraps in its connection limits."""

    protocol = Protocol
    refusals = {connlimit.PER_CLIENT: b"421 busy", connlimit.PER_SERVICE: b"421 busy",
                connlimit.DESCRIPTORS: b"421 busy"}


class Address:
    def __init__(self, host: str) -> None:
        self.host = host


class Listener(MultiService):
    """A `listen-NAME` child as tap.py makes it: `factory` is what the endpoint serves."""

    def __init__(self, name: str, factory: Any) -> None:
        super().__init__()
        self.setName(f"listen-{name}")
        self.factory = factory


class TLSWrapper:
    """What tls.implicit puts around the limits: it only has to lead to them through wrappedFactory."""

    def __init__(self, wrapped: Any) -> None:
        self.wrappedFactory = wrapped


def test_open_connections_per_listener_and_per_kind_with_its_limit():
    table = connlimit.ConnectionTable(per_client=10, per_service=50, descriptor_reserve=16, descriptors=1000)
    submission = connlimit.LimitedFactory(Inner(), table, "submission", "submission", reactor)
    smtps = connlimit.LimitedFactory(Inner(), table, "submission", "smtps", reactor)
    smtp = connlimit.LimitedFactory(Inner(), table, "smtp", "smtp", reactor)
    top = Top()
    for name, factory in (("submission", submission), ("smtps", TLSWrapper(smtps)), ("smtp", smtp)):
        Listener(name, factory).setServiceParent(top)
    open_ = [submission.buildProtocol(Address("192.0.2.1")), smtps.buildProtocol(Address("192.0.2.2")),
             smtps.buildProtocol(Address("192.0.2.3"))]
    resource = MetricsResource(top)
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_listener_connections", listener="submission") == 1
    assert value(samples, "mailappliance_listener_connections", listener="smtps") == 2
    assert value(samples, "mailappliance_listener_connections", listener="smtp") == 0
    assert value(samples, "mailappliance_connections_open", kind="submission") == 3
    assert value(samples, "mailappliance_connections_limit", kind="submission") == 50
    open_[1].connectionLost(None)
    samples = parse(scrape(resource)[1])
    assert value(samples, "mailappliance_listener_connections", listener="smtps") == 1
    assert value(samples, "mailappliance_connections_open", kind="submission") == 2


def test_the_certificate_expiry_is_the_served_certificates_end(tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    tls.generate_self_signed("mail.example.test", cert, key)
    with open(cert, "rb") as f:
        not_after = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
    top = Top(tls.ServerTLS(TLSSection(certificate=cert, key=key)))
    samples = parse(scrape(MetricsResource(top))[1])
    assert value(samples, "mailappliance_tls_certificate_expiry_timestamp_seconds") == not_after


def test_without_a_certificate_there_is_no_expiry_to_alert_on():
    samples = parse(scrape(MetricsResource(Top(tls.ServerTLS(TLSSection(certificate="", key="")))))[1])
    assert not any(name == "mailappliance_tls_certificate_expiry_timestamp_seconds" for name, _ in samples)


# --- through a real socket ----------------------------------------------------------------------

class ScrapeOverHTTP(unittest.TestCase):
    """A twisted.web Site on a loopback port serving /metrics, read by an HTTP client, as Prometheus does."""

    def setUp(self) -> None:
        self.top = Top()
        self.top.startService()
        self.addCleanup(self.top.stopService)
        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.top))
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    @defer.inlineCallbacks
    def get(self, path: bytes) -> Any:
        url = b"http://127.0.0.1:%d%s" % (self.port.getHost().port, path)
        response = yield Agent(reactor, pool=self.pool).request(b"GET", url, Headers({b"accept": [b"text/plain"]}))
        body = yield readBody(response)
        return response, body.decode()

    @defer.inlineCallbacks
    def test_a_scrape_over_http_sees_the_mail_counted(self) -> None:
        response, body = yield self.get(b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(value(parse(body), "mailappliance_messages_received_total", service="smtp"), 0)
        maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 10, ["b@example.test"], "ESMTP")
        maillog.bounced("Q1", "b@example.test", "5.1.1 unknown")
        response, body = yield self.get(b"/metrics")
        samples = parse(body)
        self.assertEqual(value(samples, "mailappliance_messages_received_total", service="smtp"), 1)
        self.assertEqual(value(samples, "mailappliance_recipients_bounced_total"), 1)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])


def test_many_different_rejection_texts_stay_within_the_label_limit(top):
    resource = MetricsResource(top)
    for n in range(200):
        maillog.rejected("smtp", f"192.0.2.{n}", "RCPT", f"550 5.7.1 client{n} blocked here")
    samples = parse(scrape(resource)[1])
    reasons = {labels: v for (name, labels), v in samples.items() if name == "mailappliance_rejections_total"}
    assert len(reasons) == metrics.MAX_REASONS + 1
    assert reasons[frozenset({("reason", "other"), ("code", "5xx")})] == 200 - metrics.MAX_REASONS
    assert sum(reasons.values()) == 200
