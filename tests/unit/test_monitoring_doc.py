"""docs/monitoring.md: the scrape configuration and the alert rules an operator copies must work.

The YAML blocks are read out of the document itself, so the tests check what the operator
reads. Prometheus's own `promtool` (Debian's `prometheus` package) checks the configuration and
the rules, and runs the rules over made-up series to show each alert fires when it should and
stays quiet when it should; every metric an expression names must be one /metrics serves.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from appliance import maillog, tls
from appliance.config import TLSSection
from appliance.envelope import Envelope, Recipient
from appliance.web.metrics import MetricsResource

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"
ALERTS = {"MailQueueOldMessage", "MailBounceRateHigh", "MailCertificateExpiresSoon"}


def yaml_blocks() -> list[Any]:
    text = DOC.read_text(encoding="utf-8")
    metrics_part = text[text.index("## Metrics"):]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", metrics_part, re.S)]


def block_with(key: str) -> Any:
    found = [block for block in yaml_blocks() if isinstance(block, dict) and key in block]
    assert len(found) == 1, f"one YAML block with {key!r} in {DOC}"
    return found[0]


def rules() -> list[dict[str, Any]]:
    return [rule for group in block_with("groups")["groups"] for rule in group["rules"]]


def served_metric_names(tmp_path: Path) -> set[str]:
    """Every sample name /metrics serves once there is a queue, a certificate and some mail."""
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    tls.generate_self_signed("mail.example.test", cert, key)

    class Top(MultiService):
        config = None
        reactor = Clock()
        tls = tls.ServerTLS(TLSSection(certificate=cert, key=key))

    top = Top()
    queue = MultiService()
    queue.setName("queue")
    queue.envelopes = lambda: [Envelope("A1", "a@example.test", [Recipient("b@example.test")])]
    queue.setServiceParent(top)
    resource = MetricsResource(top)
    top.startService()
    try:
        maillog.bounced("Q1", "x@example.org", "5.1.1 unknown")
        maillog.delivered("Q2", "y@example.org", "mx.example.org[192.0.2.9]:25 250 ok", 3.0)
        body = resource.render(DummyRequest([b""])).decode()
    finally:
        top.stopService()
    return {sample.name for family in text_string_to_metric_families(body) for sample in family.samples}


def test_three_alert_rules_on_queue_age_bounce_rate_and_certificate_expiry(tmp_path):
    found = rules()
    assert {rule["alert"] for rule in found} == ALERTS
    served = served_metric_names(tmp_path)
    for rule in found:
        named = set(re.findall(r"\b(?:mailappliance|process)_[a-z_]+", rule["expr"]))
        assert named, rule["alert"]
        assert named <= served, f"{rule['alert']} names metrics /metrics does not serve: {named - served}"
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]


def test_the_scrape_configuration_reads_metrics_over_tls():
    job = block_with("scrape_configs")["scrape_configs"][0]
    assert job["scheme"] == "https" and job["metrics_path"] == "/metrics"
    assert job["tls_config"]["ca_file"]
    basic = block_with("basic_auth")["basic_auth"]
    assert basic["username"] and basic["password_file"]       # never a password written in the file


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing: apt-get install prometheus")     # a failure under CI (tests/conftest.py)
    return found


def run_promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_scrape_configuration_with_basic_auth(tmp_path):
    config = block_with("scrape_configs")
    job = config["scrape_configs"][0]
    job.update(block_with("basic_auth"))
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "password").write_text("secret\n")
    job["tls_config"]["ca_file"] = str(tmp_path / "ca.pem")
    job["basic_auth"]["password_file"] = str(tmp_path / "password")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run_promtool("check", "config", "--syntax-only", "prometheus.yml", cwd=tmp_path)


def test_promtool_accepts_the_rules_and_they_fire_exactly_when_they_should(tmp_path):
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(block_with("groups")))
    run_promtool("check", "rules", "rules.yml", cwd=tmp_path)
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(RULE_TESTS))
    run_promtool("test", "rules", "tests.yml", cwd=tmp_path)


def fired(alert: str, instance: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    """An alert as the operator receives it: its labels and its annotations filled in."""
    return {"exp_labels": {"alertname": alert, "instance": instance, "severity": severity},
            "exp_annotations": {"summary": summary, "description": description}}


# Series one minute apart (promtool's notation: `a+bxN` is a, a+b, ... N more times).
RULE_TESTS: dict[str, Any] = {
    "rule_files": ["rules.yml"],
    "evaluation_interval": "1m",
    "tests": [
        {   # the oldest message ages two minutes a minute: over an hour after 30 minutes, alert 5 minutes later
            "interval": "1m",
            "input_series": [
                {"series": 'mailappliance_queue_oldest_message_age_seconds{instance="stuck"}', "values": "0+120x60"},
                {"series": 'mailappliance_queue_oldest_message_age_seconds{instance="flowing"}', "values": "30x60"},
            ],
            "alert_rule_test": [
                {"eval_time": "33m", "alertname": "MailQueueOldMessage", "exp_alerts": []},
                {"eval_time": "40m", "alertname": "MailQueueOldMessage",
                 "exp_alerts": [fired(
                     "MailQueueOldMessage", "stuck", "warning",
                     "Mail has waited in the queue of stuck for over an hour",
                     "The oldest message is 1h 20m 0s old; `mailappliance queue list` says why.")]},
            ],
        },
        {   # 20% bounced: alert; 4.8% bounced: quiet; one bounce and nothing else in the hour: quiet
            "interval": "1m",
            "input_series": [
                {"series": 'mailappliance_recipients_delivered_total{instance="bad",destination="remote"}',
                 "values": "0+8x120"},
                {"series": 'mailappliance_recipients_bounced_total{instance="bad"}', "values": "0+2x120"},
                {"series": 'mailappliance_recipients_delivered_total{instance="good",destination="local"}',
                 "values": "0+20x120"},
                {"series": 'mailappliance_recipients_bounced_total{instance="good"}', "values": "0+1x120"},
                {"series": 'mailappliance_recipients_delivered_total{instance="quiet",destination="remote"}',
                 "values": "0x120"},
                {"series": 'mailappliance_recipients_bounced_total{instance="quiet"}', "values": "0x30 1x90"},
            ],
            "alert_rule_test": [
                {"eval_time": "90m", "alertname": "MailBounceRateHigh",
                 "exp_alerts": [fired(
                     "MailBounceRateHigh", "bad", "warning",
                     "More than 10% of the recipients bounced on bad in the last hour",
                     "20% bounced; the `bounced` log lines give the reasons.")]},
            ],
        },
        {   # a certificate ending 10 days after time 0 alerts (after an hour); one ending in 30 days does not
            "interval": "1m",
            "input_series": [
                {"series": 'mailappliance_tls_certificate_expiry_timestamp_seconds{instance="soon"}',
                 "values": "864000x180"},
                {"series": 'mailappliance_tls_certificate_expiry_timestamp_seconds{instance="later"}',
                 "values": "2592000x180"},
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "MailCertificateExpiresSoon", "exp_alerts": []},
                {"eval_time": "2h", "alertname": "MailCertificateExpiresSoon",
                 "exp_alerts": [fired(
                     "MailCertificateExpiresSoon", "soon", "critical",
                     "The TLS certificate of soon expires in less than 14 days",
                     "It ends in 9d 22h 0m 0s. Renew it, then `kill -HUP` the daemon:"
                     " it serves the new one at once.")]},
            ],
        },
    ],
}
