"""Issue 10 defect 8: a DATA transfer in progress goes to disk once large, within one memory budget.

On the base code every transfer kept its whole message in a bytearray for up to data_timeout
(600 s) between chunks. Driven as bytes over StringTransport, time by task.Clock.
"""
from __future__ import annotations

import os

import pytest

from appliance.smtp.dataspool import DataSpool, MemoryBudget
from tests.unit.test_smtp_server import Rig, codes

KIB = 1024
CHUNK = 64 * KIB


def body_of(size: int) -> bytes:
    """A message of about `size` bytes with lines that need dot-stuffing and a From line."""
    line = b"..dotted line and some text to fill the message up to its size, 0123456789\r\n"
    head = b"Subject: big\r\nFrom: a@example.org\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


def stuffed(message: bytes) -> bytes:
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in message.split(b"\r\n"))


def open_transfer(rig: Rig) -> None:
    assert codes(rig.send(b"EHLO client.example.org\r\n")) == [b"250"]
    assert codes(rig.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")) == \
        [b"250", b"250", b"354"]


@pytest.fixture
def spool(tmp_path):
    return DataSpool(str(tmp_path / "smtp-data"), threshold=256 * KIB, budget=MemoryBudget(1024 * KIB))


def rig_with(spool: DataSpool, **limits) -> Rig:
    rig = Rig(**limits)
    rig.factory.data_spool = spool
    rig.proto.setTimeout(None)                       # the session's timeouts on the test clock
    rig.proto.callLater = rig.clock.callLater
    rig.proto.setTimeout(rig.proto.timeout)
    return rig


def test_large_data_goes_to_a_file_memory_stays_bounded_and_the_message_is_intact(spool):
    rig = rig_with(spool)
    open_transfer(rig)
    message = body_of(3 * 1024 * KIB)
    wire = stuffed(message) + b".\r\n"
    peak = 0
    for start in range(0, len(wire) - 5, CHUNK):
        chunk = wire[start:min(start + CHUNK, len(wire) - 5)]
        assert rig.send(chunk) == []
        peak = max(peak, spool.budget.used)
        if start > 256 * KIB:
            assert spool.open_files == 1 and rig.proto._data.on_disk
            assert rig.proto._data.in_memory == 0
    assert peak <= 256 * KIB
    assert os.listdir(spool.directory) == []            # created unlinked: nothing to leave behind
    assert codes(rig.send(wire[len(wire) - 5:])) == [b"250"]
    assert spool.open_files == 0 and spool.budget.used == 0
    (envelope, queued), = rig.queue.items
    assert queued.endswith(b"\r\n" + message)            # after the Received line: byte for byte
    assert queued.split(b"\r\n", 1)[0].startswith(b"Received:")


def test_a_small_message_stays_in_memory_and_gives_its_memory_back(spool):
    rig = rig_with(spool)
    open_transfer(rig)
    rig.send(b"Subject: small\r\n\r\nhello\r\n")
    assert spool.budget.used > 0 and spool.open_files == 0
    assert codes(rig.send(b".\r\n")) == [b"250"]
    assert spool.budget.used == 0
    assert rig.queue.items[0][1].endswith(b"Subject: small\r\n\r\nhello\r\n")


def test_the_budget_is_shared_by_every_transfer_beyond_it_chunks_go_to_disk(spool):
    rigs = [rig_with(spool) for _ in range(8)]
    for rig in rigs:
        open_transfer(rig)
    for _ in range(3):                                   # 8 transfers x 192 KiB each, under the threshold
        for rig in rigs:
            rig.send(b"x" * (64 * KIB - 2) + b"\r\n")
            assert spool.budget.used <= spool.budget.limit
    in_memory = sum(rig.proto._data.in_memory for rig in rigs)
    assert in_memory == spool.budget.used <= 1024 * KIB
    assert spool.open_files == sum(rig.proto._data.on_disk for rig in rigs) >= 3
    for rig in rigs:
        assert codes(rig.send(b".\r\n")) == [b"250"]
    assert spool.budget.used == 0 and spool.open_files == 0
    assert all(len(rig.queue.items[0][1]) > 3 * 64 * KIB for rig in rigs)


@pytest.mark.parametrize("end", ["disconnect", "timeout"])
def test_an_unfinished_transfer_gives_back_its_memory_and_file(spool, end):
    rig = rig_with(spool)
    open_transfer(rig)
    rig.send(b"y" * (1024 * KIB) + b"\r\n")
    rig.send(b"short line\r\n")
    assert spool.open_files == 1 and spool.budget.used == 0
    other = rig_with(spool)
    open_transfer(other)
    other.send(b"z" * (100 * KIB))
    assert spool.budget.used == 2 + 100 * KIB - 4      # our leading CRLF, less the 4 bytes of the scan tail
    if end == "disconnect":
        other.close()
        rig.close()
    else:
        rig.clock.advance(rig.factory.limits.data_timeout + 1)
        other.clock.advance(other.factory.limits.data_timeout + 1)
        assert rig.transport.disconnecting and other.transport.disconnecting
        rig.close()
        other.close()
    assert spool.open_files == 0 and spool.budget.used == 0
    assert rig.queue.items == []


def test_too_big_is_refused_without_keeping_the_rest(spool):
    rig = rig_with(spool, max_message_size=512 * KIB)
    open_transfer(rig)
    for _ in range(20):
        rig.send(b"w" * (CHUNK - 2) + b"\r\n")
    assert spool.open_files == 0 and spool.budget.used == 0    # dropped as soon as it was too big
    assert codes(rig.send(b".\r\n")) == [b"552"]
    assert rig.queue.items == []


def test_a_spool_that_cannot_be_written_answers_451_and_the_session_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    spool = DataSpool(str(blocker / "smtp-data"), threshold=16 * KIB)
    rig = rig_with(spool)
    open_transfer(rig)
    rig.send(b"v" * (64 * KIB) + b"\r\n")
    assert codes(rig.send(b".\r\n")) == [b"451"]
    assert rig.queue.items == [] and spool.open_files == 0 and spool.budget.used == 0
    assert codes(rig.send(b"MAIL FROM:<a@example.org>\r\n")) == [b"250"]


@pytest.mark.parametrize("threshold", [8, 256 * KIB])
def test_the_end_of_data_is_found_at_every_split_and_nothing_after_it_is_stored(tmp_path, threshold):
    message = b"Subject: s\r\n\r\n.leading dot\r\nlast\r\n"
    wire = stuffed(message) + b".\r\nRSET\r\n"
    for cut in range(1, len(wire)):
        spool = DataSpool(str(tmp_path), threshold=threshold)
        rig = rig_with(spool)
        open_transfer(rig)
        replies = codes(rig.send(wire[:cut]) + rig.send(wire[cut:]))
        assert replies == [b"250", b"250"], cut
        assert rig.queue.items[0][1].endswith(b"\r\n" + message), cut
        assert spool.open_files == 0 and spool.budget.used == 0


def test_an_empty_message_and_a_leading_dot_line(spool):
    rig = rig_with(spool)
    open_transfer(rig)
    assert codes(rig.send(b"..x\r\n.\r\n")) == [b"250"]
    assert rig.queue.items[0][1].endswith(b"\r\n.x\r\n")


@pytest.mark.parametrize("threshold", [5, 256 * KIB])
def test_read_skips_across_chunks_in_memory_and_on_disk(tmp_path, threshold):
    """Chunks are kept as written and joined once at the end; the skip may end inside any of them."""
    chunks = [b"\r", b"\nab", b"", memoryview(b"cdefg")[1:], b"h" * 9]
    for skip in range(0, 16):
        buffer = DataSpool(str(tmp_path), threshold=threshold).buffer()
        for chunk in chunks:
            buffer.write(chunk)
        assert buffer.read(skip=skip) == (b"\r\nabdefg" + b"h" * 9)[skip:], skip
        assert buffer.in_memory == 0 and not buffer.on_disk
