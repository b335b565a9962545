"""Fixtures for the IMAP protocol tests: a clock-driven reactor and sessions in each RFC 3501 state."""
from __future__ import annotations

import pytest

from tests.unit.imap.harness import Session, SyncReactor, messages


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
