"""The log file's writer: every line kept, written with one write per reactor turn.

twistd's file observer formats each event through twisted.logger's generic path and writes it
to an unbuffered file with its own write() (and flush()): three system calls' worth of work per
SMTP message, 17% of the reactor in the ingest profile (issue 14). This writer keeps the lines
a reactor turn produces in memory and writes them with one write() when the turn ends (a
`callLater(0)`, which runs before the reactor next waits for input), so the file still gets one
complete line per event, in the order the events happened.

What a crash can lose: a `kill -9` (or power loss) between an event and the end of its turn
loses the lines of that turn only, which is a few milliseconds of them; every 250 the SMTP
server gives still rests on the queue's fsync, never on the log. Error and critical events,
and any line written from another thread or while the reactor is not running (start-up,
shut-down), are written at once; `flush()` also runs after the reactor's shutdown and at
interpreter exit, so a clean stop or a fatal start-up error loses nothing.
"""
from __future__ import annotations

import atexit
import threading
from typing import IO, Any, Callable

from twisted.logger import FileLogObserver, LogLevel, formatTime
from zope.interface import implementer
from twisted.logger import ILogObserver

_URGENT = (LogLevel.warn, LogLevel.error, LogLevel.critical)


@implementer(ILogObserver)
class TurnBufferedLog:
    """An ILogObserver (and a line sink for appliance.maillog) writing to `out` once per turn.

    `out` is the file twistd opened (a LogFile, whose write() also rotates it, or standard
    output); `format_event` is the formatter twistd's file observer used, so Twisted's own
    events look exactly as before.
    """

    def __init__(self, out: IO[Any], format_event: Callable[[dict], str | None], reactor: Any,
                 encoding: str | None = "utf-8") -> None:
        self._out = out
        self._format = format_event
        self._reactor = reactor
        self._encoding = encoding
        self._lines: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()
        self._owner = threading.get_ident()   # the thread that runs the reactor

    @classmethod
    def replacing(cls, observer: FileLogObserver, reactor: Any) -> "TurnBufferedLog":
        """The same output and line format as twistd's file observer `observer`."""
        return cls(observer._outFile, observer.formatEvent, reactor, observer._encoding)

    def __call__(self, event: dict) -> None:
        text = self._format(event)
        if text:
            self.write(text, urgent=event.get("log_level") in _URGENT or "log_failure" in event)

    def write(self, line: str, urgent: bool = False) -> None:
        """Keep one complete line (ending in a newline) for the end of this turn."""
        with self._lock:
            self._lines.append(line)
            if urgent or threading.get_ident() != self._owner or not self._reactor.running:
                later = False
            elif self._scheduled:
                return
            else:
                self._scheduled = later = True
        if later:
            self._reactor.callLater(0, self._end_of_turn)
        else:
            self.flush()

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write every kept line now, with one write()."""
        with self._lock:
            lines, self._lines = self._lines, []
            if not lines:
                return
            text = "".join(lines)
            try:
                self._out.write(text if self._encoding is None else text.encode(self._encoding))
                self._out.flush()
            except (OSError, ValueError):
                pass      # a full disk or a closed file: nothing better to do with a log line

    def flush_at_exit(self) -> None:
        """Flush after the reactor's shutdown and at interpreter exit (fatal paths included)."""
        atexit.register(self.flush)
        try:
            self._reactor.addSystemEventTrigger("after", "shutdown", self.flush)
        except Exception:       # a reactor stand-in without system events
            pass


_stamp_second = -1
_stamp = ""


def timestamp(now: float) -> str:
    """twistd's time prefix (`2026-12-05T11:16:06+0000`), formatted once per second."""
    global _stamp_second, _stamp
    second = int(now)
    if second != _stamp_second:
        _stamp, _stamp_second = formatTime(second), second
    return _stamp
