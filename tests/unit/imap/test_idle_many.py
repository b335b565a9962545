"""IDLE at scale: many sessions idling on one folder, and many folders polled together."""
from __future__ import annotations

from appliance.inline import InlinePool
from appliance.store.maildir import write
from tests.unit.imap.harness import Session, TLSTransport, messages, untagged


class CountingPool(InlinePool):
    """Runs jobs at once, as the harness's pool does, and counts them."""

    def __init__(self) -> None:
        self.jobs = 0

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs += 1
        return super().callInThreadWithCallback(on_result, f, *args, **kwargs)


def more_sessions(first: Session, count: int) -> list[Session]:
    """`count` further connections to the same server (one factory, one watcher) as `first`."""
    sessions = []
    for _ in range(count):
        session = object.__new__(Session)
        session.reactor, session.maildir = first.reactor, first.maildir
        session.protocol = first.protocol.factory.buildProtocol(None)
        session.transport = TLSTransport("192.0.2.1")
        session.protocol.makeConnection(session.transport)
        sessions.append(session)
    return sessions


def test_every_idler_hears_of_new_mail_and_one_of_them_has_it_recent(selected, reactor):
    sessions = [selected] + more_sessions(selected, 4)
    for session in sessions[1:]:
        session.login().select()
    for session in sessions:
        assert session.cmd(b"i IDLE") == b"+ idling\r\n"
        session.transport.clear()
    selected.deliver(b"Subject: new\r\n\r\nx\r\n")
    reactor.advance(1.0)
    for session in sessions:
        assert b"* 3 EXISTS" in untagged(session.transport.value()), session.transport.value()
    new_uid = max(selected.protocol.view.known.uids)
    assert sum(new_uid in session.protocol.view.recent for session in sessions) == 1


def test_idlers_of_one_folder_cost_one_poll_and_one_claim_not_one_each(selected, reactor):
    pool = selected.protocol.factory.pool = selected.protocol.factory.watcher._pool = CountingPool()
    sessions = [selected] + more_sessions(selected, 9)
    for session in sessions[1:]:
        session.login().select()
    for session in sessions:
        session.cmd(b"i IDLE")
    pool.jobs = 0
    selected.deliver(b"Subject: new\r\n\r\nx\r\n")
    reactor.advance(1.0)
    assert all(b"* 3 EXISTS" in session.transport.value() for session in sessions)
    assert pool.jobs <= 2, f"{pool.jobs} pool jobs for one new message and ten idlers"


def test_a_folder_that_cannot_be_polled_does_not_keep_news_from_the_others(selected, reactor):
    other = more_sessions(selected, 1)[0]
    other.login().ok(b"c CREATE Archive")
    other.select(b"Archive")
    other.cmd(b"i IDLE")
    selected.cmd(b"i IDLE")
    selected.transport.clear()

    def unreadable() -> bool:
        raise OSError("Input/output error")
    other.protocol.folder.changed = unreadable
    write(str(selected.maildir), messages(1)[0])
    reactor.advance(1.0)
    assert b"* 3 EXISTS" in selected.transport.value()
