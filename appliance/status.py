"""The daemon's side of `mailappliance status`: one JSON document about the running appliance.

Asked over the control socket (appliance/control.py), so it shows what the running process
knows: the ports it really bound, the queue in its memory, the certificate it serves now, and
the counters of the mail events since it started (appliance/stats.py). Everything here is
quick except the disk sizes, which walk the mail store: those are measured on a pool thread,
kept for a minute, and waited for at most a few seconds (a huge store then shows the previous
measurement rather than making the command hang).
"""
from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from OpenSSL import SSL
from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from appliance import __version__, stats
from appliance.envelope import Envelope

DISK_MAX_AGE = 60.0        # seconds a disk measurement is shown before it is redone
DISK_WAIT = 5.0            # seconds `status` waits for a measurement in progress
MAX_DEFERRED_REASONS = 10  # the queue's most common reasons; the rest are summed up as "other reasons"
REASON_LENGTH = 120

_log = Logger(namespace="status")

Measurement = tuple[float, dict[str, int | None]]    # (when, size in bytes per name; None: missing)


# --- disk ------------------------------------------------------------------------------------------

def disk_used(path: str) -> int | None:
    """Bytes of disk used by `path` and everything below it (as `du`), None when it does not exist.

    Symbolic links are counted, never followed; an entry that vanishes meanwhile is skipped
    (mail moves from new/ to cur/ all the time). Blocking: runs on a pool thread.
    """
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return None
    total = top.st_blocks * 512
    folders = [path] if stat.S_ISDIR(top.st_mode) else []
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        folders.append(entry.path)
        except OSError:
            continue
    return total


def mailbox_root(template: str) -> str:
    """The folder holding every mailbox: the storage path template up to its first {placeholder}."""
    kept = []
    for part in template.split(os.sep):
        if "{" in part:
            break
        kept.append(part)
    return os.sep.join(kept) or os.sep


def disk_paths(cfg: Any) -> dict[str, str]:
    return {"mailboxes": mailbox_root(cfg.storage.path), "queue": os.path.join(cfg.appliance.state_dir, "queue")}


def _measure(paths: Mapping[str, str]) -> dict[str, int | None]:
    return {name: disk_used(path) for name, path in paths.items()}


class DiskUsage:
    """Sizes of the mail store and the queue: measured on `pool`, cached `max_age` seconds."""

    def __init__(self, paths: Mapping[str, str], reactor: Any, pool: Any,
                 max_age: float = DISK_MAX_AGE, wait: float = DISK_WAIT,
                 in_pool: Callable[..., Deferred] | None = None) -> None:
        self.paths = dict(paths)
        self._reactor = reactor
        self._in_pool = in_pool or (lambda f, *args: deferToThreadPool(reactor, pool, f, *args))
        self._max_age, self._wait = max_age, wait
        self._last: Measurement | None = None
        self._running = False
        self._waiting: list[tuple[Deferred, Any]] = []

    def sizes(self) -> Deferred:
        """Deferred[Measurement | None]: a fresh one, or the previous one (None: none yet) when a
        new measurement takes longer than `wait` seconds."""
        if self._last is not None and self._reactor.seconds() - self._last[0] < self._max_age:
            return succeed(self._last)
        answer: Deferred = Deferred()
        timer = self._reactor.callLater(self._wait, self._give, answer)
        self._waiting.append((answer, timer))
        if not self._running:
            self._running = True
            started = self._reactor.seconds()
            d = self._in_pool(_measure, self.paths)
            d.addCallback(lambda sizes: setattr(self, "_last", (started, sizes)))
            d.addErrback(lambda failure: _log.failure("measuring disk use failed", failure))
            d.addBoth(self._finished)
        return answer

    def _give(self, answer: Deferred) -> None:
        if not answer.called:
            answer.callback(self._last)

    def _finished(self, _: object) -> None:
        self._running = False
        waiting, self._waiting = self._waiting, []
        for answer, timer in waiting:
            if timer.active():
                timer.cancel()
            self._give(answer)


# --- the parts of the report -----------------------------------------------------------------------

def listeners(services: Iterable[Any], endpoints: Mapping[str, str]) -> list[dict[str, str]]:
    """Each listener (a child service named listen-NAME) with the address it bound."""
    found = []
    for service in services:
        name = getattr(service, "name", None) or ""
        if name.startswith("listen-"):
            short = name[len("listen-"):]
            found.append({"name": short, "endpoint": endpoints.get(short, ""), "address": bound_address(service)})
    return found


def bound_address(listener: Any) -> str:
    """`127.0.0.1:2525` of a running StreamServerEndpointService; "" before it has bound.

    Twisted keeps the listening port only in the service's `_waitingForPort` Deferred: a
    callback on a fired Deferred runs at once and passes the port on unchanged.
    """
    waiting = getattr(listener, "_waitingForPort", None)
    ports: list[Any] = []
    if isinstance(waiting, Deferred) and waiting.called:
        waiting.addCallback(lambda port: (ports.append(port), port)[1])
    if not ports or not hasattr(ports[0], "getHost"):
        return ""
    host = ports[0].getHost()
    address, port = getattr(host, "host", ""), getattr(host, "port", None)
    if port is None:
        return str(host)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def queue_summary(envelopes: Iterable[Envelope], now: float) -> dict[str, Any]:
    """Messages, held ones, the oldest's age, and why recipients are waiting (most common first)."""
    envelopes = list(envelopes)
    reasons: Counter[str] = Counter()
    deferred = 0
    for envelope in envelopes:
        waiting = [r for r in envelope.pending() if r.last_error]
        deferred += bool(waiting) and not envelope.held
        for rcpt in waiting:
            reasons[" ".join(rcpt.last_error.split())[:REASON_LENGTH]] += 1
    common = reasons.most_common(MAX_DEFERRED_REASONS)
    rest = sum(reasons.values()) - sum(n for _, n in common)
    return {
        "messages": len(envelopes),
        "held": sum(e.held for e in envelopes),
        "deferred": deferred,
        "recipients": sum(len(e.pending()) for e in envelopes),
        "oldest": max((now - e.received_at for e in envelopes), default=None),
        "reasons": [{"reason": reason, "recipients": n} for reason, n in common]
                   + ([{"reason": "other reasons", "recipients": rest}] if rest else []),
    }


def certificate(tls: Any, path: str, now: float) -> dict[str, Any] | None:
    """The certificate served right now (after any reload): its names, end of validity, days left."""
    if tls is None or not getattr(tls, "available", False):
        return None
    loaded = SSL.Connection(tls.getContext(), None).get_certificate()
    if loaded is None:
        return None
    cert = loaded.to_cryptography()
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    not_after = cert.not_valid_after_utc.timestamp()
    return {"path": path, "names": [str(n) for n in names], "not_after": cert.not_valid_after_utc.isoformat(),
            "days": math.floor((not_after - now) / 86400)}


WINDOWS = {"last_hour": stats.HOUR, "last_day": stats.DAY}


def mail_flow(counters: stats.EventCounters) -> dict[str, Any]:
    """Counts of the last hour and day: the flow, rejections by reason, failed logins."""
    flow, rejected, logins = {}, {}, {}
    for window, seconds in WINDOWS.items():
        totals = counters.totals(seconds)
        flow[window] = {kind: sum(n for (k, _), n in totals.items() if k == kind) for kind in stats.FLOW}
        rejected[window] = {label: n for (k, label), n in totals.items() if k == stats.REJECTED and n}
        logins[window] = sum(n for (k, _), n in totals.items() if k == stats.FAILED_LOGIN)
    return {"mail": flow, "rejected": rejected, "failed_logins": logins}


def disk_report(paths: Mapping[str, str], measured: Measurement | None, now: float) -> dict[str, Any]:
    sizes = measured[1] if measured else {}
    return {"age": None if measured is None else max(0.0, now - measured[0]),
            "folders": [{"name": name, "path": path, "bytes": sizes.get(name)} for name, path in paths.items()]}


def quota_report(quotas: Any) -> dict[str, Any]:
    """The default limit and the mailboxes at 90% of theirs or more, as last measured.

    Measured at each delivery and IMAP quota check, never by walking every mailbox here: with
    LDAP the users cannot even be listed. A mailbox nobody wrote to since the start is not known.
    """
    return {"default": quotas.default,
            "nearly_full": [{"user": user, "used": usage.used, "limit": usage.limit}
                            for user, usage in quotas.nearly_full()]}


class StatusReport:
    """Gathers the status document; `collect` is what the control socket's `status` runs.

    `top` is the ApplianceService: its children are the listeners, and its `config` and `tls`
    are read at each report, so a reload (new certificate, new settings) shows at once.
    """

    def __init__(self, top: Any, queue: Any, counting: stats.CountingService, disk: DiskUsage,
                 clock: Callable[[], float], quotas: Any = None) -> None:
        self._top, self._queue, self._counting, self._disk, self._clock = top, queue, counting, disk, clock
        self._quotas = quotas             # store/quota.py Quotas, or None

    def collect(self) -> Deferred:
        """Deferred[dict]: everything but the disk now, the disk when measured (or DISK_WAIT passed)."""
        now = self._clock()
        cfg = self._top.config
        report: dict[str, Any] = {
            "hostname": cfg.appliance.hostname, "version": __version__, "pid": os.getpid(),
            "now": now, "uptime": max(0.0, now - self._counting.started_at),
            "services": listeners(self._top, dataclasses.asdict(cfg.listen)),
            "queue": queue_summary(self._queue.envelopes(), now),
            **mail_flow(self._counting.counters),
            "certificate": certificate(getattr(self._top, "tls", None), cfg.tls.certificate, now),
        }
        if self._quotas is not None:
            report["quota"] = quota_report(self._quotas)
        d = self._disk.sizes()
        d.addCallback(lambda measured: {**report, "disk": disk_report(self._disk.paths, measured, self._clock())})
        return d
