"""The pickup folder (state_dir/pickup): where `mailappliance sendmail` leaves mail and the daemon takes it in.

Why a folder: a cron job must be able to send mail while the daemon is stopped or restarting.
The command only writes a file (temporary name, fsync, rename); the daemon drains the folder at
start and every second, hands each message to intake.py, the path SMTP takes too (recipients
resolved, checks, masquerading, a Received line, the durable queue), and deletes the file only
after the queue's put has fired. A file it cannot use is moved to pickup/bad/ with a log line,
never dropped.

A pickup file is one JSON line (sender, recipients) followed by the message in wire form.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from appliance import address, maillog
from appliance.durable import fsync_dir
from appliance.errors import TemporaryFailure
from appliance.intake import Arrival, Intake
from appliance.replies import SMTPReplyError

FOLDER = "pickup"
BAD = "bad"
SUFFIX = ".msg"
FOLDER_MODE = 0o1733      # anyone may drop a file in; nobody but the owner may list or remove others'
FILE_MODE = 0o644         # the daemon (another user) reads it; others cannot learn the random name
BATCH = 100               # files taken per tick
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


class BadPickupFile(Exception):
    """A pickup file the daemon will never be able to use: it goes to pickup/bad/."""


# --- the file format, shared by the sendmail command and the daemon --------------------------------

def wire_form(message: bytes) -> bytes:
    """CRLF line ends throughout, ending with one (what the queue and SMTP expect)."""
    message = _LINE_ENDS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") or not message else message + b"\r\n"


def encode(sender: str, recipients: list[str], message: bytes) -> bytes:
    head = json.dumps({"sender": sender, "recipients": recipients}, separators=(",", ":"))
    return head.encode("utf-8") + b"\n" + message


def decode(data: bytes) -> tuple[str, list[str], bytes]:
    """(sender, recipients, message); BadPickupFile when it is not a pickup file."""
    head, newline, message = data.partition(b"\n")
    try:
        fields = json.loads(head) if newline else None
    except (ValueError, UnicodeDecodeError):
        fields = None
    if not isinstance(fields, dict):
        raise BadPickupFile("no envelope line")
    sender, recipients = fields.get("sender"), fields.get("recipients")
    if not isinstance(sender, str) or (sender and not address.is_valid(sender)):
        raise BadPickupFile(f"bad sender {sender!r}")
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
        raise BadPickupFile("no recipients")
    return sender, recipients, message


def write(folder: str, sender: str, recipients: list[str], message: bytes) -> str:
    """Leave one message in the pickup folder, atomically and durably; returns the file's path.

    Written under a dot-name the daemon ignores, fsynced, then renamed: the daemon sees a whole
    file or none, and a file that is there survives a crash. Any OSError means the message was
    not left (the temporary file is removed), so the caller may say "not sent" and a retry
    cannot send it twice.

    A local user may write into the folder (mode 1733) but not read it, so it cannot fsync the
    folder. The file is therefore fsynced a second time after the rename: on journaling file
    systems (ext4, XFS) that commits the journal holding the rename too. Postfix's postdrop makes
    the same bet for its maildrop folder. The folder is fsynced as well whenever we may read it.
    """
    name = f"{time.time_ns()}.{os.getpid()}.{secrets.token_hex(8)}"
    tmp, final = os.path.join(folder, f".{name}.tmp"), os.path.join(folder, name + SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)            # whatever the user's umask
        view = memoryview(encode(sender, recipients, message))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.rename(tmp, final)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        os.fsync(fd)
    except OSError:
        os.unlink(final)                    # not known to be durable: take it back, the caller says so
        raise
    finally:
        os.close(fd)
    _sync_folder_if_readable(folder)
    return final


def _sync_folder_if_readable(folder: str) -> None:
    try:
        fsync_dir(folder)
    except PermissionError:
        pass        # a local user in the write-only folder: the second fsync in write() covers it


# --- disk work for the daemon, run in the pool ------------------------------------------------------

@dataclass
class Picked:
    name: str
    user: str              # who wrote it (the file's owner), for the log and the Received line
    data: bytes


def list_ready(folder: str) -> list[str]:
    """Finished pickup files, oldest first (names start with the time); dot-files are still being written."""
    names = [n for n in os.listdir(folder) if n.endswith(SUFFIX) and not n.startswith(".")]
    return sorted(names)[:BATCH]


def read(folder: str, name: str) -> Picked:
    """Read one pickup file; a link or anything but a plain file is refused (BadPickupFile).

    The folder is writable by every local user, so a symlink or hard link there could point
    the daemon at a file its writer may not read.
    """
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadPickupFile(f"cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise BadPickupFile("not a plain file with one link")
        data = f.read()
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    return Picked(name, user, data)


def remove(folder: str, name: str) -> None:
    os.unlink(os.path.join(folder, name))


def set_aside(folder: str, name: str) -> str:
    """Move an unusable file to pickup/bad/ (same name), where an operator can look at it."""
    target = os.path.join(folder, BAD, name)
    os.rename(os.path.join(folder, name), target)
    return target


def prepare_folder(folder: str) -> None:
    """Create pickup/ (mode 1733) and pickup/bad/ (0700) when missing; fix the mode when we own them."""
    os.makedirs(os.path.join(folder, BAD), mode=0o700, exist_ok=True)
    if os.stat(folder).st_uid == os.geteuid():
        os.chmod(folder, FOLDER_MODE)


# --- the daemon side -------------------------------------------------------------------------------

class PickupService(Service):
    """Drains the pickup folder at start and every `interval` seconds into the intake.

    Each message is taken in as a submission from a trusted local user: recipients are resolved
    with the sender an insider (aliases and remote recipients allowed), masquerading applies, and
    the Received line names the file's owner. Recipients that do not exist are bounced by the
    intake, as the sendmail command cannot refuse them.
    """

    name = "pickup"

    def __init__(self, folder: str, intake: Intake, reactor: Any, pool: Any, *, max_message_size: int,
                 interval: float = 1.0) -> None:
        self._folder = folder
        self._intake = intake
        self._reactor = reactor
        self._pool = pool
        self._max_size = max_message_size
        self._interval = interval
        self._loop = LoopingCall(self.drain)
        self._loop.clock = reactor
        self._draining: defer.Deferred | None = None

    def use(self, intake: Intake, max_message_size: int) -> None:
        """After a reload: the next messages picked up go through the new intake and size limit."""
        self._intake = intake
        self._max_size = max_message_size

    def startService(self) -> None:
        super().startService()
        try:
            prepare_folder(self._folder)
        except OSError as e:
            maillog.error("pickup folder unusable", folder=self._folder, reason=e.strerror)
        self._loop.start(self._interval, now=True)

    def stopService(self) -> defer.Deferred | None:
        """Stop polling; a drain in progress finishes (a put not yet made leaves its file for next time)."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self._draining

    def drain(self) -> defer.Deferred:
        """Take in every ready file (up to BATCH); never fails, so the LoopingCall keeps running."""
        d = self._in_pool(list_ready, self._folder)
        d.addCallback(lambda names: defer.gatherResults([self._take(name) for name in names]))
        d.addErrback(self._drain_failed)
        d.addBoth(self._drained)
        self._draining = d
        return d

    def _drained(self, _: object) -> None:
        self._draining = None

    @staticmethod
    def _drain_failed(failure: Failure) -> None:
        if failure.check(OSError):
            maillog.error("pickup folder unreadable", reason=failure.getErrorMessage())
        else:
            maillog.log.failure("pickup failed", failure)

    def _in_pool(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _take(self, name: str) -> defer.Deferred:
        d = self._in_pool(read, self._folder, name)
        d.addCallback(lambda picked: defer.ensureDeferred(self._inject(picked)))
        d.addCallback(lambda _: self._in_pool(remove, self._folder, name))
        d.addErrback(self._not_taken, name)
        return d

    def _not_taken(self, failure: Failure, name: str) -> defer.Deferred | None:
        """Set aside what will never be taken (a bad file, a 5xx from a check); keep the rest for the next tick."""
        if failure.check(BadPickupFile) or _refused_for_good(failure):
            d = self._in_pool(set_aside, self._folder, name)
            d.addCallback(lambda where: maillog.error("pickup file set aside", file=name,
                                                      reason=failure.getErrorMessage(), moved_to=where))
            d.addErrback(lambda f: maillog.error("pickup file unusable, cannot move it", file=name,
                                                 reason=failure.getErrorMessage(), problem=f.getErrorMessage()))
            return d
        if failure.check(TemporaryFailure, SMTPReplyError):
            maillog.error("pickup deferred", file=name, reason=failure.getErrorMessage())
        else:
            maillog.log.failure("pickup of {name} failed; the file stays for the next try", failure, name=name)
        return None

    async def _inject(self, picked: Picked) -> None:
        """Hand one file's message to the intake; raises BadPickupFile, TemporaryFailure or a check's SMTPReplyError."""
        sender, given, message = decode(picked.data)
        message = wire_form(message)
        if len(message) > self._max_size:
            raise BadPickupFile(f"{len(message)} bytes is more than [limits] max_message_size")
        recipients, refused = await self._intake.resolve_all(given)
        await self._intake.accept(Arrival(sender=sender, recipients=recipients, refused=refused, message=message,
                                          service="pickup", protocol="local", login=picked.user, insider=True,
                                          submission=True))


def _refused_for_good(failure: Failure) -> bool:
    """A check refused the message with a 5xx: retrying the file would never help."""
    return bool(failure.check(SMTPReplyError)) and failure.value.reply.code >= 500
