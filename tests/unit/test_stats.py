"""The event counters behind `mailappliance status`: minute buckets over a day, fed by maillog's events."""
from __future__ import annotations

import sys

import pytest

from appliance import maillog, replies, stats
from appliance.stats import DAY, HOUR, MINUTE, WEEK, EventCounters, MailCounters

START = 1_800_000_000.0     # a whole minute: 30_000_000 * 60


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counting(clock):
    """A MailCounters subscribed to maillog for the test, unsubscribed after it."""
    mail = MailCounters(EventCounters(clock))
    stats.subscribe(mail)
    yield mail
    stats.unsubscribe(mail)


def test_an_event_counts_in_the_last_hour_and_day_then_leaves_the_hour_then_the_day(clock):
    counters = EventCounters(clock)
    counters.add("received")
    counters.add("received")
    assert (counters.total("received", HOUR), counters.total("received", DAY)) == (2, 2)
    clock.advance(59 * MINUTE)
    assert counters.total("received", HOUR) == 2        # the 60th minute counted, its first one included
    clock.advance(MINUTE)
    assert (counters.total("received", HOUR), counters.total("received", DAY)) == (0, 2)
    clock.advance(DAY - HOUR - MINUTE)
    assert counters.total("received", DAY) == 2
    clock.advance(MINUTE)
    assert counters.total("received", DAY) == 0


def test_a_bucket_reused_a_day_later_starts_from_zero(clock):
    counters = EventCounters(clock)
    counters.add("bounced", count=5)
    clock.advance(DAY)                              # the same slot of the ring, one day on
    counters.add("bounced")
    assert counters.total("bounced", DAY) == 1
    assert counters.series("bounced", 3) == [0, 0, 1]


def test_series_gives_one_count_per_minute_oldest_first(clock):
    counters = EventCounters(clock)
    counters.add("delivered")
    clock.advance(2 * MINUTE)
    counters.add("delivered", count=3)
    assert counters.series("delivered", 4) == [0, 1, 0, 3]


def test_the_hour_ring_keeps_a_week_after_the_minutes_have_gone(clock):
    counters = EventCounters(clock)
    counters.add("received", count=4)
    clock.advance(2 * DAY)
    counters.add("received")
    assert counters.total("received", DAY) == 1
    assert counters.total("received", WEEK) == 5
    clock.advance(5 * DAY - HOUR)           # the first event's hour is the oldest of the week
    assert counters.total("received", WEEK) == 5
    clock.advance(HOUR)
    assert counters.total("received", WEEK) == 1


def test_timelines_of_an_hour_a_day_and_a_week(clock):
    """Per minute for the hour, per 5 minutes for the day, per hour for the week: periods start at
    multiples of their width, the last one is the current (partial) one."""
    counters = EventCounters(clock)
    counters.add("received", count=2)                   # at START, a whole hour
    clock.advance(7 * MINUTE + 30)
    counters.add("received")
    counters.add("bounced")
    starts, series = counters.timeline(("received", "bounced"), 60, MINUTE)
    assert starts[-1] == START + 7 * MINUTE and starts[0] == starts[-1] - 59 * MINUTE
    assert series["received"][-8:] == [2, 0, 0, 0, 0, 0, 0, 1] and sum(series["received"]) == 3
    assert series["bounced"][-1] == 1 and sum(series["bounced"]) == 1
    starts, series = counters.timeline(("received",), 288, 5 * MINUTE)
    assert len(starts) == 288 and starts[-1] == START + 5 * MINUTE
    assert series["received"][-2:] == [2, 1]
    starts, series = counters.timeline(("received", "relayed"), 168, HOUR)
    assert starts[-1] == START and series["received"][-1] == 3 and series["relayed"] == [0] * 168
    clock.advance(3 * HOUR)
    assert counters.series("received", 168, HOUR)[-4:] == [3, 0, 0, 0]
    assert counters.series("received", 60) == [0] * 60


def test_a_timeline_longer_than_its_ring_is_cut_and_odd_widths_are_refused(clock):
    counters = EventCounters(clock)
    assert len(counters.series("received", 5000, MINUTE)) == 24 * 60
    assert len(counters.series("received", 5000, HOUR)) == 7 * 24
    with pytest.raises(ValueError):
        counters.series("received", 10, 90)


def test_labels_are_counted_apart_and_bounded(clock):
    counters = EventCounters(clock, max_labels=3)
    for label in ("a", "b", "c", "d", "e", "a"):
        counters.add("rejected", label)
    assert counters.by_label("rejected", HOUR) == {"a": 2, "b": 1, "c": 1, stats.OTHER: 2}


def test_memory_stays_bounded_over_days_of_events_with_ever_new_labels(clock):
    counters = EventCounters(clock)
    for minute in range(3 * 24 * 60):
        counters.add("rejected", f"reason {minute}")
        counters.add("received")
        clock.advance(MINUTE)
    minutes, hours = counters._minutes, counters._hours
    assert len(minutes.counts) == len(minutes.numbers) == 24 * 60
    assert len(hours.counts) == len(hours.numbers) == 7 * 24
    assert max(len(bucket) for bucket in minutes.counts) <= 2
    assert max(len(bucket) for bucket in hours.counts) <= stats.MAX_LABELS + 2
    assert len(counters._labels["rejected"]) == stats.MAX_LABELS
    assert sum(sys.getsizeof(b) for b in minutes.counts + hours.counts) < 2_000_000
    assert counters.total("received", DAY) == 24 * 60 - 1     # the current minute has none yet
    assert counters.by_label("rejected", HOUR) == {stats.OTHER: 59}


def test_maillog_events_are_counted_as_the_status_screen_shows_them(counting):
    maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 100, ["bob@example.test"], "ESMTP")
    maillog.delivered("Q1", "bob@example.test", "/var/mail/bob", 0.1, via="local")
    maillog.delivered("Q1", "carol@example.net", "mx.example.net[192.0.2.25]:25", 0.3, via="relay")
    maillog.deferred("Q2", "x@example.net", "4.4.3 MX lookup failed", 300)
    maillog.bounced("Q3", "y@example.net", "5.1.1 no such user")
    maillog.auth("submission", "192.0.2.9", "alice@example.test", False, "PLAIN", "bad password")
    maillog.auth("submission", "192.0.2.9", "alice@example.test", True, "PLAIN")
    maillog.rejected("smtp", "192.0.2.7", "RCPT", replies.UNKNOWN_USER.line().decode(), rcpt="no@example.test")
    counters = counting.counters
    assert {kind: counters.total(kind, HOUR) for kind in stats.FLOW} == {
        "received": 1, "delivered": 1, "relayed": 1, "deferred": 1, "bounced": 1, "rejected": 1}
    assert counters.by_label(stats.FAILED_LOGIN, DAY) == {"submission": 1}
    assert counters.by_label(stats.REJECTED, DAY) == {"unknown user 550 5.1.1": 1}


def test_a_checks_refusal_is_counted_once_under_the_checks_name(counting):
    reply = replies.GREYLISTED.with_text("Greylisted, try again in 300 seconds").line().decode()
    maillog.emit("check", session="S1", check="greylist", stage="rcpt", verdict="tempfail", peer="192.0.2.7",
                 reply=reply)
    maillog.rejected("smtp", "192.0.2.7", "RCPT", reply)
    # the same reply to another client, from no check of ours: named after the reply
    maillog.rejected("smtp", "192.0.2.8", "RCPT", reply)
    assert counting.counters.by_label(stats.REJECTED, HOUR) == {"greylist 451 4.7.1": 1, "greylisted 451 4.7.1": 1}


def test_a_connect_stage_refusal_counts_at_every_mail_it_answers(counting):
    reply = replies.DNSBL_LISTED.line("zen.example").decode()
    maillog.emit("check", session="S1", check="dnsbl", stage="connect", verdict="reject", peer="192.0.2.7",
                 reply=reply)
    for _ in range(2):
        maillog.rejected("smtp", "192.0.2.7", "MAIL", reply)
    assert counting.counters.by_label(stats.REJECTED, HOUR) == {"dnsbl 554 5.7.1": 2}


def test_passing_verdicts_count_nothing_and_pregreet_counts_at_once(counting):
    maillog.emit("check", check="spf", stage="mail", verdict="accept", peer="192.0.2.7", reply="")
    maillog.emit("check", check="pregreet", stage="connect", verdict="reject", peer="192.0.2.7",
                 reply=replies.PREGREET.line().decode())
    assert counting.counters.by_label(stats.REJECTED, HOUR) == {"pregreet 554 5.5.1": 1}
    maillog.rejected("smtp", "192.0.2.7", "CONNECT", replies.PREGREET.line().decode())    # if it is ever logged
    assert counting.counters.by_label(stats.REJECTED, HOUR) == {"pregreet 554 5.5.1": 1}


def test_a_rejection_no_reply_names_is_called_by_its_text():
    assert stats.reply_name("552 5.3.4 too big") == "too big"
    assert stats.reply_name("550 5.7.1 <spam@example.org>: go away: now") == "go away"
    assert stats.reply_name("554 5.7.1 Service unavailable; client blocked using zen.example") == "dnsbl listed"
    assert stats.reply_name("421 4.3.2 Shutting down, 30 s") == "shutting down"
    assert stats.reply_code("552 5.3.4 too big") == "552 5.3.4"
    assert stats.reply_code("421 closing") == "421"
    assert stats.reply_code("junk") == ""


def test_a_failing_observer_never_reaches_the_code_that_logged(counting):
    def broken(event, fields):
        raise RuntimeError("bug")
    stats.subscribe(broken)
    try:
        maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 1, ["b@example.test"], "ESMTP")
    finally:
        stats.unsubscribe(broken)
    assert counting.counters.total("received", HOUR) == 1


def test_the_counting_service_counts_only_while_running(clock):
    service = stats.CountingService(clock)
    maillog.emit("received", id="Q0")
    service.startService()
    maillog.emit("received", id="Q1")
    service.stopService()
    maillog.emit("received", id="Q2")
    assert service.counters.total("received", HOUR) == 1
