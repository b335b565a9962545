"""The counters survive a restart: written to state_dir once a minute (on a thread) and at stop,
read at start; a missing, truncated or foreign file means counting from zero with one log line."""
from __future__ import annotations

import json
import os
import stat

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import formatEvent, globalLogPublisher

from appliance import maillog, stats, statsfile
from appliance.stats import DAY, HOUR, MINUTE, WEEK, CountingService

START = 1_800_000_000.0


class StatsLog:
    """The `stats` log lines written while it is open, formatted."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _observe(self, event: dict) -> None:
        if event.get("log_namespace") == "stats":
            self.lines.append(formatEvent(event))

    def __enter__(self) -> "StatsLog":
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observe)


def at_once(f, *args):
    """in_thread for tests: the write happens now, in this thread."""
    return maybeDeferred(f, *args)


@pytest.fixture
def reactor() -> task.Clock:
    clock = task.Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def path(tmp_path) -> str:
    return statsfile.path_in(str(tmp_path))


def service(reactor, path, **options) -> CountingService:
    options.setdefault("in_thread", at_once)
    return CountingService(reactor.seconds, path, scheduler=reactor, **options)


def mail(n: int = 1, via: str = "local") -> None:
    for _ in range(n):
        maillog.received("Q1", "smtp", "192.0.2.1", "a@example.org", 100, ["bob@example.test"], "ESMTP")
        maillog.delivered("Q1", "bob@example.test", "/var/mail/bob", 0.1, via=via)


def flow(counting: CountingService, seconds: float) -> dict[str, int]:
    return {kind: counting.counters.total(kind, seconds) for kind in stats.FLOW}


def test_the_counts_of_the_last_hour_day_and_week_survive_a_restart(reactor, path):
    first = service(reactor, path)
    first.startService()
    mail(3)
    reactor.advance(2 * DAY)
    mail(2, via="relay")
    maillog.rejected("smtp", "192.0.2.7", "RCPT", "550 5.1.1 no such user here")
    reactor.advance(10 * MINUTE)
    first.stopService()

    reactor.advance(5 * MINUTE)             # the daemon was down for five minutes
    with StatsLog() as log:
        second = service(reactor, path)
        second.startService()
    mail(1)
    assert flow(second, HOUR) == {"received": 3, "delivered": 1, "relayed": 2, "deferred": 0, "bounced": 0,
                                  "rejected": 1}
    assert flow(second, WEEK)["received"] == 6 and flow(second, WEEK)["delivered"] == 4
    assert second.counters.by_label(stats.REJECTED, DAY) == {"no such user here 550 5.1.1": 1}
    assert len(log.lines) == 1 and "restored, saved 300 s ago" in log.lines[0], log.lines
    second.stopService()


def test_the_file_is_written_every_minute_not_at_each_event(reactor, path, monkeypatch):
    writes = []
    real_save = statsfile.save
    monkeypatch.setattr(statsfile, "save", lambda *args: writes.append(args[2]) or real_save(*args))
    counting = service(reactor, path)
    counting.startService()
    mail(500)
    assert writes == [] and not os.path.exists(path)
    reactor.advance(stats.SAVE_INTERVAL)
    assert writes == [START + 60]
    snapshot, saved = statsfile.load(path)
    assert saved == START + 60 and sum(n for _, counts in snapshot["minute"] for n in counts.values()) == 1000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600       # who mailed how much is nobody else's business
    reactor.advance(30)
    mail(10)
    counting.stopService()
    assert writes == [START + 60, START + 90]
    counting.save(snapshot, saved)      # a periodic write that comes late changes nothing
    assert statsfile.load(path)[1] == START + 90


def test_one_write_at_a_time_and_the_last_one_at_stop(reactor, path):
    pending: list[Deferred] = []
    counting = service(reactor, path, in_thread=lambda f, *args: pending.append(Deferred()) or pending[-1])
    counting.startService()
    reactor.advance(stats.SAVE_INTERVAL * 3)        # the disk is stuck: no pile-up of writers
    assert len(pending) == 1
    mail(2)
    counting.stopService()
    assert statsfile.load(path)[1] == START + 180
    pending[0].callback(None)


def test_a_failing_write_is_logged_once_and_counting_goes_on(reactor, tmp_path):
    path = str(tmp_path / "gone" / statsfile.FILENAME)
    with StatsLog() as log:
        counting = service(reactor, path)
        counting.startService()
        for _ in range(3):
            reactor.advance(stats.SAVE_INTERVAL)
            mail()
        os.mkdir(tmp_path / "gone")
        reactor.advance(stats.SAVE_INTERVAL)
    failures = [line for line in log.lines if "could not save" in line]
    assert len(failures) == 1 and path in failures[0]
    assert any("saved to" in line and "again" in line for line in log.lines)
    assert counting.counters.total(stats.RECEIVED, HOUR) == 3
    assert statsfile.load(path) is not None
    counting.stopService()


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[: len(data) // 2], "not JSON"),
    (lambda data: b"\x00" * 40, "not JSON"),
    (lambda data: data.replace(b"mailappliance-counters 1", b"mailappliance-counters 9"), "not a"),
    (lambda data: data.replace(b'"hour":[', b'"hour":[["x"],'), "bucket is not"),
    (lambda data: b"", "not JSON"),
])
def test_a_damaged_file_means_counting_from_zero_with_one_log_line(reactor, path, damage, reason):
    first = service(reactor, path)
    first.startService()
    mail(4)
    first.stopService()
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(damage(data))
    with StatsLog() as log:
        second = service(reactor, path)
        second.startService()
    assert flow(second, WEEK)["received"] == 0
    assert len(log.lines) == 1 and "saved counters unusable" in log.lines[0] and reason in log.lines[0], log.lines
    assert "counting from zero" in log.lines[0]
    mail(1)
    second.stopService()
    third = service(reactor, path)     # the damaged file was replaced by a good one at stop
    third.startService()
    assert flow(third, HOUR)["received"] == 1
    third.stopService()


def test_a_missing_file_is_one_line_too(reactor, path):
    with StatsLog() as log:
        counting = service(reactor, path)
        counting.startService()
    assert log.lines == [f"{path}: no saved counters; counting from zero"]
    counting.stopService()


def test_counts_past_reach_are_not_restored(reactor, path):
    first = service(reactor, path)
    first.startService()
    mail(2)
    first.stopService()
    reactor.advance(2 * DAY)
    second = service(reactor, path)
    second.startService()
    assert flow(second, DAY)["received"] == 0 and flow(second, WEEK)["received"] == 2
    second.stopService()
    reactor.advance(WEEK)
    third = service(reactor, path)
    third.startService()
    assert flow(third, WEEK)["received"] == 0
    assert third.counters.snapshot() == {"minute": [], "hour": []}
    third.stopService()


def test_counts_from_the_future_are_not_restored(reactor, path):
    """A clock set back (a wrong time fixed after the save) must not leave counts shown later."""
    reactor.advance(DAY)
    first = service(reactor, path)
    first.startService()
    mail(1)
    first.stopService()
    clock = task.Clock()
    clock.advance(START)
    second = service(clock, path)
    second.startService()
    assert second.counters.snapshot() == {"minute": [], "hour": []}
    second.stopService()


def test_restored_labels_stay_bounded(reactor, path):
    """A file holding many labels (hand-made, or from an older version) does not grow the labels."""
    minute = int(START // MINUTE)
    document = {"format": statsfile.FORMAT, "saved": START, "hour": [],
                "keys": [["rejected", f"reason {n}"] for n in range(500)],
                "minute": [[minute, [number for n in range(500) for number in (n, 1)]]]}
    with open(path, "w") as handle:
        json.dump(document, handle)
    counting = service(reactor, path)
    counting.startService()
    labels = counting.counters.by_label(stats.REJECTED, HOUR)
    assert len(labels) == stats.MAX_LABELS + 1 and labels[stats.OTHER] == 500 - stats.MAX_LABELS
    counting.stopService()


def test_without_a_path_nothing_is_written(reactor, tmp_path):
    counting = CountingService(reactor.seconds, scheduler=reactor)
    counting.startService()
    mail()
    reactor.advance(stats.SAVE_INTERVAL * 2)
    counting.stopService()
    assert os.listdir(tmp_path) == []
