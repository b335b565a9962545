"""Failures carry their RFC 3463 status; temporary or permanent is read off it and can never contradict it."""
from __future__ import annotations

import pytest

from appliance.errors import (ApplianceError, DirectoryUnavailable, MailboxUnavailable, NoSuchMailbox, PermanentFailure,
                              QueueWriteError, TemporaryFailure, is_status)


@pytest.mark.parametrize("error, status, temporary, text", [
    (TemporaryFailure("4.4.3", "MX lookup failed"), "4.4.3", True, "4.4.3 MX lookup failed"),
    (PermanentFailure("5.1.10", "null MX"), "5.1.10", False, "5.1.10 null MX"),
    (TemporaryFailure("4.3.0"), "4.3.0", True, "4.3.0"),
    (DirectoryUnavailable("ldap down"), "4.4.3", True, "ldap down"),
    (QueueWriteError("disk full"), "4.3.0", True, "disk full"),
    (MailboxUnavailable("mailbox locked"), "4.2.0", True, "mailbox locked"),
    (MailboxUnavailable("quota", status="4.2.2"), "4.2.2", True, "quota"),
    (NoSuchMailbox("no such user"), "5.1.1", False, "no such user"),
])
def test_status_and_temporary(error, status, temporary, text):
    assert error.status == status and error.temporary is temporary
    assert isinstance(error, TemporaryFailure if temporary else PermanentFailure)
    assert str(error) == text        # named conditions read as their text alone, as operators saw them before


def test_text_is_kept_apart_from_the_status():
    error = PermanentFailure("5.3.0", "command failed with status 1")
    assert (error.status, error.text) == ("5.3.0", "command failed with status 1")
    assert DirectoryUnavailable("ldap down").text == "ldap down"


@pytest.mark.parametrize("make", [
    lambda: TemporaryFailure("5.1.1", "permanent status on a temporary failure"),
    lambda: PermanentFailure("4.4.3", "temporary status on a permanent failure"),
    lambda: NoSuchMailbox("gone", status="4.1.1"),
    lambda: MailboxUnavailable("busy", status="5.2.2"),
    lambda: TemporaryFailure("4.4.3 text in the status"),
    lambda: TemporaryFailure("2.0.0", "not a failure"),
    lambda: ApplianceError("4.4", "too short"),
])
def test_a_status_that_contradicts_its_class_or_is_malformed_is_refused(make):
    with pytest.raises(ValueError):
        make()


def test_a_class_whose_default_status_contradicts_its_base_is_refused():
    with pytest.raises(ValueError):
        class Wrong(TemporaryFailure):
            status = "5.0.0"
    with pytest.raises(ValueError):
        class AlsoWrong(PermanentFailure):
            status = "4.0.0"


@pytest.mark.parametrize("text, ok", [
    ("4.4.3", True), ("5.1.10", True), ("5.100.100", True), ("4.0.0", True),
    ("2.0.0", False), ("5.1", False), ("5.1.1000", False), ("5.a.1", False), ("5.1.1 ", False), ("", False),
    ("5.١.1", False),
])
def test_is_status(text, ok):
    assert is_status(text) is ok
