"""A few threads that run blocking jobs handed over through one SimpleQueue: the delivery writers.

Why not the disk ThreadPool: Twisted's ThreadPool hands every job through its coordinator (a
Team: locks, a Condition, a dozen Python calls on the reactor thread, more on the worker when
it finishes), and a local delivery is one such job per message or two. Here a job costs the
reactor one C call (SimpleQueue.put) and a worker one C call to take it, so the threads that
hold the GIL do less per delivered message. The interface is the part of ThreadPool that
`deferToThreadPool` uses (`callInThreadWithCallback`), plus `max` (how many jobs can run at
once, which FileStore reads to cut one turn's deliveries into jobs).

The threads start with the first job and are daemons: a job cut short by the process ending
is a delivery whose queue entry is not marked done, so the queue delivers it again at the
next start, exactly as after kill -9. `stop` lets them end after the jobs already handed over.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue

from appliance.inline import run_job


class JobThreads:
    """`count` threads named `name-N` taking jobs from one queue, first in first out."""

    def __init__(self, name: str, count: int) -> None:
        if count < 1:
            raise ValueError("JobThreads needs at least one thread")
        self.name = name
        self.max = count
        self._jobs: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def callInThreadWithCallback(self, on_result: Callable, f: Callable, *args: object, **kwargs: object) -> None:
        """Run f(*args, **kwargs) in one of the threads; then on_result(True, value) or (False, Failure)."""
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, name=f"{self.name}-{n}", daemon=True)
                             for n in range(self.max)]
            for thread in self._threads:
                thread.start()
        self._jobs.put((on_result, f, args, kwargs))

    def stop(self) -> list[threading.Thread]:
        """Let every thread end after the jobs already handed over; returns them (for join)."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        return threads

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            on_result, f, args, kwargs = item
            run_job(on_result, f, *args, **kwargs)
