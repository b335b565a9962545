"""Counters of mail events, per minute over the last day and per hour over the last week, fed by
maillog's events and kept across restarts.

Why count maillog's events (and not add counting calls next to each one): every event an
operator sees in the log is already one `maillog.emit(event, **fields)` call, so the status
screen and the plots count exactly what the log shows, and a new call site is counted without
more code. maillog.emit hands each event to `publish`; whoever wants the events (the daemon's
MailCounters) subscribes. Nothing here parses log text.

Memory is bounded: 1440 minute buckets and 168 hour buckets, each holding at most
(kinds of event) x MAX_LABELS counts; a bucket past its ring's reach is reused for the current
minute or hour. The counters are the in-process API `status`, /metrics and the plots read.

Why the counts survive a restart: an admin who restarts after a config change must still see
the day's mail. CountingService writes them to state_dir (appliance/statsfile.py) once a minute
on a thread and once at stop, and reads them at start; the SMTP path only ever touches memory.
"""
from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance import replies, statsfile
from appliance.statsfile import Key, Snapshot

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
SAVE_INTERVAL = 60.0       # seconds between writes of the counters file: a crash loses at most this much
MAX_LABELS = 64            # distinct labels (rejection reasons) per event kind; the rest count as OTHER
OTHER = "other"

_log = Logger(namespace="stats")

Observer = Callable[[str, Mapping[str, object]], None]
_observers: list[Observer] = []


def subscribe(observer: Observer) -> None:
    """Receive every maillog event as (event, fields) from now on."""
    _observers.append(observer)


def unsubscribe(observer: Observer) -> None:
    if observer in _observers:
        _observers.remove(observer)


def publish(event: str, fields: Mapping[str, object]) -> None:
    """Called by maillog.emit for every event. A failing observer is logged and never reaches
    the code that logged the event: counting must not break mail."""
    for observer in list(_observers):
        try:
            observer(event, fields)
        except Exception:
            _log.failure("counting the {event} event failed", event=event)


class Ring:
    """Counts of (kind, label) per bucket of `width` seconds, for the last `size` buckets.

    A bucket is named by its number, `time // width`; slot `number % size` holds it until a
    newer bucket needs the slot. Not thread-safe on its own: EventCounters holds the lock.
    """

    def __init__(self, width: int, size: int) -> None:
        self.width, self.size = width, max(1, size)
        self.numbers: list[int] = [-1] * self.size                 # which bucket each slot holds
        self.counts: list[Counter[Key]] = [Counter() for _ in range(self.size)]

    def add(self, number: int, key: Key, count: int) -> None:
        slot = number % self.size
        if self.numbers[slot] != number:
            self.numbers[slot] = number
            self.counts[slot] = Counter()
        self.counts[slot][key] += count

    def merge(self, number: int, counts: Mapping[Key, int]) -> None:
        """Add a saved bucket's counts, unless its slot already holds a newer bucket."""
        slot = number % self.size
        if self.numbers[slot] > number:
            return
        if self.numbers[slot] != number:
            self.numbers[slot], self.counts[slot] = number, Counter()
        self.counts[slot].update(counts)

    def between(self, first: int, last: int) -> Iterator[tuple[int, Counter[Key]]]:
        """(number, counts) of the buckets numbered first..last that hold something."""
        for number, counts in zip(self.numbers, self.counts):
            if first <= number <= last and counts:
                yield number, counts


class EventCounters:
    """Counts of (kind, label) per minute over the last day and per hour over the last week.

    `clock` returns seconds since the epoch (the reactor's `seconds` in the daemon, a fake in
    tests). Thread-safe: maillog events may come from pool threads, and the plots are drawn on
    one. Each event is added to both rings (two dict updates: the SMTP path does not notice);
    the minute ring answers for spans up to a day, the hour ring for longer ones.
    """

    def __init__(self, clock: Callable[[], float], span: int = DAY, max_labels: int = MAX_LABELS,
                 long_span: int = WEEK) -> None:
        self._clock = clock
        self._minutes = Ring(MINUTE, span // MINUTE)
        self._hours = Ring(HOUR, long_span // HOUR)
        self._max_labels = max_labels
        self._labels: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._clock()

    def add(self, kind: str, label: str = "", count: int = 1) -> None:
        now = int(self._clock())
        with self._lock:
            key = (kind, self._bounded(kind, label))
            self._minutes.add(now // MINUTE, key, count)
            self._hours.add(now // HOUR, key, count)

    def _bounded(self, kind: str, label: str) -> str:
        """The label, or OTHER once `kind` has max_labels distinct ones (outside text must not
        grow memory without end: a reply may carry a remote domain's text)."""
        known = self._labels.setdefault(kind, set())
        if label in known:
            return label
        if len(known) >= self._max_labels:
            return OTHER
        known.add(label)
        return label

    def _ring(self, seconds: float) -> Ring:
        return self._minutes if seconds <= self._minutes.width * self._minutes.size else self._hours

    def totals(self, seconds: float) -> Counter[Key]:
        """Counts of the last `seconds`, in whole buckets (minutes up to a day, hours beyond),
        the current one included."""
        ring = self._ring(seconds)
        now = int(self._clock()) // ring.width
        first = now - min(ring.size, max(1, -(-int(seconds) // ring.width))) + 1
        total: Counter[Key] = Counter()
        with self._lock:
            for _, counts in ring.between(first, now):
                total.update(counts)
        return total

    def total(self, kind: str, seconds: float) -> int:
        return sum(n for (k, _), n in self.totals(seconds).items() if k == kind)

    def by_label(self, kind: str, seconds: float) -> dict[str, int]:
        return {label: n for (k, label), n in self.totals(seconds).items() if k == kind and n}

    def series(self, kind: str, points: int, width: int = MINUTE) -> list[int]:
        """Counts of `kind` (all labels) per `width` seconds, oldest first, ending with the
        current period. `width` is a whole number of minutes (up to a day back) or of hours (up
        to a week back); periods start at multiples of `width` since the epoch."""
        return self.timeline((kind,), points, width)[1][kind]

    def timeline(self, kinds: Iterable[str], points: int, width: int = MINUTE) -> tuple[list[int], dict[str, list[int]]]:
        """(start of each period in seconds since the epoch, {kind: counts per period}) as
        `series`, for several kinds from one pass over the buckets."""
        ring = self._hours if width % HOUR == 0 and width >= HOUR else self._minutes
        if width <= 0 or width % ring.width:
            raise ValueError(f"a period of {width} s is not a whole number of {ring.width} s buckets")
        points = max(1, min(points, ring.size * ring.width // width))
        last = int(self._clock()) // width
        first = last - points + 1
        kinds = tuple(kinds)
        series = {kind: [0] * points for kind in kinds}
        with self._lock:
            for number, counts in ring.between(first * width // ring.width, (last + 1) * width // ring.width - 1):
                index = number * ring.width // width - first
                for (kind, _), n in counts.items():
                    if kind in series:
                        series[kind][index] += n
        return [(first + i) * width for i in range(points)], series

    # -- what is saved across a restart (appliance/statsfile.py writes and reads it)

    def snapshot(self) -> Snapshot:
        """A copy of the buckets that hold something: cheap (no encoding), so the reactor can
        take it and a thread can write it."""
        with self._lock:
            return {"minute": [(n, dict(c)) for n, c in self._minutes.between(0, 2**62)],
                    "hour": [(n, dict(c)) for n, c in self._hours.between(0, 2**62)]}

    def restore(self, snapshot: Snapshot) -> int:
        """Add saved buckets still within reach (none from the future); returns how many."""
        now = int(self._clock())
        restored = 0
        with self._lock:
            for name, ring in (("minute", self._minutes), ("hour", self._hours)):
                current = now // ring.width
                for number, counts in snapshot.get(name, ()):
                    if current - ring.size < number <= current:
                        bounded: Counter[Key] = Counter()
                        for (kind, label), n in counts.items():
                            bounded[(kind, self._bounded(kind, label))] += n
                        ring.merge(number, bounded)
                        restored += 1
        return restored


# --- what the maillog events mean for the counters ----------------------------------------------

RECEIVED, DELIVERED, RELAYED, DEFERRED, BOUNCED, REJECTED, FAILED_LOGIN = (
    "received", "delivered", "relayed", "deferred", "bounced", "rejected", "failed-login")
FLOW = (RECEIVED, DELIVERED, RELAYED, DEFERRED, BOUNCED, REJECTED)   # DELIVERED: into a local mailbox
_SIMPLE = {"received": RECEIVED, "deferred": DEFERRED, "bounced": BOUNCED}
_REFUSING_VERDICTS = ("reject", "tempfail")
_ANSWERED_AT_ONCE = ("pregreet",)   # checks whose refusal the server sends itself, with no `rejected` line
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_RECENT_REFUSALS = 1024
_COUNTED = "\0counted"


class MailCounters:
    """Turns maillog events into counts: mail flow, rejections by reason, failed logins.

    A `delivered` event with via=relay counts as RELAYED (handed to a remote server), any other
    as DELIVERED (into a mailbox here, or to a local program).

    A check's refusal is logged twice: its `check` line (verdict, check name, reply) and the
    server's `rejected` line when the client is answered (for a connect-stage refusal: at
    every MAIL of the session). The rejection is counted once per `rejected` line, under the
    name of the check that gave that reply to that peer, e.g. `greylist 451 4.7.1`; a rejection
    no check made is named after the reply (`unknown user 550 5.1.1`).
    """

    def __init__(self, counters: EventCounters) -> None:
        self.counters = counters
        self._refusals: OrderedDict[tuple[str, str], str] = OrderedDict()   # (peer, reply) -> check

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        if event in _SIMPLE:
            self.counters.add(_SIMPLE[event])
        elif event == "delivered":     # via=relay: handed to another server (maillog.delivered)
            self.counters.add(RELAYED if fields.get("via") == "relay" else DELIVERED)
        elif event == "auth-failed":
            self.counters.add(FAILED_LOGIN, _text(fields.get("service")))
        elif event == "check":
            self._check(fields)
        elif event == "rejected":
            self._rejected(fields)

    def _check(self, fields: Mapping[str, object]) -> None:
        if _text(fields.get("verdict")) not in _REFUSING_VERDICTS:
            return
        check, reply = _text(fields.get("check")) or "check", _one_line(fields.get("reply"))
        key = (_text(fields.get("peer")), reply)
        if check in _ANSWERED_AT_ONCE:
            self.counters.add(REJECTED, f"{check} {reply_code(reply)}".strip())
            check = _COUNTED     # should a `rejected` line for it come after all, it is not counted twice
        self._refusals[key] = check
        self._refusals.move_to_end(key)
        while len(self._refusals) > _RECENT_REFUSALS:
            self._refusals.popitem(last=False)

    def _rejected(self, fields: Mapping[str, object]) -> None:
        reply = _one_line(fields.get("reply"))
        key = (_text(fields.get("peer")), reply)
        check = self._refusals.get(key)
        if check == _COUNTED:
            del self._refusals[key]
            return
        name = check or reply_name(reply)
        self.counters.add(REJECTED, f"{name} {reply_code(reply)}".strip())


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _one_line(value: object) -> str:
    return " ".join(_text(value).split())


def reply_code(reply: str) -> str:
    """`550 5.1.1` of `550 5.1.1 Recipient address rejected: ...`; `552` when there is no enhanced code."""
    words = reply.split(maxsplit=2)
    if not words or not (words[0].isdigit() and len(words[0]) == 3):
        return ""
    if len(words) > 1 and _ENHANCED.match(words[1]):
        return f"{words[0]} {words[1]}"
    return words[0]


def _named_replies() -> list[tuple[str, str, str]]:
    """(reply line, its codes and first word, name) of every named SMTP refusal in appliance.replies."""
    named = []
    for name, value in vars(replies).items():
        if isinstance(value, replies.Reply) and value.code >= 400:
            line = value.line().decode()
            named.append((line, " ".join(line.split()[:3]), name.lower().replace("_", " ")))
    return sorted(named, key=lambda item: -len(item[0]))


_NAMED = _named_replies()


def reply_name(reply: str) -> str:
    """What a refusal is called: its name in appliance.replies (UNKNOWN_USER: `unknown user`), also
    when its text was changed after the first word and only one named reply starts so (GREYLISTED
    `with_text`); or else the first
    words of its text without addresses (`too big` of `552 5.3.4 too big`)."""
    for line, _, name in _NAMED:
        if reply.startswith(line):
            return name
    start = " ".join(reply.split()[:3])
    alike = [name for _, first, name in _NAMED if first == start]
    if len(alike) == 1:
        return alike[0]
    code = reply_code(reply)
    text = reply.split(maxsplit=len(code.split()))[-1] if code else reply
    text = re.sub(r"<[^>]*>", "", text).lstrip(" :;,.-")
    text = re.split(r"[,:;(\[]", text)[0]
    return " ".join(text.lower().split()[:5])[:40] or "refused"


class CountingService(Service):
    """Counts maillog's events while the daemon runs: subscribed on start, unsubscribed on stop.

    With a `path`, the counts are read from it at start (a missing or unusable file: from zero,
    with one log line), written to it every `interval` seconds and at stop. The periodic write
    runs through `in_thread` (a thread; the reactor only copies the buckets that hold
    something), one at a time; the one at stop is written at once, as the pools may be gone.
    `scheduler` is the reactor (IReactorTime) for the timer.
    """

    name = "stats"

    def __init__(self, clock: Callable[[], float], path: str | None = None, *, scheduler: Any = None,
                 interval: float = SAVE_INTERVAL, in_thread: Callable[..., Deferred] | None = None) -> None:
        self.counters = EventCounters(clock)
        self.mail = MailCounters(self.counters)
        self._clock = clock
        self.started_at = clock()
        self.path = path
        self._interval = interval
        self._scheduler = scheduler
        self._in_thread = in_thread or deferToThread
        self._timer: LoopingCall | None = None
        self._saving = False
        self._failing = False
        self._written = threading.Lock()
        self._newest = float("-inf")      # saved_at of the newest snapshot written

    def startService(self) -> None:
        self.started_at = self._clock()
        if self.path:
            self._load()
        subscribe(self.mail)
        super().startService()
        if self.path and self._scheduler is not None:
            self._timer = LoopingCall(self._save_in_thread)
            self._timer.clock = self._scheduler
            self._timer.start(self._interval, now=False)

    def stopService(self) -> None:
        unsubscribe(self.mail)
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None
        if self.path:
            try:
                self.save()
            except OSError as e:
                _log.error("could not save the counters to {path}: {reason}", path=self.path, reason=e.strerror)
        super().stopService()

    def _load(self) -> None:
        try:
            loaded = statsfile.load(self.path)
        except (statsfile.StatsFileError, OSError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            _log.warn("{path}: saved counters unusable ({reason}); counting from zero", path=self.path,
                      reason=reason)
            return
        if loaded is None:
            _log.info("{path}: no saved counters; counting from zero", path=self.path)
            return
        snapshot, saved_at = loaded
        restored = self.counters.restore(snapshot)
        _log.info("{path}: {restored} buckets of counts restored, saved {age:.0f} s ago", path=self.path,
                  restored=restored, age=max(0.0, self._clock() - saved_at))

    def save(self, snapshot: Snapshot | None = None, saved_at: float | None = None) -> None:
        """Write the counters now (blocking). A snapshot older than one already written is
        skipped, so a slow periodic write can never overwrite the final one."""
        if saved_at is None:
            saved_at = self._clock()
        if snapshot is None:
            snapshot = self.counters.snapshot()
        with self._written:
            if saved_at < self._newest:
                return
            statsfile.save(self.path, snapshot, saved_at)
            self._newest = saved_at

    def _save_in_thread(self) -> None:
        if self._saving:          # the disk is slow: the next tick tries again
            return
        self._saving = True
        d = self._in_thread(self.save, self.counters.snapshot(), self._clock())
        d.addCallbacks(self._saved, self._save_failed)

    def _saved(self, _: object) -> None:
        self._saving = False
        if self._failing:
            _log.info("the counters are saved to {path} again", path=self.path)
        self._failing = False

    def _save_failed(self, failure: Failure) -> None:
        """Logged once per streak of failures (a full disk would otherwise log every minute)."""
        self._saving = False
        if not self._failing:
            _log.failure("could not save the counters to {path}", failure, path=self.path)
        self._failing = True
