"""Failure taxonomy: every failure is either temporary (try again later) or permanent (bounce/refuse)."""
from __future__ import annotations


class ApplianceError(Exception):
    """Base of our own errors. `enhanced` is the RFC 3463 status the SMTP side reports."""

    temporary: bool = True
    enhanced: str = "4.3.0"


class TemporaryFailure(ApplianceError):
    """Could not do it now; the queue retries with backoff."""

    temporary = True
    enhanced = "4.3.0"


class PermanentFailure(ApplianceError):
    """Will never work; the queue bounces the recipient."""

    temporary = False
    enhanced = "5.0.0"


class DirectoryUnavailable(TemporaryFailure):
    """The directory could not tell: never to be read as "unknown user" or "bad password"."""

    enhanced = "4.4.3"


class QueueWriteError(TemporaryFailure):
    """The spool could not make the message durable: SMTP answers 451 4.3.0."""

    enhanced = "4.3.0"


class MailboxUnavailable(TemporaryFailure):
    """The mailbox could not be written now (disk full, lock held): retried."""

    enhanced = "4.2.0"


class NoSuchMailbox(PermanentFailure):
    """The recipient is no longer known at delivery time."""

    enhanced = "5.1.1"


class ConfigError(Exception):
    """A configuration problem. `problems` holds one `FILE: [section] key: what is wrong` line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)
