"""`mailappliance sendmail` run by an ordinary local user (cron jobs, scripts), in the documented layout.

The layout of docs/operations.md: the configuration readable by everybody (its secrets live in
files of their own), the state folder 0751 (others may pass through it, not list it), the pickup
folder 1733 inside. The exit status is the contract with cron and retrying scripts: 0 exactly
when the message is queued, 75 (EX_TEMPFAIL) when it is not, so a retry never duplicates mail.
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.integration.harness import SMTP_SERVICES, Appliance, wait_for
from tests.integration.unprivileged import USER, as_user, mailappliance_argv, public_folder, require_root_and_user

BOB = "bob@example.test"
EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 64, 75, 78


@pytest.fixture
def layout():
    """A running appliance in a folder every user can reach, laid out as docs/operations.md says."""
    require_root_and_user()
    folder = public_folder()
    appliance = Appliance(os.path.join(folder, "appliance"), services=SMTP_SERVICES)
    os.makedirs(appliance.root)
    os.chmod(appliance.root, 0o755)
    appliance.setup()
    os.chmod(appliance.config_path, 0o644)
    appliance.start()
    os.chmod(os.path.join(appliance.root, "var"), 0o751)
    try:
        yield appliance
    finally:
        appliance.stop()
        shutil.rmtree(folder, ignore_errors=True)


def sendmail(appliance: Appliance, *args: str, stdin: str = "Subject: nightly\n\nall fine\n"):
    return as_user([*mailappliance_argv(), "--config", appliance.config_path, "sendmail", *args],
                   input=stdin, cwd="/")


def test_a_local_user_queues_a_message_and_gets_exit_0(layout):
    result = sendmail(layout, BOB)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    [message] = wait_for(lambda: layout.messages(BOB), 10)
    text = message.decode()
    assert f"Return-Path: <{USER}@example.test>" in text and f"(user {USER})" in text
    assert "all fine" in text


def test_a_message_that_cannot_be_queued_exits_75_and_nothing_is_sent(layout):
    os.chmod(os.path.join(layout.root, "var"), 0o750)      # root's folder, closed to others
    result = sendmail(layout, BOB)
    assert result.returncode == EX_TEMPFAIL, result
    assert result.stderr.startswith("mailappliance: not sent: cannot write to ")
    assert "Permission denied" in result.stderr and len(result.stderr.splitlines()) == 1
    os.chmod(os.path.join(layout.root, "var"), 0o751)
    assert os.listdir(os.path.join(layout.root, "var", "pickup")) == ["bad"]
    assert layout.messages(BOB) == []


def test_usage_and_configuration_mistakes_have_their_sysexits_codes(layout):
    result = sendmail(layout)
    assert (result.returncode, result.stderr) == (EX_USAGE, "mailappliance: no recipients: give them as "
                                                            "arguments, or use -t to read To, Cc and Bcc\n")
    os.chmod(layout.config_path, 0o640)
    result = sendmail(layout, BOB)
    assert result.returncode == EX_CONFIG
    assert f"{layout.config_path}: cannot read: Permission denied" in result.stderr
