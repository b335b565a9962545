"""The status page's parts: the event ring and its filter, the page counters, the HTML (escaped)."""
from __future__ import annotations

from appliance import stats
from appliance.envelope import Envelope, Recipient
from appliance.web import page
from appliance.web.events import EventRing, PageCounters, client_network


def test_the_ring_keeps_the_last_events_newest_first():
    ring = EventRing(lambda: 0.0, size=3)
    for n in range(5):
        ring("received", {"id": f"Q{n}"})
    assert [e.get("id") for e in ring.recent(10)] == ["Q4", "Q3", "Q2"]
    assert [e.get("id") for e in ring.recent(1)] == ["Q4"]


def test_the_filter_finds_a_queue_id_exactly_and_an_address_in_part():
    ring = EventRing(lambda: 0.0)
    ring("received", {"id": "Q1", "sender": "<a@x.test>", "rcpts": "Bob@y.test,carol@y.test"})
    ring("delivered", {"id": "Q1", "rcpt": "bob@y.test", "to": "/mail"})
    ring("received", {"id": "Q12", "sender": "<d@x.test>", "rcpts": "dave@y.test"})
    ring("auth-failed", {"service": "imap", "login": "bob@y.test", "peer": "192.0.2.1"})
    assert [e.event for e in ring.recent(10, "q1")] == ["delivered", "received"]      # not Q12
    assert [e.event for e in ring.recent(10, "bob@Y.test")] == ["auth-failed", "delivered", "received"]
    assert ring.recent(10, "192.0.2.1") == []      # a peer is neither a queue id nor an address
    assert len(ring.recent(10, "")) == 4


def test_tls_share_and_rejections_by_network():
    counts = PageCounters(stats.EventCounters(lambda: 600.0))
    for _ in range(4):
        counts("connect", {"service": "smtp"})
    counts("tls", {"service": "smtp"})
    counts("rejected", {"peer": "192.0.2.7"})
    counts("rejected", {"peer": "192.0.2.200"})
    counts("rejected", {"peer": "2001:db8:1:2::5"})
    assert counts.tls_share(3600) == {"smtp": (1, 4)}
    assert counts.rejected_networks(3600) == {"192.0.2.0/24": 2, "2001:db8:1::/48": 1}
    assert client_network("::ffff:198.51.100.9") == "198.51.100.0/24"


def test_deferred_mail_is_counted_by_destination():
    waiting = Envelope(id="Q1", sender="a@x.test", recipients=[Recipient("b@Far.example", last_error="451 later"),
                                                      Recipient("c@far.example", last_error="451 later"),
                                                      Recipient("d@near.example")])
    assert page.deferred_destinations([waiting]) == {"far.example": 2}


def test_the_page_escapes_what_came_from_outside():
    ring = EventRing(lambda: 0.0)
    ring("rejected", {"sender": "<script>alert(1)</script>@x", "reply": "550 <b>no</b>"})
    report = {"hostname": "mail<x>", "mail": {"last_hour": {"received": 3}}, "queue": {"reasons": []},
              "rejected": {"last_hour": {"<i>reason</i>": 2}}, "services": [], "failed_logins": {}}
    html = page.render(page.View(report=report, events=ring.recent(10), wanted='"><script>',
                                 svgs={"hour": "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>"})).decode()
    assert "<script>" not in html and "<b>no</b>" not in html and "<i>reason</i>" not in html
    assert "&lt;script&gt;" in html and 'id="received-last_hour">3<' in html
    assert '<figure id="plot-hour"><figcaption>Last hour (per minute)</figcaption><svg' in html
    assert "could not be drawn" in html          # the day and week plots were missing
