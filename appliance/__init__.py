"""mailappliance: SMTP, submission, a durable queue, POP3 and IMAP in one twistd process."""

__version__ = "0.1.0"
