"""Failure taxonomy: every failure carries its RFC 3463 status, and the status says temporary or permanent."""
from __future__ import annotations


def is_status(text: str) -> bool:
    """True for an RFC 3463 enhanced status of a failure: 4.x.y or 5.x.y (x, y of 1 to 3 digits)."""
    parts = text.split(".")
    return (len(parts) == 3 and parts[0] in ("4", "5")
            and all(1 <= len(part) <= 3 and part.isdigit() and part.isascii() for part in parts[1:]))


class ApplianceError(Exception):
    """Base of our own failures: `status` ("4.4.3") and `text` travel together, never one inside the other.

    Whether a failure is temporary (retry, 4xx) or permanent (bounce, 5xx) is read off the
    status's class digit, so the two can never disagree; TemporaryFailure and PermanentFailure
    refuse a status of the other class, as replies.Reply refuses a code whose class differs.
    `str()` reads "status text", the form the queue records and the bounce reports.
    """

    status_class: str = ""        # "4" or "5" in the two branches below; "" accepts either
    status: str = "4.3.0"         # the default of a class constructed with its text only

    def __init__(self, status: str, text: str = "") -> None:
        _check(type(self), status)
        super().__init__(status, text)
        self.status = status
        self.text = text

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _check(cls, cls.status)

    @property
    def temporary(self) -> bool:
        """Retry later (4.x.y) rather than bounce (5.x.y)."""
        return self.status.startswith("4")

    def __str__(self) -> str:
        return f"{self.status} {self.text}" if self.text else self.status


def _check(cls: type[ApplianceError], status: str) -> None:
    """Refuse a malformed status, or one whose class contradicts the error class's."""
    if not is_status(status):
        raise ValueError(f"{cls.__name__}: {status!r} is not an RFC 3463 failure status")
    if cls.status_class and status[0] != cls.status_class:
        raise ValueError(f"{cls.__name__} needs a {cls.status_class}.x.y status, not {status}")


class TemporaryFailure(ApplianceError):
    """Could not do it now (4.x.y): the queue retries with backoff."""

    status_class = "4"
    status = "4.3.0"


class PermanentFailure(ApplianceError):
    """Will never work (5.x.y): the queue bounces the recipient."""

    status_class = "5"
    status = "5.0.0"


class _Condition:
    """A named condition: raised with its text only and the class's status (which a raiser may override).

    Its `str()` is the text alone, as before statuses were carried: operators see these texts
    in CLI messages and log lines, where the status would be noise.
    """

    status: str
    text: str

    def __init__(self, text: str = "", status: str | None = None) -> None:
        ApplianceError.__init__(self, status or type(self).status, text)  # type: ignore[arg-type]
        self.args = (text,)

    def __str__(self) -> str:
        return self.text


class DirectoryUnavailable(_Condition, TemporaryFailure):
    """The directory could not tell: never to be read as "unknown user" or "bad password"."""

    status = "4.4.3"


class QueueWriteError(_Condition, TemporaryFailure):
    """The spool could not make the message durable: SMTP answers 451 4.3.0."""

    status = "4.3.0"


class MailboxUnavailable(_Condition, TemporaryFailure):
    """The mailbox could not be written now (disk full, lock held): retried."""

    status = "4.2.0"


class NoSuchMailbox(_Condition, PermanentFailure):
    """The recipient is no longer known at delivery time."""

    status = "5.1.1"


class ConfigError(Exception):
    """A configuration problem. `problems` holds one `FILE: [section] key: what is wrong` line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)
