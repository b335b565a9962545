"""Every zope Interface shared between services, with what each outcome means.

All results are Deferreds. A failure is one of appliance.errors: temporary (retry, 4xx) or
permanent (bounce, 5xx). A directory that cannot answer fails with DirectoryUnavailable and is
never taken for "unknown user" or "wrong password".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class UserRecord:
    """What the directory knows of one user."""

    address: str                                 # primary address, normalised: the login and mailbox key
    addresses: frozenset[str] = field(default_factory=frozenset)  # every address that is theirs, primary included
    shared_secret: str | None = None             # cleartext-equivalent secret for CRAM-MD5/APOP, when stored
    enabled: bool = True
    quota: int | None = None                     # own storage limit in bytes, 0 = unlimited; None = [storage] quota
    # A fingerprint of the stored password (never the password, never the hash itself): it
    # changes whenever the password does, so the credential cache (appliance/credcache.py) drops
    # an old password at once. "" when the directory cannot tell (then only the cache's TTL).
    credential: str = field(default="", repr=False, compare=False)


class IDirectory(Interface):
    """Users and their passwords (file directory, or LDAP)."""

    supports_shared_secrets = Attribute("True when some users may hold a secret for CRAM-MD5/APOP.")

    def lookup(address: str):
        """Deferred[UserRecord | None] for an address (primary or extra); None = no such user."""

    def authenticate(login: str, password: str):
        """Deferred[UserRecord | None]; None = unknown login, wrong password or disabled user.

        Always the full check (scrypt, an LDAP bind): the credential cache sits in front of it,
        in appliance.realm.DirectoryChecker, keyed by the record `lookup` gives."""


class IMailUser(Interface):
    """The avatar of an SMTP AUTH login: the user's UserRecord (who may send as which addresses)."""


class IMaildrop(Interface):
    """The avatar of a POP3 login: one session's snapshot of the user's maildrop (RFC 1939)."""


class IAccount(Interface):
    """The avatar of an IMAP login: the user's folders."""


class IQueue(Interface):
    """The durable spool."""

    def put(envelope, message: bytes):
        """Deferred[None] that fires only after message and envelope are written and fsynced.

        Only then may SMTP answer 250. Fails with QueueWriteError otherwise.
        """


class ICourier(Interface):
    """Delivers one recipient of a queued message."""

    def deliver(envelope, recipient, message: bytes):
        """Deferred[str] (where it went, for the log) or a TemporaryFailure/PermanentFailure."""


class IMailStore(Interface):
    """A mailbox format (Maildir or mbox); nothing becomes visible before it is complete."""

    def deliver(user: UserRecord, message: bytes, sender: str, folder: str = "", fallback: bytes | None = None):
        """Deferred[str]: the path written. Fails with MailboxUnavailable (retry) when it cannot write.

        `message` is in wire form (CRLF line ends, Return-Path and Delivered-To already on top);
        the store converts to its own on-disk form. `sender` is the envelope sender ("" for <>).
        `folder` ("" = INBOX) names a folder to deliver into when the user has it (Junk, made at
        the first IMAP login); a user without it gets the message in INBOX, as `fallback` when given.
        """

    def path_for(user: UserRecord) -> str:
        """The mailbox path of a user, from the [storage] path template."""

    def account(path: str):
        """The folders of the mailbox at `path`, for IMAP (an appliance.store.account.Account).

        Blocking calls only (run them in the pool); the format stays the store's business.
        """

    def open_maildrop(path: str):
        """Deferred[Maildrop]: a POP3 snapshot of the INBOX at `path`, the same messages IMAP sees.

        Fails with MailboxUnavailable when the mailbox stays locked by a writer.
        """

    def open_account(path: str):
        """Deferred[Account]: `account(path)` with the special-use folders made, in the pool (IMAP login)."""


class IAliasResolver(Interface):
    """aliases(5) expansion, reloaded atomically."""

    def resolve(address: str):
        """A list of final recipient addresses, or None when the address is not an alias."""
