"""Rate limits in a real SMTP session: per client on port 25, per user on submission, with a moved clock."""
from __future__ import annotations

import sqlite3

import pytest
from twisted.internet import task

from appliance.filters.rates import Rates, SlidingWindow
from appliance.filters.statestore import FILENAME, StateStore
from tests.unit.checkrig import CheckRig, LogLines, settings
from tests.unit.test_smtp_server import ALICE

TOO_FAST = b"450 4.7.1 Too many messages from your address, try again later"
DAILY = b"450 4.7.1 Daily sending limit reached"
UNLIMITED = dict(client_messages_per_minute=0, client_recipients_per_minute=0, user_messages_per_day=0,
                 user_new_recipients_per_day=0)


def limits(**changes):
    return settings(**{**UNLIMITED, **changes})


def mail_from(rig: CheckRig, sender: str = "x@remote.test") -> bytes:
    out = rig.send(f"MAIL FROM:<{sender}>\r\n".encode())
    rig.send(b"RSET\r\n")
    return out[-1]


def submission(rig: CheckRig, login: str = "alice@example.test") -> CheckRig:
    """Make the rig's session what a login on submission makes it (the pipeline reads only these facts)."""
    facts = rig.proto.facts
    facts.mx, facts.trusted, facts.login = False, True, login
    for name in ("b", "c", "d", "e", "f"):
        rig.directory.users[f"{name}@example.test"] = ALICE
    rig.send(b"EHLO client.test\r\n")
    return rig


def test_the_61st_message_in_a_minute_waits(tmp_path):
    clock = task.Clock()
    rig = CheckRig([Rates(limits(client_messages_per_minute=60), clock)], clock=clock)
    rig.send(b"EHLO client.test\r\n")
    for n in range(60):
        assert mail_from(rig) == b"250 2.1.0 Sender ok", n
        clock.advance(0.5)
    with LogLines() as log:
        assert mail_from(rig) == TOO_FAST
    (line,) = log.matching("check ")
    assert "check=rates" in line and "verdict=tempfail" in line and "messages per minute" in line
    clock.advance(30)                      # a minute after the first message
    assert mail_from(rig) == b"250 2.1.0 Sender ok"


def test_the_limit_is_per_client_address_and_ipv6_slash_64():
    clock = task.Clock()
    rates = Rates(limits(client_messages_per_minute=2), clock)
    for peer, expected in (("2001:db8:1:2::1", b"250"), ("2001:db8:1:2::2", b"250"), ("2001:db8:1:2::3", b"450"),
                           ("2001:db8:1:3::1", b"250"), ("192.0.2.1", b"250"), ("192.0.2.2", b"250")):
        rig = CheckRig([rates], peer=peer, clock=clock)
        rig.send(b"EHLO client.test\r\n")
        assert mail_from(rig)[:3] == expected, peer


def test_recipients_per_minute():
    clock = task.Clock()
    rig = CheckRig([Rates(limits(client_recipients_per_minute=3), clock)], clock=clock)
    out = rig.send(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\n" + b"RCPT TO:<alice@example.test>\r\n" * 4)
    assert out[-4:-1] == [b"250 2.1.5 Recipient ok"] * 3
    assert out[-1] == b"450 4.7.1 Too many recipients from your address, try again later"
    clock.advance(60)
    assert rig.send(b"RCPT TO:<alice@example.test>\r\n") == [b"250 2.1.5 Recipient ok"]


def test_trusted_networks_have_no_client_limit():
    clock = task.Clock()
    rig = CheckRig([Rates(limits(client_messages_per_minute=1), clock)], trusted="192.0.2.0/24", clock=clock)
    rig.send(b"EHLO c\r\n")
    assert [mail_from(rig) for _ in range(3)] == [b"250 2.1.0 Sender ok"] * 3


def test_the_daily_message_cap_of_a_user():
    clock = task.Clock()
    rig = submission(CheckRig([Rates(limits(user_messages_per_day=3), clock)], clock=clock))
    assert [mail_from(rig) for _ in range(4)] == [b"250 2.1.0 Sender ok"] * 3 + [DAILY]
    other = submission(CheckRig(rig.pipeline.checks, clock=clock), login="bob@example.test")
    assert mail_from(other) == b"250 2.1.0 Sender ok"          # per user
    clock.advance(86400)
    rig = submission(CheckRig(rig.pipeline.checks, clock=clock))     # the old session timed out meanwhile
    assert mail_from(rig) == b"250 2.1.0 Sender ok"


def rcpt(rig: CheckRig, address: str) -> bytes:
    return rig.send(f"RCPT TO:<{address}>\r\n".encode())[-1]


@pytest.fixture
def store(tmp_path):
    stores = []

    def open_store():
        stores.append(StateStore(str(tmp_path / FILENAME)))
        return stores[-1]
    yield open_store
    for s in stores:
        s.close()


def test_first_time_recipients_are_counted_once_and_capped(store):
    clock = task.Clock()
    rig = submission(CheckRig([Rates(limits(user_new_recipients_per_day=2), clock, store())], clock=clock))
    rig.send(b"MAIL FROM:<alice@example.test>\r\n")
    assert rcpt(rig, "b@example.test") == b"250 2.1.5 Recipient ok"
    assert rcpt(rig, "c@example.test") == b"250 2.1.5 Recipient ok"
    assert rcpt(rig, "b@example.test") == b"250 2.1.5 Recipient ok"       # known now: not counted again
    assert rcpt(rig, "B@Example.Test") == b"250 2.1.5 Recipient ok"
    assert rcpt(rig, "d@example.test") == DAILY
    clock.advance(86400)
    rig = submission(CheckRig(rig.pipeline.checks, clock=clock))
    rig.send(b"MAIL FROM:<alice@example.test>\r\n")
    assert rcpt(rig, "d@example.test") == b"250 2.1.5 Recipient ok"


def test_known_recipients_survive_a_restart(store):
    clock = task.Clock()
    first = store()
    rig = submission(CheckRig([Rates(limits(user_new_recipients_per_day=2), clock, first)], clock=clock))
    rig.send(b"MAIL FROM:<alice@example.test>\r\n")
    rcpt(rig, "b@example.test")
    rcpt(rig, "c@example.test")
    first.close()
    again = store()
    clock.advance(86400)
    rig = submission(CheckRig([Rates(limits(user_new_recipients_per_day=2), clock, again)], clock=clock))
    rig.send(b"MAIL FROM:<alice@example.test>\r\n")
    assert rcpt(rig, "b@example.test") == b"250 2.1.5 Recipient ok"        # known: not new after the restart
    assert rcpt(rig, "c@example.test") == b"250 2.1.5 Recipient ok"
    assert rcpt(rig, "d@example.test") == b"250 2.1.5 Recipient ok"
    assert rcpt(rig, "e@example.test") == b"250 2.1.5 Recipient ok"
    assert rcpt(rig, "f@example.test") == DAILY
    again.flush()
    rows = sqlite3.connect(first.path).execute("SELECT key FROM known_recipients").fetchall()
    assert len(rows) == 4 and all(len(key) == 16 and b"example" not in key for key, in rows)   # hashed


def test_known_recipients_are_per_user(store):
    clock = task.Clock()
    rates = Rates(limits(user_new_recipients_per_day=1), clock, store())
    alice = submission(CheckRig([rates], clock=clock))
    alice.send(b"MAIL FROM:<alice@example.test>\r\n")
    assert rcpt(alice, "b@example.test") == b"250 2.1.5 Recipient ok"
    bob = submission(CheckRig([rates], clock=clock), login="bob@example.test")
    bob.send(b"MAIL FROM:<bob@example.test>\r\n")
    assert rcpt(bob, "c@example.test") == b"250 2.1.5 Recipient ok"
    assert rcpt(bob, "b@example.test") == DAILY


def test_the_window_forgets_idle_keys():
    window = SlidingWindow(limit=2, span=60)
    for n in range(1000):
        assert window.allow(f"client{n}", n * 0.01)
    window.allow("late", 200)
    assert list(window.events) == ["late"]
    assert window.allow("late", 200) and not window.allow("late", 200)
    assert window.allow("late", 260)


def test_a_restart_does_not_reset_the_daily_caps(store):
    clock = task.Clock()
    first = store()
    rates = Rates(limits(user_messages_per_day=2, user_new_recipients_per_day=1), clock, first)
    rig = submission(CheckRig([rates], clock=clock))
    rig.send(b"MAIL FROM:<alice@example.test>\r\n")
    assert rcpt(rig, "b@example.test") == b"250 2.1.5 Recipient ok"
    rig.send(b"RSET\r\n")
    assert mail_from(rig) == b"250 2.1.0 Sender ok"
    first.close()
    clock.advance(3600)
    again = store()
    rig = submission(CheckRig([Rates(limits(user_messages_per_day=2, user_new_recipients_per_day=1), clock, again)],
                              clock=clock))
    assert mail_from(rig) == DAILY
    other = submission(CheckRig(rig.pipeline.checks, clock=clock), login="bob@example.test")
    other.send(b"MAIL FROM:<bob@example.test>\r\n")
    assert rcpt(other, "c@example.test") == b"250 2.1.5 Recipient ok"      # bob's day is his own
    assert rcpt(other, "d@example.test") == DAILY
    clock.advance(86400 - 3600)
    rig = submission(CheckRig(rig.pipeline.checks, clock=clock))
    assert mail_from(rig) == b"250 2.1.0 Sender ok"
    again.flush()
    rows = sqlite3.connect(again.path).execute("SELECT user FROM user_events").fetchall()
    assert rows and all(len(user) == 16 and b"alice" not in user for user, in rows)
