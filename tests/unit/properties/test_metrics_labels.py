"""/metrics labels come partly from outside text (a reply naming a client's address, an SPF
explanation, a TLS version string): whatever the events carry, counting never fails, the number
of series stays bounded, and the scrape still parses."""
from __future__ import annotations

from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.web import metrics
from appliance.web.metrics import MailMetrics

replies_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda code, enhanced, text: f"{code} {enhanced} {text}",
              st.sampled_from(["421", "450", "451", "550", "554", "5x0"]),
              st.sampled_from(["4.7.1", "5.1.1", "5.7.23", "9.9", ""]), st.text(max_size=120)))
values = st.one_of(st.none(), st.text(max_size=40), replies_text, st.integers(), st.floats(), st.binary(max_size=20))
events = st.sampled_from(["check", "rejected", "received", "delivered", "deferred", "bounced", "auth-ok",
                          "auth-failed", "tls", "connect", "connection-refused", "other"])
fields = st.dictionaries(st.sampled_from(["check", "verdict", "peer", "reply", "service", "to", "delay", "version",
                                          "reason"]), values, max_size=6)


def series(registry: CollectorRegistry) -> dict[str, int]:
    """How many series each metric family has, read back through the parser."""
    text = generate_latest(registry).decode()
    return {family.name: len({tuple(sorted(s.labels.items())) for s in family.samples if s.name.endswith("_total")})
            for family in text_string_to_metric_families(text)}


@given(st.lists(st.tuples(events, fields), max_size=40))
def test_any_events_are_counted_and_the_scrape_parses(stream):
    registry = CollectorRegistry()
    mail = MailMetrics(registry)
    for event, given_fields in stream:
        given_fields = dict(given_fields)
        if event == "check":
            given_fields.setdefault("verdict", "reject")
        mail(event, given_fields)
    counted = series(registry)
    assert counted["mailappliance_messages_received"] <= metrics.MAX_SERVICES + 1
    assert counted["mailappliance_tls_handshakes"] <= (metrics.MAX_SERVICES + 1) * (len(metrics.TLS_VERSIONS) + 1)


@given(st.lists(replies_text, min_size=1, max_size=120, unique=True))
def test_arbitrary_rejection_texts_make_a_bounded_set_of_reasons(replies):
    registry = CollectorRegistry()
    mail = MailMetrics(registry)
    for n, reply in enumerate(replies):
        mail("rejected", {"service": "smtp", "peer": f"192.0.2.{n % 250}", "reply": reply})
    counted = series(registry)
    # Every reason the limit lets in, plus "other" for each reply class (4xx, 5xx, none).
    assert counted["mailappliance_rejections"] <= metrics.MAX_REASONS + 3
    assert sum(sample.value for family in text_string_to_metric_families(generate_latest(registry).decode())
               if family.name == "mailappliance_rejections"
               for sample in family.samples if sample.name.endswith("_total")) == len(replies)
