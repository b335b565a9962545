"""Run the appliance's asynchronous parts synchronously: for one-shot commands and unit tests.

Components take a reactor and a thread pool (DESIGN.md); these stand-ins make a
`deferToThreadPool` call finish before it returns, and keep time still until `advance()`.
"""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.failure import Failure


class InlineReactor(Clock):
    """A task.Clock whose callFromThread runs at once (deferToThreadPool reports through it)."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def run_job(on_result, f, *args, **kwargs) -> None:
    """Run one pool job here and report it as ThreadPool.callInThreadWithCallback does: (ok, result)."""
    try:
        result = f(*args, **kwargs)
    except BaseException:
        on_result(False, Failure())
    else:
        on_result(True, result)


class InlinePool:
    """A thread pool stand-in that runs each job at once, in the calling thread."""

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        run_job(on_result, f, *args, **kwargs)
