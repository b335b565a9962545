"""Greylisting in a real SMTP session (CheckRig) with a moved clock and a real sqlite state file."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from twisted.internet import task

from appliance.filters.base import Check
from appliance.filters.greylist import Greylist
from appliance.filters.statestore import FILENAME, StateStore
from tests.unit.checkrig import CheckRig, LogLines, codes, settings

GREYLISTED = b"451 4.7.1 Greylisted, try again in 300 seconds"


class Doubt(Check):
    """Says the client is doubtful (what fcrdns or dnsbl would), or allow-listed."""

    name = "doubt"

    def __init__(self, doubt: str = "no reverse DNS", allowlisted: bool = False) -> None:
        self.doubt, self.allowlisted = doubt, allowlisted

    def connect(self, facts):
        if self.doubt:
            facts.doubts.append(self.doubt)
        if self.allowlisted:
            facts.notes["allowlisted"] = True


class World:
    """A state folder and a clock shared by the 'restarts' of one test."""

    def __init__(self, folder: str, **changes) -> None:
        self.folder, self.clock = folder, task.Clock()
        self.settings = settings(greylist="all", **changes)
        self.stores: list[StateStore] = []
        self.greylist = self.start()

    def start(self) -> Greylist:
        store = StateStore(os.path.join(self.folder, FILENAME))
        self.stores.append(store)
        return Greylist(self.settings, store, self.clock)

    def restart(self) -> None:
        self.stores[-1].close()
        self.greylist = self.start()

    def session(self, peer: str = "192.0.2.9", before: tuple[Check, ...] = ()) -> CheckRig:
        return CheckRig([*before, self.greylist], peer=peer, clock=self.clock)

    def attempt(self, sender: str = "x@remote.test", rcpt: str = "alice@example.test", **kw) -> bytes:
        """One delivery attempt in a new session: the RCPT reply (or the final reply of DATA)."""
        rig = self.session(**kw)
        out = rig.mail(sender=sender, rcpts=(rcpt,))
        rig.close()
        return out[-1]

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def world(tmp_path):
    w = World(str(tmp_path))
    yield w
    w.close()


def test_first_try_is_greylisted_and_logged(world):
    with LogLines() as log:
        rig = world.session()
        out = rig.mail()
    assert out[-1] == GREYLISTED
    assert not rig.queue.items
    (line,) = log.matching("check ")
    assert "check=greylist" in line and "verdict=tempfail" in line and f"session={rig.proto.sid}" in line


def test_too_early_a_retry_is_greylisted_again_and_does_not_restart_the_wait(world):
    assert world.attempt() == GREYLISTED
    world.clock.advance(200)
    assert world.attempt() == b"451 4.7.1 Greylisted, try again in 100 seconds"
    world.clock.advance(100)                  # 300 s after the FIRST try, not the second
    assert world.attempt().startswith(b"250 2.0.0 Ok: queued as")


def test_after_the_delay_the_retry_is_delivered(world):
    world.attempt()
    world.clock.advance(301)
    rig = world.session()
    out = rig.mail()
    assert codes(out)[-1] == b"250"
    assert len(rig.queue.items) == 1
    world.clock.advance(86400)                # a triplet that passed passes at once from then on
    assert world.attempt().startswith(b"250 2.0.0")


def test_a_retry_after_the_window_starts_over(world):
    world.attempt()
    world.clock.advance(2 * 86400 + 1)
    assert world.attempt() == GREYLISTED


def test_another_triplet_from_the_same_network_is_greylisted(world):
    world.attempt()
    world.clock.advance(301)
    world.attempt()
    assert world.attempt(rcpt="a@example.test") == GREYLISTED
    assert world.attempt(sender="y@other.test") == GREYLISTED


def test_a_retry_from_another_host_of_the_same_slash_24_passes(world):
    world.attempt(peer="192.0.2.9")
    world.clock.advance(301)
    assert world.attempt(peer="192.0.2.200").startswith(b"250 2.0.0")
    assert world.attempt(peer="198.51.100.1") == GREYLISTED


def test_ipv6_clients_count_by_slash_64(world):
    world.attempt(peer="2001:db8:1:2::9")
    world.clock.advance(301)
    assert world.attempt(peer="2001:db8:1:2:ffff::1").startswith(b"250 2.0.0")
    assert world.attempt(peer="2001:db8:1:3::9") == GREYLISTED


def test_five_passed_deliveries_whitelist_the_client_network(world):
    for n in range(5):                         # five senders, each greylisted once, then passing
        sender = f"person{chr(97 + n)}@remote.test"
        assert world.attempt(sender=sender) == GREYLISTED
        world.clock.advance(301)
        assert world.attempt(sender=sender).startswith(b"250 2.0.0")
    assert world.attempt(sender="newcomer@remote.test").startswith(b"250 2.0.0")
    assert world.attempt(peer="198.51.100.1") == GREYLISTED      # another network is not


def test_four_passes_are_not_enough(world):
    for n in range(4):
        sender = f"person{chr(97 + n)}@remote.test"
        world.attempt(sender=sender)
        world.clock.advance(301)
        world.attempt(sender=sender)
    assert world.attempt(sender="newcomer@remote.test") == GREYLISTED


def test_a_message_to_many_recipients_is_one_delivery(world):
    rcpts = ("alice@example.test", "a@example.test")       # the rig's directory knows these two
    rig = world.session()
    assert codes(rig.mail(rcpts=rcpts)).count(b"451") == 2
    world.clock.advance(301)
    rig = world.session()
    assert codes(rig.mail(rcpts=rcpts))[-1] == b"250"
    assert world.greylist.clients["192.0.2.0/24"].passed == 1
    assert world.attempt(sender="newcomer@remote.test") == GREYLISTED


def test_a_triplet_unused_for_35_days_is_forgotten(world):
    world.attempt()
    world.clock.advance(301)
    world.attempt()
    world.clock.advance(35 * 86400 + 1)
    assert world.attempt() == GREYLISTED
    assert len(world.greylist.triplets) == 1           # the sweep dropped the old entry


def test_expired_entries_leave_the_state_file(world):
    world.attempt()
    world.attempt(sender="other@remote.test")
    world.clock.advance(3 * 86400)
    world.attempt(sender="third@remote.test")            # triggers the hourly sweep
    world.stores[-1].flush()
    rows = sqlite3.connect(os.path.join(world.folder, FILENAME)).execute("SELECT key FROM greylist").fetchall()
    assert [key.split("\t")[1] for key, in rows] == ["third@remote.test"]


def test_the_null_sender_is_greylisted_by_recipient(world):
    assert world.attempt(sender="") == GREYLISTED
    world.clock.advance(301)
    assert world.attempt(sender="").startswith(b"250 2.0.0")
    assert world.attempt(sender="", rcpt="a@example.test") == GREYLISTED


def test_verp_senders_are_one_triplet(world):
    assert world.attempt(sender="bounces+1234-alice=example.test@list.remote.test") == GREYLISTED
    world.clock.advance(301)
    assert world.attempt(sender="bounces+5678-alice=example.test@list.remote.test").startswith(b"250 2.0.0")
    assert world.attempt(sender="prvs=0123abcdef=news@remote.test") == GREYLISTED
    world.clock.advance(301)
    assert world.attempt(sender="prvs=9876fedcba=news@remote.test").startswith(b"250 2.0.0")


def test_state_survives_a_restart(world):
    assert world.attempt() == GREYLISTED
    world.restart()
    world.clock.advance(100)
    assert world.attempt() == b"451 4.7.1 Greylisted, try again in 200 seconds"
    world.restart()
    world.clock.advance(201)
    with LogLines() as log:
        assert world.attempt().startswith(b"250 2.0.0")
    assert any("verdict=accept" in line and "retried after 301s" in line for line in log.matching("check "))


def test_whitelisted_clients_stay_whitelisted_after_a_restart(world):
    for n in range(5):
        sender = f"person{chr(97 + n)}@remote.test"
        world.attempt(sender=sender)
        world.clock.advance(301)
        world.attempt(sender=sender)
    world.restart()
    assert world.attempt(sender="newcomer@remote.test").startswith(b"250 2.0.0")


CRASHING_WRITER = textwrap.dedent("""
    import sys
    from twisted.internet import task
    from appliance.filters.base import Facts
    from appliance.filters.greylist import Greylist
    from appliance.filters.statestore import StateStore
    from tests.unit.checkrig import settings

    def sender(n):   # letters: digits would normalise to one sender
        return "".join(chr(97 + int(d)) for d in str(n)) + "@remote.test"

    store = StateStore(sys.argv[1])
    greylist = Greylist(settings(greylist="all"), store, task.Clock())

    def attempt(n):
        facts = Facts(session="s", service="smtp", peer="192.0.2.9")
        facts.new_transaction(sender(n))
        facts.txn.rcpt = "alice@example.test"
        return greylist.rcpt(facts)

    for n in range(100):
        attempt(n)
    store.flush()
    print("committed", flush=True)
    for n in range(100, 10_000_000):    # killed somewhere in here, mid-write
        attempt(n)
""")


def test_state_survives_a_kill_mid_write(tmp_path):
    path = str(tmp_path / FILENAME)
    child = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, path], stdout=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert child.stdout.readline() == b"committed\n"
        deadline = time.monotonic() + 30
        while _rows(path) < 1000 and time.monotonic() < deadline:     # let it be busy writing
            time.sleep(0.02)
        seen = _rows(path)
        assert child.poll() is None, "the writer finished before it was killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    clock = task.Clock()
    clock.advance(301)
    store = StateStore(path)
    try:
        greylist = Greylist(settings(greylist="all"), store, clock)
        assert len(greylist.triplets) >= max(seen, 100)
        for sender in ("a@remote.test", "jj@remote.test"):    # 0 and 99, committed before the kill: they pass
            rig = CheckRig([greylist], clock=clock)
            assert rig.mail(sender=sender)[-1].startswith(b"250 2.0.0")
    finally:
        store.close()


def _rows(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM greylist").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        db.close()


@pytest.fixture
def suspicious(tmp_path):
    w = World(str(tmp_path))
    w.settings = settings(greylist="suspicious")
    w.greylist = w.start()
    yield w
    w.close()


def test_suspicious_mode_passes_clients_without_doubts(suspicious):
    assert suspicious.attempt().startswith(b"250 2.0.0")
    assert suspicious.greylist.triplets == {}


def test_suspicious_mode_greylists_doubtful_clients(suspicious):
    assert suspicious.attempt(before=(Doubt(),)) == GREYLISTED


def test_an_allowlisted_client_is_never_greylisted(suspicious):
    assert suspicious.attempt(before=(Doubt(allowlisted=True),)).startswith(b"250 2.0.0")


def test_off_greylists_nobody(tmp_path):
    store = StateStore(str(tmp_path / FILENAME))
    try:
        greylist = Greylist(settings(greylist="off"), store, task.Clock())
        rig = CheckRig([Doubt(), greylist])
        assert codes(rig.mail())[-1] == b"250"
    finally:
        store.close()


def test_trusted_clients_are_not_greylisted(world):
    rig = CheckRig([world.greylist], peer="192.0.2.9", trusted="192.0.2.0/24", clock=world.clock)
    assert codes(rig.mail())[-1] == b"250"


def test_the_state_file_is_private(world):
    world.attempt()
    assert os.stat(os.path.join(world.folder, FILENAME)).st_mode & 0o077 == 0


def test_build_puts_rates_before_greylisting_and_leaves_out_what_is_off(tmp_path):
    from appliance import config
    from appliance.filters.build import make_pipeline
    from tests.unit.test_config import MINIMAL, write

    def names(checks_section: str) -> list[str]:
        cfg = config.load(write(tmp_path, MINIMAL + f"state_dir = {tmp_path}/var\n[checks]\n{checks_section}"))
        pipeline = make_pipeline(cfg, task.Clock(), None)
        for check in pipeline.checks:
            store = getattr(check, "store", None)
            if store is not None:
                store.close()
        return [name for name in pipeline.names() if name in ("rates", "greylist")]

    assert names("") == ["rates", "greylist"]                      # the defaults: suspicious, mox's limits
    assert names("greylist = off\n") == ["rates"]
    assert names("client_messages_per_minute = 0\nclient_recipients_per_minute = 0\nuser_messages_per_day = 0\n"
                 "user_new_recipients_per_day = 0\n") == ["greylist"]
    assert os.path.exists(tmp_path / "var" / FILENAME)
