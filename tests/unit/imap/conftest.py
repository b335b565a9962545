"""Fixtures for the IMAP protocol tests: a clock-driven reactor and sessions in each RFC 3501 state,
and the server on a real socket (live.py) over each mailbox format."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.imap.harness import Session, SyncReactor, messages, other_session
from tests.unit.imap.live import FORMATS, LiveServer


@pytest.fixture
def reactor():
    return SyncReactor()


@pytest.fixture
def fresh(reactor, tmp_path) -> Session:
    """Not authenticated, over implicit TLS (so LOGIN is allowed)."""
    return Session(reactor, tmp_path, implicit=True)


@pytest.fixture
def authed(fresh) -> Session:
    """Authenticated, with two messages in the INBOX."""
    for message in messages(2):
        fresh.deliver(message)
    return fresh.login()


@pytest.fixture
def selected(authed) -> Session:
    """INBOX selected read-write: two messages, both \\Recent."""
    authed.select()
    return authed


@pytest.fixture
def other(selected, reactor, tmp_path) -> Session:
    """Another session of the same user, opened after `selected`, INBOX selected (so no \\Recent for it)."""
    return other_session(reactor, tmp_path)


@pytest.fixture(params=sorted(FORMATS))
def server(request, tmp_path) -> Iterator[LiveServer]:
    """The server on a loopback port over an empty Maildir, then mbox; stopped, with its clients, after the test."""
    live = LiveServer(tmp_path, request.param)
    yield live
    live.stop()
