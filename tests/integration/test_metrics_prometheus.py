"""A real Prometheus (Debian's `prometheus`) scrapes /metrics over TLS and evaluates the alert rules.

/metrics is served here by a twisted.web Site on a loopback TLS port with the appliance's own
ServerTLS and a self-signed certificate, which Prometheus trusts as its CA file, as the scrape
configuration in docs/monitoring.md says. (The daemon's web listener, `[listen] web`, mounts the
same MetricsResource behind its access control; its own tests scrape it through twistd.)

What a user would notice: Prometheus reads the target as up, the counters it stores move as
mail events happen, and the three alert rules of the document load and evaluate without error
against real data.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from appliance import maillog, tls
from appliance.config import TLSSection
from appliance.web.metrics import MetricsResource
from tests.integration.harness import free_port

PROMETHEUS = "/usr/bin/prometheus"
HOSTNAME = "mail.example.test"
DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def require_prometheus() -> None:
    """Skip when Prometheus is missing; under CI (CI set), fail instead."""
    if os.access(PROMETHEUS, os.X_OK):
        return
    reason = f"{PROMETHEUS} missing: apt-get install prometheus"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def doc_rules() -> dict[str, Any]:
    text = DOC.read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text[text.index("## Metrics"):], re.S)]
    return next(block for block in blocks if isinstance(block, dict) and "groups" in block)


class Top(MultiService):
    """The parts of the ApplianceService /metrics reads, with a real certificate."""

    config = None

    def __init__(self, served: tls.ServerTLS) -> None:
        super().__init__()
        self.tls = served
        self.reactor = reactor


class PrometheusScrape(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        require_prometheus()
        folder = Path(tempfile.mkdtemp(prefix="metrics-prometheus-")).resolve()
        self.addCleanup(shutil.rmtree, folder, True)
        cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
        tls.generate_self_signed(HOSTNAME, cert, key)
        self.top = Top(tls.ServerTLS(TLSSection(certificate=cert, key=key)))
        self.top.startService()
        self.addCleanup(self.top.stopService)
        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.top))
        port = reactor.listenSSL(0, Site(root), self.top.tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.api = f"http://127.0.0.1:{free_port()}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self._start_prometheus(folder, cert, port.getHost().port)

    def _start_prometheus(self, folder: Path, ca_file: str, port: int) -> None:
        (folder / "rules.yml").write_text(yaml.safe_dump(doc_rules()))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(folder / "rules.yml")],
            "scrape_configs": [{
                "job_name": "mailappliance", "scheme": "https", "metrics_path": "/metrics",
                "tls_config": {"ca_file": ca_file, "server_name": HOSTNAME},
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(folder / "prometheus.log", "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={self.api.removeprefix('http://')}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        self.log_path = folder / "prometheus.log"
        self.addCleanup(self._stop, process)

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    @defer.inlineCallbacks
    def api_get(self, path: str, **query: str) -> Any:
        url = f"{self.api}{path}?{urlencode(query)}" if query else f"{self.api}{path}"
        response = yield Agent(reactor, pool=self.pool).request(b"GET", url.encode())
        body = yield readBody(response)
        return json.loads(body)

    @defer.inlineCallbacks
    def query(self, expression: str) -> Any:
        """The value of an instant query's single result, None while there is none (or no Prometheus yet)."""
        try:
            answer = yield self.api_get("/api/v1/query", query=expression)
        except Exception:
            return None
        results = answer.get("data", {}).get("result", [])
        return float(results[0]["value"][1]) if len(results) == 1 else None

    @defer.inlineCallbacks
    def until(self, expression: str, wanted: float, limit: float = 45.0) -> Any:
        """Wait (letting the reactor serve the scrapes) until Prometheus answers `wanted`."""
        deadline = time.monotonic() + limit
        seen = None
        while time.monotonic() < deadline:
            seen = yield self.query(expression)
            if seen == wanted:
                return seen
            yield deferLater(reactor, 0.5, lambda: None)
        self.fail(f"{expression} is {seen}, not {wanted}, after {limit} s; prometheus said:\n"
                  + self.log_path.read_text(errors="replace")[-3000:])

    @defer.inlineCallbacks
    def test_prometheus_scrapes_over_tls_and_sees_the_counters_move(self) -> None:
        for n in range(3):
            maillog.received(f"Q{n}", "smtp", "192.0.2.1", "a@example.org", 100, ["bob@example.test"], "ESMTP")
        maillog.delivered("Q0", "bob@example.test", "/var/mail/bob/new/1", 0.2)
        yield self.until('up{job="mailappliance"}', 1.0)
        yield self.until('mailappliance_messages_received_total{service="smtp"}', 3.0)
        maillog.received("Q3", "submission", "192.0.2.2", "bob@example.test", 100, ["x@example.org"], "ESMTPSA")
        maillog.bounced("Q3", "x@example.org", "5.1.1 no such user")
        yield self.until('sum(mailappliance_messages_received_total)', 4.0)
        yield self.until('mailappliance_recipients_bounced_total', 1.0)
        days = yield self.query("floor((mailappliance_tls_certificate_expiry_timestamp_seconds - time()) / 86400)")
        self.assertGreater(days, 3600)            # the ten-year self-signed certificate, read through Prometheus

    @defer.inlineCallbacks
    def test_the_documented_alert_rules_load_and_evaluate_against_real_data(self) -> None:
        yield self.until('up{job="mailappliance"}', 1.0)
        deadline = time.monotonic() + 45
        while True:
            answer = yield self.api_get("/api/v1/rules")
            rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
            if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) \
                    and all(rule["health"] != "unknown" for rule in rules):
                break
            self.assertLess(time.monotonic(), deadline, f"rules never evaluated: {rules}")
            yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual({rule["name"] for rule in rules},
                         {"MailQueueOldMessage", "MailBounceRateHigh", "MailCertificateExpiresSoon"})
        self.assertEqual([rule["health"] for rule in rules], ["ok"] * 3, rules)
        self.assertEqual([rule["state"] for rule in rules], ["inactive"] * 3)   # a fresh certificate, no queue
