"""The top MultiService: named children started in dependency order, SIGHUP reload, clean stop."""
from __future__ import annotations

import gc
import signal
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.python.threadpool import ThreadPool

from appliance import config as configmod, maillog


class ThreadPoolService(service.Service):
    """A bounded thread pool for blocking work (disk, password hashing), started and stopped with us."""

    def __init__(self, name: str, maxthreads: int) -> None:
        self.setName(f"pool-{name}")
        self.pool = ThreadPool(minthreads=0, maxthreads=maxthreads, name=name)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class ApplianceService(service.MultiService):
    """Every service of one appliance. Children start in the order added and stop in reverse."""

    def __init__(self, config: configmod.Config, reactor: Any, tls: Any, aliases: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.tls = tls
        self.aliases = aliases
        self.reloader: Callable[[], object] | None = None    # appliance.reload.Reloader, set by tap.build

    def privilegedStartService(self) -> None:
        """Catch SIGHUP before the listeners bind: a reload sent as soon as a port answers must
        not kill the process (SIGHUP's default action); it runs once the reactor runs, after
        every service has started."""
        self._catch_sighup()
        super().privilegedStartService()

    def startService(self) -> None:
        for fields in configmod.summarise(self.config):    # every setting: `mailappliance check --verbose`
            maillog.emit("config", **fields)
        for problem, action in getattr(self.aliases, "problems", None) or ():
            # Started anyway: only the names concerned are refused or deferred, everybody else gets mail.
            maillog.error("aliases-problem", problem=problem, action=action)
        super().startService()
        self._catch_sighup()        # in case privilegedStartService was not called (not twistd)
        # Once the reactor runs: twistd starts the services before reactor.run(), and only then are
        # the signal handlers in place. A script that waits for this line and sends SIGTERM gets an
        # orderly shutdown, not the default action (death with no shutdown lines).
        self.reactor.callWhenRunning(maillog.emit, "started", hostname=self.config.appliance.hostname,
                                     services=",".join(s.name for s in self if s.name.startswith("listen-")))
        freeze_startup_objects()

    def _catch_sighup(self) -> None:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))

    def reload(self) -> None:
        """SIGHUP: the whole configuration again, all of it or none of it (appliance.reload)."""
        if self.reloader is not None:
            self.reloader()


_frozen = False


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, classes, configuration: hundreds of thousands of
    objects that live as long as the process) out of the garbage collector's sight, once.

    Every full collection otherwise walks them all again; the collections that the per-message
    Deferreds and records trigger were 3% of the SMTP reactor's time in the ingest profile.
    Collected first, so no garbage is kept for ever (the gc module's advice for gc.freeze).
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
