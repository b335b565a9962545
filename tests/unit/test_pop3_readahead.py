"""POP3 read-ahead: RETR answers from messages read in batches, exactly as if each were read alone.

Real Maildir and mbox files, the real POP3 protocol over StringTransport (tests/unit/test_pop3.py's
World), and a pool that runs jobs only when the test says so: what the client sees is checked
octet for octet, and how many trips to the pool a whole-maildrop download costs.
"""
from __future__ import annotations

import os

import pytest

from appliance.inline import InlinePool, run_job
from appliance.interfaces import IMaildrop
from appliance.mime import crlf
from appliance.pop3 import multiline
from appliance.store import maildir, mbox
from appliance.store.pop3view import AHEAD_MESSAGES, FolderSource, Maildrop
from tests.unit.test_pop3 import ALICE, World
from tests.unit.test_store_behaviour import Maildir, Mbox, restart

# Lines that must be byte-stuffed, a message without a final newline, CRLF and LF stored forms,
# a body line that is a lone dot, and sizes from tiny to bigger than one batch's byte budget.
BODIES = [b"Subject: m%d\n\n.starts with a dot\n..two\n.\nend" % n if n % 3 == 0 else
          b"Subject: m%d\r\n\r\n%b\r\n" % (n, b"x" * (n * 997 % 5000)) if n % 3 == 1 else
          b"Subject: m%d\n\nplain\n" % n for n in range(70)]
BODIES[40] = b"Subject: big\n\n" + b"0123456789abcdef\n" * 80_000       # over a megabyte: read on its own


def bodies(fmt) -> list[bytes]:
    """The messages as `fmt` can hold them: an mbox entry ends in a newline (then the blank line)."""
    return BODIES if fmt is Maildir else [b if b.endswith(b"\n") else b + b"\n" for b in BODIES]


class CountingPool(InlinePool):
    """Runs each job at once; counts the trips."""

    def __init__(self) -> None:
        self.trips = 0

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.trips += 1
        super().callInThreadWithCallback(on_result, f, *args, **kwargs)


class HeldPool:
    """Keeps every job until `run()`: the test decides when the pool answers."""

    def __init__(self) -> None:
        self.jobs: list = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run(self) -> int:
        jobs, self.jobs = self.jobs, []
        for on_result, f, args, kwargs in jobs:
            run_job(on_result, f, *args, **kwargs)
        return len(jobs)


@pytest.fixture(params=[Maildir, Mbox], ids=["maildir", "mbox"])
def fmt(request):
    restart()
    yield request.param
    restart()


def world_over(fmt, path: str, pool) -> World:
    """The POP3 test world, its realm serving the real folder at `path` through `pool`."""
    world = World()
    folder = (maildir.MaildirAccount(path) if fmt is Maildir else mbox.MboxAccount(path)).folder("INBOX")
    source = FolderSource(folder)
    realm = world.realm

    def request_avatar(user, mind, *interfaces):
        mind.user = user
        return IMaildrop, Maildrop(source, path, source.scan(path), realm.reactor, pool), lambda: None

    realm.requestAvatar = request_avatar
    return world


def logged_in(world):
    session = world.session()
    assert session.login(ALICE).startswith(b"+OK")
    return session


def test_every_retr_equals_the_stored_message_byte_stuffed(fmt, tmp_path):
    path = str(tmp_path / "alice")
    fmt.stored_messages(path, bodies(fmt))
    pool = CountingPool()
    session = logged_in(world_over(fmt, path, pool))
    pool.trips = 0
    for n, stored in enumerate(bodies(fmt), 1):
        wire = crlf(stored)
        assert session.command(f"RETR {n}") == multiline(b"%d octets" % len(wire), wire), n
        assert session.command(f"LIST {n}") == b"+OK %d %d\r\n" % (n, len(wire))
    # One trip per batch, not one per message (the big message makes one more).
    assert pool.trips <= len(BODIES) // AHEAD_MESSAGES + 4


def test_top_is_served_from_the_read_ahead_too(fmt, tmp_path):
    path = str(tmp_path / "alice")
    fmt.stored_messages(path, bodies(fmt)[:5])
    session = logged_in(world_over(fmt, path, InlinePool()))
    assert session.command("TOP 1 1") == b"+OK Top of message follows\r\nSubject: m0\r\n\r\n..starts with a dot\r\n.\r\n"
    assert session.command("RETR 1").startswith(b"+OK")
    assert session.command("TOP 3 0") == b"+OK Top of message follows\r\nSubject: m2\r\n\r\n.\r\n"


def test_a_file_removed_mid_batch_fails_that_message_only(tmp_path):
    path = str(tmp_path / "alice")
    Maildir.stored_messages(path, BODIES[:10])
    session = logged_in(world_over(Maildir, path, InlinePool()))
    gone = sorted(os.listdir(os.path.join(path, "new")), key=maildir.arrival_order)[4]    # message 5 (arrival order)
    os.unlink(os.path.join(path, "new", gone))
    replies = [session.command(f"RETR {n}") for n in range(1, 11)]
    assert [r.split(b" ")[0] for r in replies] == [b"+OK"] * 4 + [b"-ERR"] + [b"+OK"] * 5
    assert replies[5] == multiline(b"%d octets" % len(crlf(BODIES[5])), crlf(BODIES[5]))
    assert session.command("STAT").startswith(b"+OK 10 ")       # the snapshot still counts it (RFC 1939)


def test_commands_wait_for_the_batch_and_the_next_batch_is_read_while_the_client_reads(tmp_path):
    path = str(tmp_path / "alice")
    Maildir.stored_messages(path, BODIES[:AHEAD_MESSAGES * 2])
    pool = HeldPool()
    world = world_over(Maildir, path, pool)
    session = world.session()
    session.start_tls()
    session.command(f"USER {ALICE}")
    assert session.command("PASS alice-pw").startswith(b"+OK")
    # RETR 1 and 2 pipelined: nothing is answered before the pool has read the first batch.
    assert session.send(b"RETR 1\r\nRETR 2\r\n") == b""
    assert pool.run() == 1
    answered = session.take()
    assert answered.count(b"+OK") == 2 and b"Subject: m1" in answered
    # The client keeps reading: the next trip is already out before the batch is used up.
    for n in range(3, AHEAD_MESSAGES // 2 + 3):
        assert session.command(f"RETR {n}").startswith(b"+OK"), n
    assert len(pool.jobs) == 1
    pool.run()
    for n in range(AHEAD_MESSAGES // 2 + 3, AHEAD_MESSAGES * 2 + 1):
        assert session.command(f"RETR {n}").startswith(b"+OK"), n
        pool.run()


def test_deleted_and_skipped_messages_are_not_served_from_the_read_ahead(tmp_path):
    path = str(tmp_path / "alice")
    Maildir.stored_messages(path, BODIES[:6])
    session = logged_in(world_over(Maildir, path, InlinePool()))
    assert session.command("RETR 1").startswith(b"+OK")
    assert session.command("DELE 2") == b"+OK Message 2 deleted\r\n"
    assert session.command("RETR 2") == b"-ERR No such message\r\n"
    assert session.command("RETR 5") == multiline(b"%d octets" % len(crlf(BODIES[4])), crlf(BODIES[4]))  # skip
    assert session.command("RETR 3").startswith(b"+OK")             # and back: read again
    assert session.command("RSET").startswith(b"+OK")
    wire = crlf(BODIES[1])
    assert session.command("RETR 2") == multiline(b"%d octets" % len(wire), wire)


def test_pipelined_commands_are_answered_in_order_whether_read_ahead_or_waiting_for_the_pool(fmt, tmp_path):
    """Answers given at once (read ahead) never overtake one still waiting for its batch (PIPELINING)."""
    path = str(tmp_path / "alice")
    stored = bodies(fmt)[:AHEAD_MESSAGES + 8]
    fmt.stored_messages(path, stored)
    pool = HeldPool()
    session = logged_in(world_over(fmt, path, pool))
    numbers = list(range(1, len(stored) + 1))
    commands = b"".join(b"RETR %d\r\nNOOP\r\n" % n for n in numbers) + b"TOP 1 0\r\nSTAT\r\n"
    out = session.send(commands)
    for _ in range(20):
        if not pool.run():
            break
        out += session.take()
    expected = b"".join(multiline(b"%d octets" % len(crlf(m)), crlf(m)) + b"+OK\r\n" for m in stored)
    expected += multiline(b"Top of message follows", b"Subject: m0\r\n\r\n")
    assert out == expected + b"+OK %d %d\r\n" % (len(stored), sum(len(crlf(m)) for m in stored))
