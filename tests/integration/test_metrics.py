"""/metrics of a real twistd (`[listen] web`, TLS, allowed from loopback): mail sent over SMTP
moves the counters a Prometheus scrape reads, parsed with prometheus_client's parser."""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import DOMAIN, make_message, wait_for

BOB, ALICE = f"bob@{DOMAIN}", f"alice@{DOMAIN}"


def scrape(app) -> dict[tuple[str, frozenset], float]:
    context = app.tls_context()
    context.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{app.ports['web']}/metrics", context=context, timeout=20) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_mail_sent_over_smtp_moves_the_counters_prometheus_reads(make_appliance):
    app = make_appliance(services=("smtp", "web"))          # [web] allow_networks: loopback (the default)
    assert scrape(app).get(("mailappliance_messages_received_total", frozenset({("service", "smtp")})), 0) == 0
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [BOB], make_message("one"))
        client.sendmail("someone@outside.example", [BOB, ALICE], make_message("two"))
        client.mail("someone@outside.example")
        assert client.rcpt(f"nobody@{DOMAIN}")[0] == 550
        client.rset()
    wait_for(lambda: len(app.messages("bob")) == 2 and app.messages("alice"), timeout=15)
    after = scrape(app)
    assert after[("mailappliance_messages_received_total", frozenset({("service", "smtp")}))] == 2
    assert after[("mailappliance_recipients_delivered_total", frozenset({("destination", "local")}))] == 3
    assert after[("mailappliance_delivery_delay_seconds_count", frozenset({("destination", "local")}))] == 3
    assert after[("mailappliance_connections_total", frozenset({("service", "smtp")}))] >= 1
    assert after[("mailappliance_queue_messages", frozenset())] == 0
    assert after[("mailappliance_rejections_total", frozenset({("reason", "unknown user"), ("code", "550")}))] == 1
    assert after[("mailappliance_listener_connections", frozenset({("listener", "web")}))] >= 1   # this scrape
    assert after[("mailappliance_tls_certificate_expiry_timestamp_seconds", frozenset())] > 0
