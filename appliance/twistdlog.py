"""Twisted's own chatter at debug level, below what twistd writes by default.

Twisted logs, at info level, every factory it starts and stops, every port it opens and closes,
and each time it re-reads /etc/resolv.conf: some 40 lines at start-up and stop that say nothing
the `started` line does not. Our own factories are quiet (`noisy = False`); what remains comes
from Twisted itself (ports, endpoints' wrapping factories, the DNS client), so it is caught here:
each such event is re-labelled debug, and events below the chosen level are dropped.

twistd builds its log observer (--logfile, --syslog, standard output) only after makeService
has run, so `install()`, called from makeService, wraps whatever observers twistd then starts
logging to. MAILAPPLIANCE_LOG_LEVEL=debug in the environment keeps everything.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate, PredicateResult,
                            formatEvent, globalLogBeginner)

ENVIRONMENT = "MAILAPPLIANCE_LOG_LEVEL"
_CHATTER = re.compile(
    r"^(?:Starting|Stopping) (?:factory|protocol) "     # Factory.doStart/doStop, DatagramProtocol
    r"| starting on "                                   # "SMTPFactory (LimitedFactory) starting on 25"
    r"|^\((?:TCP |UDP |UNIX )?Port .* Closed\)$"        # a listening port closed at stop
    r"|resolv\.conf changed, reparsing$"                # twisted.names.client re-reading /etc/resolv.conf
    r"|^Resolver (?:added|removed) .* server list$"
)
_installed = False


def is_chatter(event: dict[str, Any]) -> bool:
    """A routine Twisted event (factories, ports, resolv.conf); never one of ours."""
    if event.get("log_namespace") == "mail" or event.get("log_failure") is not None:
        return False
    text = formatEvent(event)
    return bool(_CHATTER.search(text))


def _demote(event: dict[str, Any]) -> PredicateResult:
    if is_chatter(event):
        event["log_level"] = LogLevel.debug
    return PredicateResult.maybe


def quiet(observer: ILogObserver, level: LogLevel = LogLevel.info) -> ILogObserver:
    """`observer` without Twisted's chatter, nor anything else below `level`."""
    return FilteringLogObserver(observer, [_demote, LogLevelFilterPredicate(defaultLogLevel=level)])


def level_from_environment(environ: dict[str, str] | None = None) -> LogLevel:
    """info unless MAILAPPLIANCE_LOG_LEVEL names another level (debug shows Twisted's chatter)."""
    name = (environ if environ is not None else os.environ).get(ENVIRONMENT, "").strip().lower()
    try:
        return LogLevel.levelWithName(name) if name else LogLevel.info
    except Exception:     # InvalidLogLevelError: an unknown word keeps the default
        return LogLevel.info


def buffered(observers: list[ILogObserver], level: LogLevel) -> list[ILogObserver]:
    """twistd's file observers, each replaced by one writing once per reactor turn (appliance.logwriter).

    When that file is the only place the log goes and info lines are kept, appliance.maillog
    writes its lines to it directly (the cheap path of the SMTP ingest); otherwise they keep
    going through twisted.logger, to every observer.
    """
    from twisted.internet import reactor
    from appliance import logwriter, maillog

    result: list[ILogObserver] = []
    for observer in observers:
        if isinstance(observer, FileLogObserver):
            writer = logwriter.TurnBufferedLog.replacing(observer, reactor)
            writer.flush_at_exit()
            observer = writer
        result.append(observer)
    only = result[0] if len(result) == 1 else None
    if isinstance(only, logwriter.TurnBufferedLog) and level <= LogLevel.info:
        maillog.write_to(only)
    return result


def install(level: LogLevel | None = None) -> None:
    """Filter the observers twistd is about to start logging to (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    chosen = level if level is not None else level_from_environment()
    begin = globalLogBeginner.beginLoggingTo

    def begin_quietly(observers: Iterable[ILogObserver], *args: Any, **kwargs: Any) -> None:
        return begin([quiet(observer, chosen) for observer in buffered(list(observers), chosen)], *args, **kwargs)

    globalLogBeginner.beginLoggingTo = begin_quietly  # type: ignore[method-assign]
