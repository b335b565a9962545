"""/metrics in the Prometheus text format, with prometheus_client and a registry of our own.

Two kinds of numbers, fed two ways:

- what happened (messages received, deliveries, rejections, logins, TLS handshakes, delivery
  delays) is counted from maillog's events, as the status counters are (appliance/stats.py):
  every event an operator sees in the log already goes through `stats.publish`, so /metrics
  counts exactly what the log shows and costs the SMTP path a dictionary look-up and a
  counter increment per event (bench/metrics_events: about 10 microseconds per message).
  `MetricsService` subscribes while the daemon runs;
- what is (the queue, open connections, the certificate's end of validity) is read at scrape
  time by custom collectors, so it is never stale and costs nothing between scrapes.

Label values that come from outside text (a rejection's reply, a TLS version string) go through
`BoundedLabels`: a scraper must never see an unbounded set of series (each is memory in
Prometheus and here).

Our own `CollectorRegistry`, not prometheus_client's global one: two appliances in one test
process, or a rebuilt resource, must not collide on metric names.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.web.resource import Resource

from appliance import __version__, stats, status

PREFIX = "mailappliance"
SERVICE_NAME = "metrics"
MAX_REASONS = 48          # distinct (reason, code) pairs of rejections; the rest are "other"
MAX_SERVICES = 16         # distinct service names in the event labels; there are 8 listeners and pickup
OTHER = "other"
# Seconds from reception to delivery: a local delivery takes well under a second, a remote one
# seconds, a retried one minutes to days ([queue] retry and lifetime).
DELAY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600)
TLS_VERSIONS = frozenset({"SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"})
# Listener (as the events name it) -> protocol, for logins.
PROTOCOLS = {"smtp": "smtp", "submission": "smtp", "smtps": "smtp", "pop3": "pop3", "pop3s": "pop3",
             "imap": "imap", "imaps": "imap", "web": "http"}
_NAME_AND_CODE = re.compile(r"^(.*?)\s*\b([245]\d\d)(?: [245]\.\d{1,3}\.\d{1,3})?$")


class BoundedLabels:
    """The first `limit` distinct label tuples pass as they are; later new ones become `fallback`.

    Thread-safe (events may come from pool threads). Why not truncate or hash instead: a label
    an operator reads must be a real reason, and "other" growing says the limit was reached.
    """

    def __init__(self, limit: int, fallback: Callable[[tuple[str, ...]], tuple[str, ...]]) -> None:
        self._limit = limit
        self._fallback = fallback
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def __call__(self, *labels: str) -> tuple[str, ...]:
        if labels in self._seen:      # the usual case, without the lock: the set only ever grows
            return labels
        with self._lock:
            if labels in self._seen or len(self._seen) < self._limit:
                self._seen.add(labels)
                return labels
        return self._fallback(labels)


def split_reason(label: str) -> tuple[str, str]:
    """("greylist", "451") of the status counters' `greylist 451 4.7.1`; ("pregreet", "") without a code."""
    match = _NAME_AND_CODE.match(label)
    if match is None:
        return label or "refused", ""
    return match.group(1) or "refused", match.group(2)


def destination(fields: Mapping[str, object]) -> str:
    """`local` or `remote` for a `delivered` event: its `via=` (`local`, `relay`) when the queue
    says it; else from `to=`: the local courier names the mailbox file or the command
    (`/var/mail/...`, `|program`), the remote one the host (`mx[192.0.2.1]:25 250 ok`)."""
    via = _text(fields.get("via"))
    if via in ("local", "relay"):
        return "local" if via == "local" else "remote"
    return "local" if _text(fields.get("to")).startswith(("/", "|")) else "remote"


def _text(value: object) -> str:
    return "" if value is None else str(value)


class MailMetrics:
    """The event counters; call it with (event, fields) as stats.publish does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=registry)

        self.received = counter("messages_received", "Messages accepted into the queue, by service.", ["service"])
        self.delivered = counter("recipients_delivered", "Recipients delivered, to a local mailbox or a remote host.",
                                 ["destination"])
        self.deferred = counter("recipients_deferred", "Delivery attempts that failed temporarily (will be retried).")
        self.bounced = counter("recipients_bounced", "Recipients given up on: the sender gets a bounce.")
        self.rejections = counter("rejections", "SMTP commands refused, by reason (check or reply) and reply code.",
                                  ["reason", "code"])
        self.logins = counter("logins", "Login attempts by result and protocol.", ["result", "protocol"])
        self.connections = counter("connections", "Connections accepted, by service.", ["service"])
        self.refused = counter("connections_refused", "Connections refused by the connection limits.",
                               ["service", "reason"])
        self.tls = counter("tls_handshakes", "TLS sessions established, by service and TLS version.",
                           ["service", "version"])
        self.web_refused = counter("web_refused", "Requests to the status page or /metrics answered 401 or 403.",
                                   ["status"])
        self.delay = Histogram(f"{PREFIX}_delivery_delay_seconds", "Seconds from reception to delivery.",
                               ["destination"], buckets=DELAY_BUCKETS, registry=registry)
        for where in ("local", "remote"):     # present at 0 from the start, so rate() sees the first one
            self.delivered.labels(where)
            self.delay.labels(where)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._services = BoundedLabels(MAX_SERVICES, lambda labels: (OTHER,) * len(labels))
        self._reasons = BoundedLabels(MAX_REASONS, lambda labels: (OTHER, labels[1][:1] + "xx" if labels[1] else ""))
        # The status counters already pair a check's refusal with the server's `rejected` line:
        # reuse that logic (it calls self.add), so status and /metrics name rejections alike.
        self._refusals = stats.MailCounters(self)  # type: ignore[arg-type]
        self._handlers: dict[str, Callable[[Mapping[str, object]], None]] = {
            "received": self._received, "delivered": self._delivered,
            "deferred": lambda fields: self.deferred.inc(), "bounced": lambda fields: self.bounced.inc(),
            "check": lambda fields: self._refusals("check", fields),
            "rejected": lambda fields: self._refusals("rejected", fields),
            "auth-ok": lambda fields: self._login("ok", fields),
            "auth-failed": lambda fields: self._login("failed", fields),
            "tls": self._tls, "connect": self._connect, "connection-refused": self._refused,
            "web-refused": self._web_refused,
        }

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        handler = self._handlers.get(event)
        if handler is not None:
            handler(fields)

    def _series(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), kept: prometheus_client's look-up takes a lock and checks the
        labels each time, which is most of an event's cost. Bounded as the labels are."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def add(self, kind: str, label: str = "", count: int = 1) -> None:
        """What stats.MailCounters calls: only its rejections are counted here."""
        if kind == stats.REJECTED:
            self._series(self.rejections, *self._reasons(*split_reason(label))).inc(count)

    def _service(self, fields: Mapping[str, object]) -> str:
        return self._services(_text(fields.get("service")) or "unknown")[0]

    def _received(self, fields: Mapping[str, object]) -> None:
        self._series(self.received, self._service(fields)).inc()

    def _delivered(self, fields: Mapping[str, object]) -> None:
        where = destination(fields)
        self._series(self.delivered, where).inc()
        try:
            delay = float(_text(fields.get("delay")))
        except ValueError:
            return
        if delay >= 0:
            self._series(self.delay, where).observe(delay)

    def _login(self, result: str, fields: Mapping[str, object]) -> None:
        self._series(self.logins, result, PROTOCOLS.get(_text(fields.get("service")), OTHER)).inc()

    def _tls(self, fields: Mapping[str, object]) -> None:
        version = _text(fields.get("version"))
        self._series(self.tls, self._service(fields), version if version in TLS_VERSIONS else OTHER).inc()

    def _connect(self, fields: Mapping[str, object]) -> None:
        self._series(self.connections, self._service(fields)).inc()

    def _refused(self, fields: Mapping[str, object]) -> None:
        reason = _text(fields.get("reason"))
        known = reason in ("per-client", "per-service", "descriptors")
        self._series(self.refused, self._service(fields), reason if known else OTHER).inc()

    def _web_refused(self, fields: Mapping[str, object]) -> None:
        code = _text(fields.get("status"))
        self._series(self.web_refused, code if code in ("401", "403") else OTHER).inc()


# --- read at scrape time ---------------------------------------------------------------------------

def _gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value, labels=None if value is not None else list(labels))


class QueueCollector(Collector):
    """The queue now: messages, deferred, held, recipients waiting, age of the oldest (0 when empty).

    Reads the running queue's in-memory list (no disk), as `mailappliance status` does."""

    def __init__(self, queue: Callable[[], Any], clock: Callable[[], float]) -> None:
        self._queue, self._clock = queue, clock

    def collect(self) -> Iterator[Metric]:
        queue = self._queue()
        if queue is None:
            return
        summary = status.queue_summary(queue.envelopes(), self._clock())
        yield _gauge("queue_messages", "Messages in the queue.", summary["messages"])
        yield _gauge("queue_deferred_messages", "Queued messages with a recipient waiting for a retry.",
                     summary["deferred"])
        yield _gauge("queue_held_messages", "Queued messages held by the operator.", summary["held"])
        yield _gauge("queue_recipients", "Recipients waiting for delivery.", summary["recipients"])
        yield _gauge("queue_oldest_message_age_seconds", "Age of the oldest queued message (0: the queue is empty).",
                     summary["oldest"] or 0.0)


def limited_factories(top: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """(listener name, its connlimit.LimitedFactory) of every `listen-NAME` child of `top`.

    A listener's factory is the LimitedFactory, or the implicit-TLS wrapper around it."""
    for child in top:
        name = getattr(child, "name", None) or ""
        if not name.startswith("listen-"):
            continue
        factory = getattr(child, "factory", None)
        for _ in range(4):        # wrappers are at most TLS around the limits
            if factory is None or hasattr(factory, "table"):
                break
            factory = getattr(factory, "wrappedFactory", None)
        if factory is not None and hasattr(factory, "table"):
            yield name[len("listen-"):], factory


class ConnectionCollector(Collector):
    """Open connections per listener, and per service kind with the kind's limit (appliance/connlimit.py)."""

    def __init__(self, top: Iterable[Any]) -> None:
        self._top = top

    def collect(self) -> Iterator[Metric]:
        per_listener = _gauge("listener_connections", "Connections open now, per listener.", labels=["listener"])
        per_kind = _gauge("connections_open", "Connections open now, per service kind (the unit of the limits).",
                          labels=["kind"])
        limits = _gauge("connections_limit", "Connections a service kind may hold ([limits], descriptors).",
                        labels=["kind"])
        kinds: dict[str, Any] = {}
        for listener, factory in limited_factories(self._top):
            per_listener.add_metric([listener], getattr(factory, "open", 0))
            kinds[factory.kind] = factory.table
        for kind, table in sorted(kinds.items()):
            per_kind.add_metric([kind], table.open_connections(kind))
            limits.add_metric([kind], table.service_cap(kind))
        yield from (per_listener, per_kind, limits)


class CertificateCollector(Collector):
    """The end of validity of the certificate served now (after any SIGHUP reload), as a Unix time."""

    def __init__(self, top: Any, clock: Callable[[], float]) -> None:
        self._top, self._clock = top, clock

    def collect(self) -> Iterator[Metric]:
        cfg = getattr(self._top, "config", None)
        path = cfg.tls.certificate if cfg is not None else ""
        served = status.certificate(getattr(self._top, "tls", None), path, self._clock())
        if served is None:
            return
        not_after = datetime.fromisoformat(served["not_after"]).timestamp()
        yield _gauge("tls_certificate_expiry_timestamp_seconds", "When the served certificate stops being valid.",
                     not_after)


class InfoCollector(Collector):
    """The version, and when the daemon started (to tell a restart from a counter reset)."""

    def __init__(self, top: Any) -> None:
        self._top = top

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(f"{PREFIX}_build", "The running mailappliance version.")
        info.add_metric([], {"version": __version__})
        yield info
        counting = _child(self._top, "stats")
        if counting is not None:
            yield _gauge("start_time_seconds", "When the daemon started, as a Unix time.", counting.started_at)


def _child(top: Any, name: str) -> Any:
    try:
        return top.getServiceNamed(name)
    except (KeyError, AttributeError):
        return None


# --- the service and the resource -------------------------------------------------------------------

class MetricsService(Service):
    """Holds the registry; counts maillog's events while running (subscribed on start, not before)."""

    name = SERVICE_NAME

    def __init__(self, top: Any, clock: Callable[[], float] | None = None) -> None:
        clock = clock or getattr(getattr(top, "reactor", None), "seconds", None) or time.time
        self.registry = CollectorRegistry()
        self.mail = MailMetrics(self.registry)
        for collector in (QueueCollector(lambda: _child(top, "queue"), clock), ConnectionCollector(top),
                          CertificateCollector(top, clock), InfoCollector(top)):
            self.registry.register(collector)
        ProcessCollector(namespace="", registry=self.registry)

    def startService(self) -> None:
        stats.subscribe(self.mail)
        super().startService()

    def stopService(self) -> None:
        stats.unsubscribe(self.mail)
        super().stopService()


def metrics_service(top: Any) -> MetricsService:
    """The appliance's one MetricsService, added to `top` on first use (started with it, or at once
    when `top` runs already): a rebuilt web resource keeps counting where it was."""
    found = _child(top, SERVICE_NAME)
    if found is None:
        found = MetricsService(top)
        found.setServiceParent(top)
    return found


class MetricsResource(Resource):
    """GET /metrics; `top` is the ApplianceService. The web listener puts it behind its access control."""

    isLeaf = True

    def __init__(self, top: Any) -> None:
        super().__init__()
        self.top = top
        self.service = metrics_service(top)

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept") or b""
        encode, content_type = choose_encoder(accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encode(self.service.registry)
