"""The log file's writer (appliance/logwriter.py) and maillog's direct path to it.

Every line comes out whole and in order, with one write per reactor turn; errors, lines from
other threads and lines while the reactor is not running go out at once; shutdown and exit
flush what is kept; and a mail line reads exactly as twistd's own file observer wrote it.
"""
from __future__ import annotations

import io
import threading

from twisted.internet.task import Clock
from twisted.logger import FileLogObserver, LogLevel, formatEventAsClassicLogText, formatTime, textFileLogObserver

from appliance import logwriter, maillog, twistdlog
from appliance.logwriter import TurnBufferedLog


class CountingFile(io.BytesIO):
    """A binary file (as twistd's LogFile is) that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        return super().write(data)


class Reactor(Clock):
    """A clock that is running and has system event triggers, like the real reactor."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list = []

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f))


def writer(reactor=None) -> tuple[TurnBufferedLog, CountingFile, Reactor]:
    reactor = reactor or Reactor()
    out = CountingFile()
    return TurnBufferedLog(out, lambda event: event["text"], reactor, "utf-8"), out, reactor


def test_lines_of_one_turn_are_written_whole_and_in_order_with_one_write_when_it_ends():
    log, out, reactor = writer()
    for n in range(50):
        log.write(f"line {n} {'x' * n}\n")
    assert out.writes == 0 and out.getvalue() == b""          # still in the turn
    reactor.advance(0)                                          # the turn ends
    assert out.writes == 1
    assert out.getvalue().decode().splitlines() == [f"line {n} {'x' * n}" for n in range(50)]
    log.write("next turn\n")
    reactor.advance(0)
    assert out.writes == 2 and out.getvalue().endswith(b"line 49 " + b"x" * 49 + b"\nnext turn\n")


def test_an_error_is_written_at_once_after_the_lines_before_it():
    log, out, reactor = writer()
    log.write("connect\n")
    log({"text": "Unhandled error\n", "log_level": LogLevel.error})
    assert out.getvalue() == b"connect\nUnhandled error\n"
    reactor.advance(0)
    assert out.writes == 1                                     # nothing left for the turn's end


def test_lines_are_written_at_once_while_the_reactor_is_not_running_or_from_another_thread():
    log, out, reactor = writer()
    reactor.running = False
    log.write("starting\n")
    assert out.getvalue() == b"starting\n"
    reactor.running = True
    thread = threading.Thread(target=log.write, args=("from a pool thread\n",))
    thread.start()
    thread.join()
    assert out.getvalue() == b"starting\nfrom a pool thread\n"


def test_shutdown_and_exit_flush_what_is_kept(monkeypatch):
    registered = []
    monkeypatch.setattr(logwriter.atexit, "register", registered.append)
    log, out, reactor = writer()
    log.flush_at_exit()
    log.write("disconnect service=smtp\n")
    [(phase, event, flush)] = reactor.triggers
    assert (phase, event) == ("after", "shutdown")
    flush()
    assert out.getvalue() == b"disconnect service=smtp\n"
    log.write("Main loop terminated.\n")
    registered[0]()                                            # the interpreter exits
    assert out.getvalue().endswith(b"Main loop terminated.\n")


def test_a_mail_line_reads_as_twistds_file_observer_wrote_it(monkeypatch):
    monkeypatch.setattr(maillog.time, "time", lambda: 1_765_000_000.25)
    log, out, reactor = writer()
    monkeypatch.setattr(maillog, "_writer", log)
    maillog.received("Q1", "smtp", "192.0.2.7", "a@x.test", 4200, ["b@example.test"], "ESMTP",
                     session="ab{c}", given=["B@example.test"])
    reactor.advance(0)
    monkeypatch.setattr(maillog, "_writer", None)
    expected = formatEventAsClassicLogText(
        {"log_format": "received id=Q1 service=smtp peer=192.0.2.7 sender=<a@x.test> size=4200 rcpts=b@example.test"
                       " orig_rcpts=B@example.test proto=ESMTP session=ab{{c}}",
         "log_time": 1_765_000_000.25, "log_namespace": "mail", "log_level": LogLevel.info})
    assert out.getvalue().decode() == expected


def test_the_time_prefix_is_twisteds_for_every_second():
    for when in (0.0, 1_765_000_000.0, 1_765_000_000.999, 1_765_000_001.5):
        assert logwriter.timestamp(when) == formatTime(when)


def test_twistd_file_observer_is_replaced_and_maillog_writes_to_it_at_info_only(monkeypatch):
    monkeypatch.setattr(maillog, "_writer", None)
    monkeypatch.setattr(TurnBufferedLog, "flush_at_exit", lambda self: None)
    out = io.StringIO()
    [observer] = twistdlog.buffered([textFileLogObserver(out)], LogLevel.info)
    assert isinstance(observer, TurnBufferedLog) and maillog._writer is observer
    monkeypatch.setattr(maillog, "_writer", None)
    twistdlog.buffered([textFileLogObserver(io.StringIO())], LogLevel.warn)
    assert maillog._writer is None                             # info lines must not bypass the level filter
    other = lambda event: None                                 # noqa: E731  (syslog, or anything else)
    assert twistdlog.buffered([FileLogObserver(io.StringIO(), str), other], LogLevel.info)[1] is other
    assert maillog._writer is None
