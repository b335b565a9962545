"""IDLE (RFC 2177): the FolderWatcher's clock-driven polls push new mail and flag changes."""
from __future__ import annotations


def test_idle_reports_new_mail_within_a_poll(selected, reactor):
    assert selected.cmd(b"i IDLE") == b"+ idling\r\n"
    selected.transport.clear()
    selected.deliver(b"Subject: new\r\n\r\nx\r\n")
    reactor.advance(1.0)
    assert selected.transport.value() == b"* 3 EXISTS\r\n* 3 RECENT\r\n"
    assert selected.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"
    assert selected.alive


def test_idle_reports_flags_changed_elsewhere(selected, other, reactor):
    selected.cmd(b"i IDLE")
    selected.transport.clear()
    other.ok(b"st STORE 1 +FLAGS.SILENT (\\Seen)")
    reactor.advance(1.0)
    assert selected.transport.value() == b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n"


def test_nothing_is_sent_when_nothing_changes(selected, reactor):
    selected.cmd(b"i IDLE")
    selected.transport.clear()
    reactor.advance(5.0)
    assert selected.transport.value() == b""


def test_done_is_case_insensitive_and_anything_else_is_bad(selected):
    selected.cmd(b"i IDLE")
    assert selected.send(b"done\r\n") == b"i OK IDLE terminated\r\n"
    selected.cmd(b"i2 IDLE")
    assert selected.send(b"i3 NOOP\r\n") == b"i2 BAD Expected DONE\r\n"
    assert selected.alive


def test_idle_in_the_authenticated_state_watches_nothing(authed, reactor):
    assert authed.cmd(b"i IDLE") == b"+ idling\r\n"
    assert authed.protocol.factory.watcher._watchers == {}
    assert authed.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"


def test_leaving_stops_the_watch(selected, reactor):
    watcher = selected.protocol.factory.watcher
    selected.cmd(b"i IDLE")
    assert watcher._watchers
    selected.send(b"DONE\r\n")
    assert watcher._watchers == {}
    selected.cmd(b"i2 IDLE")
    selected.transport.loseConnection()
    selected.protocol.connectionLost(None)
    assert watcher._watchers == {}


def test_idle_reports_expunge_and_append_by_another_session(selected, other, reactor):
    selected.cmd(b"i IDLE")
    selected.transport.clear()
    other.ok(b"st STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok(b"e EXPUNGE")
    other.send(b"a APPEND INBOX {14+}\r\nSubject: d\r\n\r\n\r\n")
    reactor.advance(1.0)
    assert selected.transport.value().startswith(b"* 2 EXPUNGE\r\n* 2 EXISTS\r\n* ")      # then RECENT
