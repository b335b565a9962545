"""appliance.jobthreads: the delivery writers' threads, with real threads."""
from __future__ import annotations

import os
import threading

import pytest

from appliance.jobthreads import JobThreads
from appliance.tap import delivery_writer_count, usable_cores


def test_jobs_run_on_the_named_threads_at_once_and_failures_are_reported():
    threads = JobThreads("writer", 3)
    barrier = threading.Barrier(3, timeout=10)
    results: list = []
    done = threading.Semaphore(0)

    def job(n):
        barrier.wait()                  # three jobs inside at once, or the barrier breaks
        if n == 1:
            raise OSError("disk full")
        return n, threading.current_thread().name

    def report(ok, value):
        results.append((ok, value))
        done.release()

    for n in range(3):
        threads.callInThreadWithCallback(report, job, n)
    for _ in range(3):
        assert done.acquire(timeout=10)
    good = sorted(value for ok, value in results if ok)
    assert [n for n, _ in good] == [0, 2]
    assert all(name.startswith("writer-") for _, name in good)
    assert [value.check(OSError) for ok, value in results if not ok] == [OSError]
    for thread in threads.stop():
        thread.join(10)
        assert not thread.is_alive()


def test_stop_ends_the_threads_after_the_jobs_handed_over():
    threads = JobThreads("writer", 2)
    ran: list = []
    for n in range(5):
        threads.callInThreadWithCallback(lambda ok, value: ran.append(value), lambda n=n: n)
    for thread in threads.stop():
        thread.join(10)
        assert not thread.is_alive()
    assert sorted(ran) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("cores, maildir_writers, mbox_writers",
                         [(None, 1, 2), (1, 1, 2), (2, 1, 2), (3, 2, 2), (5, 4, 4), (64, 4, 4)])
def test_delivery_writers_leave_one_core_to_the_reactor(cores, maildir_writers, mbox_writers):
    """mbox keeps a second writer: a mailbox locked by a mail client holds up one writer, not all."""
    assert delivery_writer_count(cores, "maildir") == maildir_writers
    assert delivery_writer_count(cores, "mbox") == mbox_writers


def test_writers_count_the_cores_this_process_may_use():
    """Under `taskset -c 0` (or a cpuset of one core) there is no core to spare: one writer."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == len(before)
