"""Counters of mail events in one-minute buckets over the last 24 hours, fed by maillog's events.

Why count maillog's events (and not add counting calls next to each one): every event an
operator sees in the log is already one `maillog.emit(event, **fields)` call, so the status
screen counts exactly what the log shows, and a new call site is counted without more code.
maillog.emit hands each event to `publish`; whoever wants the events (the daemon's
MailCounters) subscribes. Nothing here parses log text.

Memory is bounded: 1440 buckets (one per minute of a day), each holding at most
(kinds of event) x MAX_LABELS counts; a bucket older than a day is reused for the current minute.
The counters are the in-process API the status command reads, and /metrics (issue 13) can read.
"""
from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from twisted.application.service import Service
from twisted.logger import Logger

from appliance import replies

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
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


class EventCounters:
    """Counts of (kind, label) per minute over the last `span` seconds.

    `clock` returns seconds since the epoch (the reactor's `seconds` in the daemon, a fake in
    tests). Thread-safe: maillog events may come from pool threads.
    """

    def __init__(self, clock: Callable[[], float], span: int = DAY, max_labels: int = MAX_LABELS) -> None:
        self._clock = clock
        self._size = max(1, span // MINUTE)
        self._minutes: list[int] = [-1] * self._size       # which minute each slot holds
        self._counts: list[Counter[tuple[str, str]]] = [Counter() for _ in range(self._size)]
        self._max_labels = max_labels
        self._labels: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, label: str = "", count: int = 1) -> None:
        minute = int(self._clock() // MINUTE)
        with self._lock:
            label = self._bounded(kind, label)
            slot = minute % self._size
            if self._minutes[slot] != minute:
                self._minutes[slot] = minute
                self._counts[slot] = Counter()
            self._counts[slot][(kind, label)] += count

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

    def totals(self, seconds: float) -> Counter[tuple[str, str]]:
        """Counts of the last `seconds` (whole minutes, the current one included)."""
        now = int(self._clock() // MINUTE)
        first = now - min(self._size, max(1, -(-int(seconds) // MINUTE))) + 1
        total: Counter[tuple[str, str]] = Counter()
        with self._lock:
            for minute, counts in zip(self._minutes, self._counts):
                if first <= minute <= now:
                    total.update(counts)
        return total

    def total(self, kind: str, seconds: float) -> int:
        return sum(n for (k, _), n in self.totals(seconds).items() if k == kind)

    def by_label(self, kind: str, seconds: float) -> dict[str, int]:
        return {label: n for (k, label), n in self.totals(seconds).items() if k == kind and n}

    def series(self, kind: str, minutes: int) -> list[int]:
        """Per-minute counts of `kind` (all labels), oldest first, ending with the current minute."""
        now = int(self._clock() // MINUTE)
        minutes = min(self._size, max(1, minutes))
        with self._lock:
            by_minute = {minute: sum(n for (k, _), n in counts.items() if k == kind)
                         for minute, counts in zip(self._minutes, self._counts) if now - minutes < minute <= now}
        return [by_minute.get(minute, 0) for minute in range(now - minutes + 1, now + 1)]


# --- what the maillog events mean for the counters ----------------------------------------------

RECEIVED, DELIVERED, DEFERRED, BOUNCED, REJECTED, FAILED_LOGIN = (
    "received", "delivered", "deferred", "bounced", "rejected", "failed-login")
FLOW = (RECEIVED, DELIVERED, DEFERRED, BOUNCED, REJECTED)
_SIMPLE = {"received": RECEIVED, "delivered": DELIVERED, "deferred": DEFERRED, "bounced": BOUNCED}
_REFUSING_VERDICTS = ("reject", "tempfail")
_ANSWERED_AT_ONCE = ("pregreet",)   # checks whose refusal the server sends itself, with no `rejected` line
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_RECENT_REFUSALS = 1024
_COUNTED = "\0counted"


class MailCounters:
    """Turns maillog events into counts: mail flow, rejections by reason, failed logins.

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
    """Counts maillog's events while the daemon runs: subscribed on start, unsubscribed on stop."""

    name = "stats"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.counters = EventCounters(clock)
        self.mail = MailCounters(self.counters)
        self._clock = clock
        self.started_at = clock()

    def startService(self) -> None:
        self.started_at = self._clock()
        subscribe(self.mail)
        super().startService()

    def stopService(self) -> None:
        unsubscribe(self.mail)
        super().stopService()
