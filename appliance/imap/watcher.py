"""The FolderWatcher: wakes the sessions idling on a folder whenever the folder changes.

RFC 2177 wants changes reported to an idling client promptly. Two sources, one path:
- changes made in this process (another IMAP session's STORE, APPEND, EXPUNGE, COPY/MOVE, a
  POP3 QUIT, delivery's rescan) publish a new Snapshot on the shared Folder, which tells us at
  once (Folder.listen);
- changes made by other programs (procmail, mutt, a second server) are found by polling a few
  stat calls a second per watched folder, rescanning only when its files changed.
Either way every idler is told, and each compares the folder's state with the snapshot ITS
client has seen (SelectedCommands.folder_changed): only the session knows what it has reported.
"""
from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import task, threads
from twisted.python.failure import Failure

from appliance import maillog
from appliance.imap.backend import Folder

POLL_BATCH = 100                # folders polled in one pool job
IDLE_POLL = 1.0                 # seconds between checks of an idling folder (RFC 2177: new mail within 2 s)


class Idler(Protocol):
    """What the watcher needs of a session."""

    def folder_changed(self) -> None:
        """The folder was polled or changed: report to the client whatever it has not been told yet."""


class FolderWatcher:
    """Polls the folders that sessions are idling on and listens to their changes; tells those sessions.

    One timer for the whole server; each folder is checked with a few stat calls in the pool and
    rescanned only when its files changed.
    """

    def __init__(self, reactor: Any, pool: Any, interval: float = IDLE_POLL):
        self._reactor = reactor
        self._pool = pool
        self._watchers: dict[Folder, set[Idler]] = {}
        self._listeners: dict[Folder, Any] = {}
        self._busy: set[Folder] = set()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._interval = interval

    def watch(self, folder: Folder, session: Idler) -> None:
        if folder not in self._watchers:
            # Called in whichever thread changed the folder, holding the folder's lock: hop to the
            # reactor, and tell the sessions in a later turn, after the lock is released.
            listener = self._listeners[folder] = lambda: self._reactor.callFromThread(
                self._reactor.callLater, 0, self._checked, None, folder)
            folder.listen(listener)
        self._watchers.setdefault(folder, set()).add(session)
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def unwatch(self, folder: Folder, session: Idler) -> None:
        sessions = self._watchers.get(folder)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._watchers[folder]
                folder.unlisten(self._listeners.pop(folder))
        if not self._watchers and self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        # Folders go to the pool POLL_BATCH at a time: 10,000 users idling made 10,000 thread
        # hand-offs a second, each fighting the reactor for the GIL.
        due = [folder for folder in self._watchers if folder not in self._busy]
        for start in range(0, len(due), POLL_BATCH):
            batch = due[start:start + POLL_BATCH]
            self._busy.update(batch)
            d = threads.deferToThreadPool(self._reactor, self._pool, _poll, batch)
            d.addCallback(self._polled, batch)
            d.addErrback(lambda failure: maillog.log.failure("IMAP folder poll failed", failure))
            d.addBoth(lambda _, batch=batch: self._busy.difference_update(batch))

    def _polled(self, problems: list[Failure], batch: list[Folder]) -> None:
        for problem in problems:
            maillog.log.failure("IMAP folder poll failed", problem)
        for folder in batch:
            self._checked(None, folder)

    def _checked(self, _: None, folder: Folder) -> None:
        for session in list(self._watchers.get(folder, ())):
            session.folder_changed()


def _poll(folders: list[Folder]) -> list[Failure]:
    """Blocking: _refresh_if_changed for each; one folder that cannot be read stops no other."""
    problems = []
    for folder in folders:
        try:
            _refresh_if_changed(folder)
        except Exception:
            problems.append(Failure())
    return problems


def _refresh_if_changed(folder: Folder) -> None:
    """Blocking: rescan `folder` if its files changed (delivery, other programs)."""
    if folder.changed():
        folder.refresh()
