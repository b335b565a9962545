"""The spool keeps the 250 promise (fdatasync first, group commit, recovery) and the runner delivers or bounces."""
from __future__ import annotations

import os

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from appliance import queue
from appliance.config import QueueSection
from appliance.envelope import DELIVERED, FAILED, PENDING, Envelope, Recipient, new_id
from appliance.errors import NoSuchMailbox, QueueWriteError, TemporaryFailure
from appliance.queue import QueueService, Spool
from appliance.inline import InlineReactor as FakeReactor, InlinePool as SyncPool


class ManualPool:
    """A thread pool whose jobs run when the test says so (to see what happens while a write is in flight)."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run_one(self):
        on_result, f, args, kwargs = self.jobs.pop(0)
        on_result(True, f(*args, **kwargs))


def envelope(*rcpts: str, sender: str = "alice@example.test", received_at: float = 0.0) -> Envelope:
    return Envelope(id=new_id(), sender=sender, received_at=received_at,
                    recipients=[Recipient(address=r, local=r.endswith("@example.test")) for r in rcpts])


def message(n: int = 0) -> bytes:
    return b"Subject: test %d\r\nFrom: alice@example.test\r\n\r\nbody %d\r\n" % (n, n) + b"x" * 4000 + b"\r\n"


def open_spool(path, reactor=None, pool=None) -> Spool:
    spool = Spool(str(path), reactor or FakeReactor(), pool or SyncPool())
    spool.recover()
    return spool


def result_of(d: Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def segment_files(path) -> list[str]:
    return sorted(os.listdir(os.path.join(path, "segments")))


# --- spool ------------------------------------------------------------------------------------------

def test_put_fires_only_after_the_data_is_fdatasynced(tmp_path, monkeypatch):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    env, body = envelope("bob@example.test"), message()
    seen = []
    real = os.fdatasync

    def spy(fd):
        with open(os.path.join(tmp_path, "segments", segment_files(tmp_path)[0]), "rb") as f:
            seen.append((body in f.read(), d.called))
        real(fd)
        seen.append(("synced", d.called))

    monkeypatch.setattr(os, "fdatasync", spy)
    d = spool.put(env, body)
    assert not d.called                  # nothing before the reactor turn ends
    reactor.advance(0)
    assert seen == [(True, False), ("synced", False)]
    assert d.called and result_of(d) is None


def test_many_puts_in_one_turn_are_one_write_and_one_fdatasync(tmp_path, monkeypatch):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    calls = {"write": 0, "fdatasync": 0}
    real_write, real_writev, real_sync = os.write, os.writev, os.fdatasync

    def count(name, real):
        def wrapper(*args):
            calls[name] += 1
            return real(*args)
        return wrapper

    monkeypatch.setattr(os, "write", count("write", real_write))
    monkeypatch.setattr(os, "writev", count("write", real_writev))     # records go out as pieces, no joined copy
    monkeypatch.setattr(os, "fdatasync", count("fdatasync", real_sync))
    puts = [spool.put(envelope("bob@example.test"), message(i)) for i in range(50)]
    reactor.advance(0)
    assert all(d.called for d in puts)
    assert calls == {"write": 1, "fdatasync": 1}


@pytest.mark.parametrize("most", [1, 3, 4096, 1 << 30])
def test_record_pieces_reach_the_file_whole_and_in_order_after_short_writes(tmp_path, monkeypatch, most):
    """The writer hands the kernel a batch's pieces (writev); a short write resumes mid-piece,
    and more pieces than one writev takes go out in several."""
    pieces = [b"head-%d:" % n + bytes([65 + n % 26]) * (n * 7 % 50) for n in range(1200)] + [b""]
    real_writev = os.writev

    def short_writev(fd, buffers):
        assert len(buffers) <= 1024
        taken, room = [], most
        for buffer in buffers:
            if room <= 0:
                break
            taken.append(memoryview(buffer)[:room])
            room -= len(taken[-1])
        return real_writev(fd, taken)

    monkeypatch.setattr(os, "writev", short_writev)
    path = tmp_path / "segment"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        queue.write_pieces(fd, pieces)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)


def test_puts_arriving_during_a_write_form_the_next_batch(tmp_path, monkeypatch):
    reactor, pool = FakeReactor(), ManualPool()
    spool = open_spool(tmp_path, reactor, pool)
    syncs = []
    monkeypatch.setattr(os, "fdatasync", syncs.append)
    first = spool.put(envelope("bob@example.test"), message(0))
    reactor.advance(0)
    later = [spool.put(envelope("bob@example.test"), message(i)) for i in (1, 2, 3)]
    reactor.advance(0)
    assert len(pool.jobs) == 1           # one writer at a time
    pool.run_one()
    assert first.called and not any(d.called for d in later)
    assert len(pool.jobs) == 1           # the three waiting puts go together
    pool.run_one()
    assert all(d.called for d in later) and len(syncs) == 2


def test_a_large_batch_is_flushed_without_waiting_for_the_turn_to_end(tmp_path):
    spool = open_spool(tmp_path)
    d = spool.put(envelope("bob@example.test"), b"x" * (queue.BATCH_LIMIT + 1))
    assert d.called


def test_recovery_returns_exactly_the_messages_not_done_with_bodies_intact(tmp_path):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    envs = [envelope("bob@example.test") for _ in range(3)]
    for i, env in enumerate(envs):
        spool.put(env, message(i))
    reactor.advance(0)
    spool.done(envs[1].id)
    reactor.advance(queue.CLEANUP_DELAY)     # done marks wait a moment for a put to ride with

    again = Spool(str(tmp_path), FakeReactor(), SyncPool())     # as after kill -9
    recovered = again.recover()
    assert [e.id for e, _ in recovered] == [envs[0].id, envs[2].id]
    assert result_of(again.load(envs[0].id)) == message(0)
    assert result_of(again.load(envs[2].id)) == message(2)
    assert sorted(e.id for e in again.list()) == sorted([envs[0].id, envs[2].id])


def test_a_torn_tail_record_is_ignored(tmp_path):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    kept, torn = envelope("bob@example.test"), envelope("carol@example.test")
    spool.put(kept, message(1))
    reactor.advance(0)
    spool.put(torn, message(2))
    reactor.advance(0)
    segment = os.path.join(tmp_path, "segments", segment_files(tmp_path)[0])
    os.truncate(segment, os.path.getsize(segment) - 100)        # a crash mid-write

    again = Spool(str(tmp_path), reactor, SyncPool())
    assert [e.id for e, _ in again.recover()] == [kept.id]
    assert result_of(again.load(kept.id)) == message(1)
    # new records go to a fresh segment, never after the torn tail
    fresh = envelope("dave@example.test")
    again.put(fresh, message(3))
    reactor.advance(0)
    assert sorted(e.id for e, _ in Spool(str(tmp_path), reactor, SyncPool()).recover()) == sorted([kept.id, fresh.id])


def three_in_one_segment(tmp_path):
    """Three queued messages in one segment; returns (envelopes, segment path, reactor)."""
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    envs = [envelope(f"user{i}@example.test") for i in range(3)]
    for i, env in enumerate(envs):
        spool.put(env, message(i))
    reactor.advance(0)
    result_of(spool.close())
    [name] = segment_files(tmp_path)
    return envs, os.path.join(tmp_path, "segments", name), reactor


def damage_at(path, at: int, data: bytes = b"X") -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def errors_logged(capture) -> list[str]:
    return [e["log_format"] for e in capture if e.get("log_level") and e["log_level"].name == "error"]


@pytest.fixture
def capture():
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_a_changed_byte_in_the_middle_record_hides_nothing_after_it(tmp_path, capture):
    (first, middle, third), segment, reactor = three_in_one_segment(tmp_path)
    with open(segment, "rb") as f:
        damage_at(segment, f.read().index(b"body 1"))            # the middle record's CRC no longer matches

    again = Spool(str(tmp_path), reactor, SyncPool())
    assert [e.id for e, _ in again.recover()] == [first.id, third.id]
    assert result_of(again.load(third.id)) == message(2)
    [damage] = again.damaged
    assert (damage.kind, damage.queue_id) == ("damaged", middle.id)
    assert any("damaged queue record" in line and middle.id in line for line in errors_logged(capture))
    reactor.advance(0)                                            # the first writer job keeps it aside
    kept = os.path.join(tmp_path, "corrupt", damage.name)
    with open(kept, "rb") as f:
        saved = f.read()
    assert saved.startswith(queue.MAGIC) and middle.id.encode() in saved and b"Xody 1" in saved
    # listed, with and without a daemon, and still there after everything else is done
    listed = queue.read_spool(str(tmp_path))
    assert [e.id for e in listed[0]] == [first.id, third.id]
    assert [(d.path, d.kind, d.queue_id) for d in listed[1]] == [(kept, "damaged", middle.id)]
    again.done(first.id)
    again.done(third.id)
    reactor.advance(0)
    result_of(again.close())
    assert segment_files(tmp_path) == []                          # every record accounted for: removed
    assert os.path.exists(kept)


def test_a_damaged_header_is_skipped_to_the_next_intact_record(tmp_path):
    (first, middle, third), segment, reactor = three_in_one_segment(tmp_path)
    with open(segment, "rb") as f:
        at = f.read().index(middle.id.encode()) - queue.HEADER.size
    damage_at(segment, at + 6, b"\xff\xff\xff")                  # the envelope length: nonsense
    again = Spool(str(tmp_path), reactor, SyncPool())
    assert [e.id for e, _ in again.recover()] == [first.id, third.id]
    assert [(d.offset, d.kind) for d in again.damaged] == [(at, "damaged")]


def test_garbage_between_records_is_kept_aside_and_skipped(tmp_path):
    (first, middle, third), segment, reactor = three_in_one_segment(tmp_path)
    with open(segment, "rb") as f:
        data = f.read()
    at = data.index(third.id.encode()) - queue.HEADER.size
    junk = b"MAQ1 not a record \x00\x01" * 10
    with open(segment, "wb") as f:
        f.write(data[:at] + junk + data[at:])
    again = Spool(str(tmp_path), reactor, SyncPool())
    assert [e.id for e, _ in again.recover()] == [first.id, middle.id, third.id]
    assert result_of(again.load(third.id)) == message(2)
    assert [(d.offset, d.length, d.kind) for d in again.damaged] == [(at, len(junk), "damaged")]


def test_a_truncated_tail_keeps_every_record_before_it(tmp_path):
    (first, middle, third), segment, reactor = three_in_one_segment(tmp_path)
    size = os.path.getsize(segment)
    os.truncate(segment, size - 100)
    again = Spool(str(tmp_path), reactor, SyncPool())
    assert [e.id for e, _ in again.recover()] == [first.id, middle.id]
    [torn] = again.damaged
    assert torn.kind == "torn" and torn.offset + torn.length == size - 100 and torn.queue_id == third.id


def test_a_segment_whose_damage_cannot_be_kept_aside_is_not_removed(tmp_path, monkeypatch):
    (first, middle, third), segment, reactor = three_in_one_segment(tmp_path)
    with open(segment, "rb") as f:
        damage_at(segment, f.read().index(b"body 1"))
    for env in (first, third):                                   # everything intact is finished
        with open(segment[:-4] + ".done", "a") as f:
            f.write(env.id + "\n")

    def cannot(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(queue, "replace_file", cannot)
    again = Spool(str(tmp_path), reactor, SyncPool())
    assert again.recover() == []
    reactor.advance(0)
    assert os.path.exists(segment)                                # the damaged bytes exist only here
    monkeypatch.undo()
    third_start = Spool(str(tmp_path), reactor, SyncPool())
    third_start.recover()
    reactor.advance(0)
    assert not os.path.exists(segment) and len(os.listdir(tmp_path / "corrupt")) == 1


def test_bytes_damaged_after_the_start_are_not_read_back_as_the_message(tmp_path):
    (first, middle, third), segment, reactor = three_in_one_segment(tmp_path)
    again = Spool(str(tmp_path), reactor, SyncPool())
    assert len(again.recover()) == 3
    with open(segment, "rb") as f:
        damage_at(segment, f.read().index(b"body 1"))         # after the scan: only a read-back can tell
    with pytest.raises(OSError, match="damaged"):
        result_of(again.load(middle.id))
    assert result_of(again.load(third.id)) == message(2)
    fresh = envelope("dave@example.test")                     # and a record written in this run
    again.put(fresh, message(7))
    reactor.advance(0)
    assert result_of(again.load(fresh.id)) == message(7)


def test_scan_segment_without_damage_list_still_yields_every_intact_record(tmp_path):
    (first, middle, third), segment, _ = three_in_one_segment(tmp_path)
    with open(segment, "rb") as f:
        damage_at(segment, f.read().index(b"body 0"))
    assert [qid for qid, _, _ in queue.scan_segment(segment, 1)] == [middle.id, third.id]


def test_done_marks_and_deleting_finished_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(queue, "SEGMENT_LIMIT", 1)               # every batch starts a new segment
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    a, b = envelope("bob@example.test"), envelope("carol@example.test")
    spool.put(a, message(1))
    reactor.advance(0)
    spool.put(b, message(2))
    reactor.advance(0)
    assert segment_files(tmp_path) == ["000000000001.log", "000000000002.log"]

    spool.done(a.id)                     # segment 1 is finished and not active: deleted
    spool.done(b.id)                     # segment 2 is active: kept, with a done mark
    reactor.advance(queue.CLEANUP_DELAY)     # done marks wait a moment for a put to ride with
    assert segment_files(tmp_path) == ["000000000002.done", "000000000002.log"]
    with open(os.path.join(tmp_path, "segments", "000000000002.done"), "rb") as f:
        assert f.read() == b.id.encode() + b"\n"
    assert Spool(str(tmp_path), reactor, SyncPool()).recover() == []

    c = envelope("dave@example.test")    # the next batch rotates, and segment 2 goes too
    spool.put(c, message(3))
    reactor.advance(0)
    assert segment_files(tmp_path) == ["000000000003.log"]


def test_a_done_mark_rides_with_the_next_puts_job(tmp_path):
    """At one message at a time, each delivered message's mark used to be a writer job (a thread
    round trip) of its own; it now waits a moment and goes with the next put's fdatasync."""
    reactor, pool = FakeReactor(), ManualPool()
    spool = open_spool(tmp_path, reactor, pool)
    a, b = envelope("bob@example.test"), envelope("carol@example.test")
    spool.put(a, message(1))
    reactor.advance(0)
    pool.run_one()
    spool.done(a.id)
    reactor.advance(0)
    assert pool.jobs == []                          # not yet: waiting for company
    spool.put(b, message(2))
    reactor.advance(0)
    assert len(pool.jobs) == 1
    pool.run_one()
    with open(os.path.join(tmp_path, "segments", "000000000001.done"), "rb") as f:
        assert f.read() == a.id.encode() + b"\n"
    spool.done(b.id)                                # alone: written within CLEANUP_DELAY all the same
    reactor.advance(queue.CLEANUP_DELAY)
    pool.run_one()
    assert pool.jobs == []
    assert Spool(str(tmp_path), reactor, SyncPool()).recover() == []


def test_recovery_deletes_segments_whose_messages_are_all_done(tmp_path):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    a = envelope("bob@example.test")
    spool.put(a, message())
    reactor.advance(0)
    spool.done(a.id)
    reactor.advance(queue.CLEANUP_DELAY)     # done marks wait a moment for a put to ride with
    again = Spool(str(tmp_path), reactor, SyncPool())
    assert again.recover() == []
    reactor.advance(0)
    assert segment_files(tmp_path) == []


def test_state_file_overrides_the_queued_envelope(tmp_path):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    env = envelope("bob@example.test", "carol@example.test")
    spool.put(env, message())
    reactor.advance(0)
    env.recipients[0].state = DELIVERED
    env.recipients[1].attempts, env.recipients[1].next_attempt = 1, 300.0
    env.recipients[1].last_error = "4.2.0 mailbox busy"
    d = spool.update(env)
    reactor.advance(0)
    assert d.called and os.path.exists(os.path.join(tmp_path, "state", env.id + ".json"))

    (back, _), = Spool(str(tmp_path), reactor, SyncPool()).recover()
    assert [r.state for r in back.recipients] == [DELIVERED, PENDING]
    assert back.recipients[1].attempts == 1 and back.recipients[1].last_error == "4.2.0 mailbox busy"

    spool.done(env.id)                   # finishing a message removes its state file
    reactor.advance(queue.CLEANUP_DELAY)     # done marks wait a moment for a put to ride with
    assert os.listdir(os.path.join(tmp_path, "state")) == []


def test_a_failed_write_fails_the_put_and_the_next_put_uses_a_fresh_segment(tmp_path, monkeypatch):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    bad = spool.put(envelope("bob@example.test"), message(1))
    reactor.advance(0)
    with pytest.raises(QueueWriteError):
        result_of(bad)
    monkeypatch.undo()
    good_env = envelope("carol@example.test")
    good = spool.put(good_env, message(2))
    reactor.advance(0)
    assert result_of(good) is None
    assert "000000000002.log" in segment_files(tmp_path)
    recovered = [e.id for e, _ in Spool(str(tmp_path), reactor, SyncPool()).recover()]
    assert good_env.id in recovered      # the failed one may reappear (duplicate), the good one must


def test_put_before_recover_or_after_close_is_refused(tmp_path):
    spool = Spool(str(tmp_path), FakeReactor(), SyncPool())
    with pytest.raises(QueueWriteError):
        result_of(spool.put(envelope("bob@example.test"), message()))
    spool.recover()
    result_of(spool.close())
    with pytest.raises(QueueWriteError):
        result_of(spool.put(envelope("bob@example.test"), message()))


# --- runner -----------------------------------------------------------------------------------------

class FakeCourier:
    """Delivers, or fails with what `outcomes[address]` says (an exception, or a list of them in turn)."""

    def __init__(self, outcomes=None):
        self.outcomes = outcomes or {}
        self.calls: list[tuple[str, str, bytes]] = []

    def deliver(self, envelope, recipient, message):
        self.calls.append((envelope.id, recipient.address, message))
        outcome = self.outcomes.get(recipient.address)
        if isinstance(outcome, list):
            outcome = outcome.pop(0) if outcome else None
        if isinstance(outcome, Deferred):
            return outcome
        if isinstance(outcome, BaseException):
            return fail(outcome)
        return succeed(f"/mail/{recipient.address}")


SETTINGS = QueueSection(retry_initial=300, retry_max=1200, max_queue_lifetime=10_000)


def make_service(tmp_path, local=None, remote=None, settings=SETTINGS):
    reactor = FakeReactor()
    reactor.advance(1_000_000)
    spool = Spool(str(tmp_path), reactor, SyncPool())
    couriers = {"local": local or FakeCourier(), "remote": remote or FakeCourier()}
    service = QueueService(spool, couriers, settings, reactor, hostname="mail.example.test",
                           is_local=lambda a: a.endswith("@example.test"))
    service.startService()
    return service, spool, reactor, couriers


def test_a_message_is_delivered_right_after_it_is_durable(tmp_path):
    service, spool, reactor, couriers = make_service(tmp_path)
    env = envelope("bob@example.test", received_at=reactor.seconds())
    d = service.put(env, message())
    assert couriers["local"].calls == []               # not before it is on disk
    reactor.advance(0)
    assert result_of(d) is None
    assert couriers["local"].calls == [(env.id, "bob@example.test", message())]
    assert env.recipients[0].state == DELIVERED
    assert spool.list() == []
    reactor.advance(queue.CLEANUP_DELAY)     # done marks wait a moment for a put to ride with
    assert Spool(str(tmp_path), reactor, SyncPool()).recover() == []


def test_recipients_go_to_the_courier_their_local_flag_names(tmp_path):
    service, spool, reactor, couriers = make_service(tmp_path)
    env = envelope("bob@example.test", "zed@elsewhere.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    assert [c[1] for c in couriers["local"].calls] == ["bob@example.test"]
    assert [c[1] for c in couriers["remote"].calls] == ["zed@elsewhere.test"]


def test_a_temporary_failure_is_retried_with_doubling_backoff(tmp_path):
    local = FakeCourier({"bob@example.test": [TemporaryFailure("4.2.0", "mailbox busy")] * 4})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    bob = env.recipients[0]
    assert (bob.state, bob.attempts, bob.last_error) == (PENDING, 1, "4.2.0 mailbox busy")

    schedule = []
    for _ in range(4):
        before = len(local.calls)
        waited = 0
        while len(local.calls) == before:
            reactor.advance(100)
            waited += 100
        schedule.append(waited)
    assert schedule == [300, 600, 1200, 1200]           # retry_initial doubling, capped at retry_max
    assert bob.state == DELIVERED and bob.attempts == 4
    assert all(call[2] == message() for call in local.calls)   # later attempts read the body back


def test_the_failure_status_is_recorded_apart_from_the_text(tmp_path):
    local = FakeCourier({"bob@example.test": TemporaryFailure("4.2.0", "mx said: 450\n  4.7.1 busy")})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    bob = env.recipients[0]
    assert (bob.status, bob.last_error) == ("4.2.0", "4.2.0 mx said: 450 4.7.1 busy")
    (back, _), = Spool(str(tmp_path), reactor, SyncPool()).recover()
    assert back.recipients[0].status == "4.2.0"


def test_an_envelope_written_before_statuses_were_stored_still_loads():
    old = (b'{"id":"A1","sender":"a@example.test","recipients":[{"address":"b@example.test","original":"",'
           b'"extension":"","local":true,"state":"pending","attempts":1,"next_attempt":300.0,'
           b'"last_error":"4.2.0 mailbox busy"},{"address":"c@example.test","original":"","extension":"",'
           b'"local":true,"state":"pending","attempts":0,"next_attempt":0.0,"last_error":""}],'
           b'"received_at":0.0,"peer":"","helo":"","protocol":"ESMTP","login":"","size":10,"held":false,'
           b'"delay_notified":false}')
    env = Envelope.from_json(old)
    assert [(r.status, r.last_error) for r in env.recipients] == [("4.2.0", "4.2.0 mailbox busy"), ("", "")]
    assert Envelope.from_json(env.to_json()) == env


def test_retry_state_survives_a_restart(tmp_path):
    local = FakeCourier({"bob@example.test": TemporaryFailure("4.2.0", "mailbox busy")})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", "carol@example.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)

    (back, _), = Spool(str(tmp_path), reactor, SyncPool()).recover()
    assert [(r.address, r.state, r.attempts) for r in back.recipients] == [
        ("bob@example.test", PENDING, 1), ("carol@example.test", DELIVERED, 0)]


def test_start_delivers_what_was_queued_before_a_restart(tmp_path):
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    env = envelope("bob@example.test")
    spool.put(env, message(7))
    reactor.advance(0)                                   # queued, then the process died

    local = FakeCourier()
    make_service(tmp_path, local=local)
    assert local.calls == [(env.id, "bob@example.test", message(7))]


def test_a_permanent_failure_bounces_to_the_sender(tmp_path):
    local = FakeCourier({"bob@example.test": NoSuchMailbox("no such user")})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", sender="alice@example.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    assert env.recipients[0].state == FAILED
    (dsn_id, to, dsn), = [c for c in local.calls if c[1] == "alice@example.test"]
    assert b"Final-Recipient: rfc822; bob@example.test" in dsn
    assert b"Status: 5.1.1" in dsn
    assert b"Subject: test 0" in dsn                      # the original headers are included
    assert spool.list() == []


def test_the_bounce_of_a_5_mb_header_block_is_capped(tmp_path):
    local = FakeCourier({"bob@example.test": NoSuchMailbox("no such user")})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", sender="alice@example.test", received_at=reactor.seconds())
    big = b"Subject: big\r\n" + b"X-Filler: " + b"a" * 60 + b"\r\n" * 1 + (b"X-Filler: " + b"a" * 60 + b"\r\n") * 70_000
    service.put(env, big)
    reactor.advance(0)
    (_, to, dsn), = [c for c in local.calls if c[1] == "alice@example.test"]
    assert b"Subject: big" in dsn and len(big) > 4_000_000 and len(dsn) < 55_000


def test_a_small_message_comes_back_whole_in_its_bounce(tmp_path):
    local = FakeCourier({"bob@example.test": NoSuchMailbox("no such user")})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", sender="alice@example.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    (_, to, dsn), = [c for c in local.calls if c[1] == "alice@example.test"]
    assert message() in dsn and b"Content-Type: message/rfc822" in dsn


def test_no_dsn_for_the_null_sender(tmp_path):
    local = FakeCourier({"bob@example.test": NoSuchMailbox("no such user")})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", sender="", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    assert env.recipients[0].state == FAILED
    assert [c[1] for c in local.calls] == ["bob@example.test"]
    assert spool.list() == []


def test_a_message_past_its_lifetime_bounces(tmp_path):
    remote = FakeCourier({"zed@elsewhere.test": TemporaryFailure("4.4.0", "remote delivery not available yet")})
    local = FakeCourier()
    service, spool, reactor, _ = make_service(tmp_path, local=local, remote=remote)
    env = envelope("zed@elsewhere.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    reactor.pump([600] * 20)                              # 12,000 s > max_queue_lifetime
    zed = env.recipients[0]
    assert zed.state == FAILED and zed.last_error.startswith("4.4.7 ")
    (_, to, dsn), = local.calls
    assert to == "alice@example.test" and b"Status: 4.4.7" in dsn and b"Action: failed" in dsn
    assert spool.list() == []


def test_an_unexpected_error_is_retried_not_lost(tmp_path):
    local = FakeCourier({"bob@example.test": [RuntimeError("bug")]})
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope("bob@example.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    assert env.recipients[0].last_error == "4.3.0 internal error"
    reactor.advance(300)
    assert env.recipients[0].state == DELIVERED


def test_concurrent_deliveries_are_bounded(tmp_path):
    waiting = {f"u{i}@example.test": Deferred() for i in range(30)}
    local = FakeCourier(dict(waiting))
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    env = envelope(*waiting, received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    assert len(local.calls) == 20
    for d in waiting.values():
        if not d.called:
            d.callback("/mail/x")
    assert len(local.calls) == 30 and env.done()


# --- delay notices ----------------------------------------------------------------------------------

NOTICE_SETTINGS = QueueSection(retry_initial=300, retry_max=300, max_queue_lifetime=10_000, delay_warning=1000)


def dsns(courier: FakeCourier, action: bytes) -> list[bytes]:
    return [c[2] for c in courier.calls if c[1] == "alice@example.test" and b"Action: " + action in c[2]]


def test_one_delay_notice_after_delay_warning_and_it_survives_a_restart(tmp_path):
    remote = FakeCourier({"zed@elsewhere.test": TemporaryFailure("4.2.0", "mx said: 450 busy")})
    local = FakeCourier()
    service, spool, reactor, _ = make_service(tmp_path, local=local, remote=remote, settings=NOTICE_SETTINGS)
    env = envelope("zed@elsewhere.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    reactor.pump([300] * 3)                               # 900 s: not yet
    assert dsns(local, b"delayed") == []
    reactor.pump([300] * 2)                               # past 1000 s: one notice
    [notice] = dsns(local, b"delayed")
    assert b"Final-Recipient: rfc822; zed@elsewhere.test" in notice and b"Status: 4.2.0" in notice
    assert b"Subject: test 0" in notice                   # the original headers
    reactor.pump([300] * 5)
    assert len(dsns(local, b"delayed")) == 1              # once only
    (back, _), = Spool(str(tmp_path), reactor, SyncPool()).recover()
    assert back.delay_notified is True                    # recorded, so a restart does not repeat it


def test_no_delay_notice_for_the_null_sender_or_when_delivered_in_time(tmp_path):
    remote = FakeCourier({"zed@elsewhere.test": [TemporaryFailure("4.2.0", "busy")]})
    local = FakeCourier()
    service, spool, reactor, _ = make_service(tmp_path, local=local, remote=remote, settings=NOTICE_SETTINGS)
    service.put(envelope("zed@elsewhere.test", received_at=reactor.seconds()), message(1))
    bounce_env = envelope("yan@elsewhere.test", sender="", received_at=reactor.seconds())
    remote.outcomes["yan@elsewhere.test"] = TemporaryFailure("4.2.0", "busy")
    service.put(bounce_env, message(2))
    reactor.advance(0)
    reactor.pump([300] * 6)
    assert [c for c in local.calls if b"multipart/report" in c[2]] == []


# --- the operator's queue commands ------------------------------------------------------------------

def stuck(tmp_path, settings=SETTINGS):
    """A service with one message whose remote recipient keeps failing temporarily."""
    remote = FakeCourier({"zed@elsewhere.test": TemporaryFailure("4.2.0", "busy")})
    service, spool, reactor, couriers = make_service(tmp_path, remote=remote, settings=settings)
    env = envelope("zed@elsewhere.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    return service, spool, reactor, remote, env


def test_flush_retries_deferred_messages_at_once(tmp_path):
    service, spool, reactor, remote, env = stuck(tmp_path)
    assert len(remote.calls) == 1
    assert service.flush() == 1
    assert len(remote.calls) == 2                         # no 300 s wait
    assert env.recipients[0].attempts == 2


def test_a_held_message_is_not_tried_until_released(tmp_path):
    service, spool, reactor, remote, env = stuck(tmp_path)
    held = service.hold(env.id)
    reactor.advance(0)
    assert result_of(held) is None                        # fires once the state is on disk
    reactor.pump([300] * 10)
    assert service.flush() == 0
    assert len(remote.calls) == 1
    (back, _), = Spool(str(tmp_path), reactor, SyncPool()).recover()
    assert back.held is True                              # on disk: held across a restart
    remote.outcomes.clear()
    service.release(env.id)
    reactor.advance(0)
    assert len(remote.calls) == 2 and env.done()          # released: tried at once, delivered
    assert spool.list() == []


def test_delete_drops_the_message_without_a_dsn(tmp_path):
    service, spool, reactor, remote, env = stuck(tmp_path)
    local = service._couriers["local"]
    service.delete(env.id)
    reactor.pump([300] * 10)
    assert spool.list() == [] and len(remote.calls) == 1 and local.calls == []
    reactor.advance(0)
    assert Spool(str(tmp_path), reactor, SyncPool()).recover() == []


def test_delete_while_a_delivery_is_in_flight_stays_deleted(tmp_path):
    pending = Deferred()
    remote = FakeCourier({"zed@elsewhere.test": pending})
    service, spool, reactor, _ = make_service(tmp_path, remote=remote)
    env = envelope("zed@elsewhere.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    service.delete(env.id)
    pending.errback(TemporaryFailure("4.2.0", "busy"))
    reactor.pump([300] * 5)
    assert len(remote.calls) == 1 and spool.list() == []


def test_unknown_ids_raise_key_error(tmp_path):
    service, *_ = make_service(tmp_path)
    for action in (service.delete, service.hold, service.release):
        with pytest.raises(KeyError):
            action("NOSUCHID")


def test_a_second_process_cannot_take_a_running_spool(tmp_path):
    make_service(tmp_path)
    with pytest.raises(queue.SpoolLocked):
        Spool(str(tmp_path), FakeReactor(), SyncPool()).lock()


# --- the queue command without a daemon -------------------------------------------------------------

def queued_on_disk(tmp_path) -> Envelope:
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    env = envelope("zed@elsewhere.test")
    spool.put(env, message())
    reactor.advance(0)
    result_of(spool.close())
    return env


def test_read_queue_lists_without_changing_anything(tmp_path):
    env = queued_on_disk(tmp_path)
    before = sorted(os.walk(tmp_path))
    assert [e.id for e in queue.read_queue(str(tmp_path))] == [env.id]
    assert sorted(os.walk(tmp_path)) == before
    assert queue.read_queue(str(tmp_path / "never-used")) == []
    assert not os.path.exists(tmp_path / "never-used")


def test_edit_offline_holds_releases_and_deletes(tmp_path):
    env = queued_on_disk(tmp_path)
    queue.edit_offline(str(tmp_path), env.id, "hold")
    [back] = queue.read_queue(str(tmp_path))
    assert back.held is True
    queue.edit_offline(str(tmp_path), env.id, "release")
    [back] = queue.read_queue(str(tmp_path))
    assert back.held is False
    queue.edit_offline(str(tmp_path), env.id, "delete")
    assert queue.read_queue(str(tmp_path)) == []
    with pytest.raises(KeyError):
        queue.edit_offline(str(tmp_path), env.id, "hold")


def test_edit_offline_refuses_while_a_daemon_holds_the_spool(tmp_path):
    env = queued_on_disk(tmp_path)
    Spool(str(tmp_path), FakeReactor(), SyncPool()).lock()      # the "daemon"
    with pytest.raises(queue.SpoolLocked):
        queue.edit_offline(str(tmp_path), env.id, "hold")


def test_a_message_deleted_in_flight_gets_no_dsn_for_that_attempt(tmp_path):
    pending = Deferred()
    local = FakeCourier()
    service, spool, reactor, _ = make_service(tmp_path, local=local,
                                              remote=FakeCourier({"zed@elsewhere.test": pending}))
    env = envelope("zed@elsewhere.test", received_at=reactor.seconds())
    service.put(env, message())
    reactor.advance(0)
    service.delete(env.id)
    pending.errback(NoSuchMailbox("no such user"))
    reactor.advance(0)
    assert local.calls == [] and spool.list() == []


# --- the compact envelope record, and spools written before it ------------------------------------

# An envelope exactly as the version before the compact record wrote it into a segment
# (Envelope.to_json at commit 3fb5b65: a JSON object, keys in field order).
OLD_ENVELOPE = (b'{"id":"%s","sender":"alice@example.test","recipients":[{"address":"bob@example.test",'
                b'"original":"","extension":"","local":true,"state":"pending","attempts":0,"next_attempt":0.0,'
                b'"last_error":"","status":"","folder":""}],"received_at":1000000.0,"peer":"192.0.2.7",'
                b'"helo":"client.test","protocol":"ESMTP","login":"","size":%d,"held":false,'
                b'"delay_notified":false,"parent":""}')


def old_spool(tmp_path, count: int) -> list[str]:
    """A spool as the previous version left it at a stop: one segment of `count` pending messages."""
    os.makedirs(tmp_path / "segments")
    os.makedirs(tmp_path / "state")
    ids = [f"OLD{n}" for n in range(count)]
    with open(tmp_path / "segments" / "000000000001.log", "wb") as f:
        for n, qid in enumerate(ids):
            f.write(queue.encode_record(qid, OLD_ENVELOPE % (qid.encode(), len(message(n))), message(n)))
    return ids


def test_a_queue_written_by_the_previous_version_is_delivered_after_the_upgrade(tmp_path):
    ids = old_spool(tmp_path, 3)
    local = FakeCourier()
    service, spool, reactor, _ = make_service(tmp_path, local=local)
    assert local.calls == [(qid, "bob@example.test", message(n)) for n, qid in enumerate(ids)]
    reactor.advance(queue.CLEANUP_DELAY)     # done marks wait a moment for a put to ride with
    assert spool.list() == []
    assert Spool(str(tmp_path), reactor, SyncPool()).recover() == []


def test_old_and_compact_records_in_one_spool_both_recover(tmp_path):
    ids = old_spool(tmp_path, 1)
    reactor = FakeReactor()
    spool = open_spool(tmp_path, reactor)
    new = envelope("carol@example.test", received_at=5.0)
    spool.put(new, message(9))
    reactor.advance(0)
    with open(tmp_path / "segments" / "000000000002.log", "rb") as f:
        assert f.read()[queue.HEADER.size + len(new.id):][:1] == b"["       # written compact
    found = {env.id: env for env, _ in Spool(str(tmp_path), reactor, SyncPool()).recover()}
    assert set(found) == {ids[0], new.id}
    assert found[new.id] == new
    assert found[ids[0]].helo == "client.test" and found[ids[0]].recipients[0].address == "bob@example.test"


def test_the_compact_record_is_smaller_than_the_json_object():
    env = envelope("bob@example.test")
    assert Envelope.decode(env.to_record()) == env
    assert len(env.to_record()) < len(env.to_json()) * 0.7


# --- the writer's own thread ------------------------------------------------------------------------

def test_the_writer_thread_runs_jobs_in_order_reports_failures_and_ends_on_stop():
    import threading
    writer = queue.writer_thread()
    done = threading.Event()
    results: list = []

    def job(n):
        if n == 2:
            raise OSError("disk full")
        return n, threading.current_thread().name

    for n in range(4):
        writer.callInThreadWithCallback(lambda ok, value: results.append((ok, value)), job, n)
    writer.callInThreadWithCallback(lambda ok, value: done.set(), lambda: None)
    [thread] = writer._threads
    assert done.wait(10)
    assert [r[1] for r in results if r[0]] == [(0, "queue-writer-0"), (1, "queue-writer-0"), (3, "queue-writer-0")]
    assert [(ok, value.check(OSError)) for ok, value in results if not ok] == [(False, OSError)]
    writer.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_a_spool_with_its_writer_thread_keeps_the_promise_and_stops_the_thread_on_close(tmp_path):
    import threading
    reactor = FakeReactor()          # callFromThread runs at once, here in the writer thread
    writer = queue.writer_thread()
    spool = Spool(str(tmp_path), reactor, SyncPool(), writer)
    spool.lock()
    spool.recover()
    durable = threading.Event()
    env = envelope("bob@example.test")
    spool.put(env, message(3)).addCallback(lambda _: durable.set())
    reactor.advance(0)               # the turn ends: the batch goes to the writer thread
    assert durable.wait(10)
    closed = threading.Event()
    [thread] = writer._threads
    spool.close().addCallback(lambda _: closed.set())
    assert closed.wait(10)
    thread.join(10)
    assert not thread.is_alive()
    (back, _), = Spool(str(tmp_path), reactor, SyncPool()).recover()
    assert back == env


def test_limited_runs_at_most_the_semaphores_count_and_frees_a_token_on_failure():
    """queue._limited (the delivery fast path) keeps DeferredSemaphore's bound: a call past it
    waits for a running one to finish, and a failed call gives its token back too."""
    from twisted.internet.defer import DeferredSemaphore
    semaphore = DeferredSemaphore(1)
    pending: list[Deferred] = []
    started: list[str] = []

    def job(name: str) -> Deferred:
        started.append(name)
        pending.append(Deferred())
        return pending[-1]

    first = queue._limited(semaphore, job, "a")
    second = queue._limited(semaphore, job, "b")
    assert started == ["a"]
    pending[0].errback(RuntimeError("disk"))
    assert started == ["a", "b"]
    first.addErrback(lambda f: f.trap(RuntimeError))
    pending[1].callback("done")
    results: list[object] = []
    second.addCallback(results.append)
    assert results == ["done"] and semaphore.tokens == 1
