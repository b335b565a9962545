"""Aliases that pipe into a command or append to a file ([aliases] allow_commands), through the real twistd."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.integration.harness import DOMAIN, SMTP_SERVICES, Appliance, make_message, read_mbox, wait_for


@pytest.fixture
def drop():
    """A folder the command's user can write: nobody when the tests (and so the appliance) run as root.

    Outside tmp_path, whose parents only root may enter.
    """
    folder = tempfile.mkdtemp(prefix="mailappliance-alias-")
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder)


def aliases_text(drop: str, keep: str) -> str:
    return (
        f'archive: |cat > {drop}/archived; echo "$RECIPIENT $SENDER $(id -u) $(pwd)" > {drop}/info\n'
        f"keep: {keep}\n"
        'broken: |echo "no such folder" >&2; exit 1\n'
        "later: |exit 75\n"
        "noisy: |cat; echo 'sh: /opt/secret/filter: not found' >&2; exit 1\n"
    )


@pytest.fixture
def aliases_file(tmp_path, drop):
    path = tmp_path / "aliases"
    path.write_text(aliases_text(drop, str(tmp_path / "kept.mbox")))
    return path


def send(appliance: Appliance, rcpt: str, subject: str) -> None:
    with appliance.smtp() as client:
        client.sendmail("someone@outside.example", [rcpt], make_message(subject, to=rcpt))


def complete_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    return text if text.endswith("\n") else ""


def log_lines(appliance: Appliance, *words: str) -> list[str]:
    return [line for line in appliance.log().splitlines() if all(w in line for w in words)]


def test_pipe_to_a_command_as_an_unprivileged_user(make_appliance, aliases_file, drop):
    appliance = make_appliance(aliases={"file": str(aliases_file), "allow_commands": "yes"},
                               delivery={"nameservers": "127.0.0.1:9"})
    send(appliance, f"archive@{DOMAIN}", "to-the-archive")
    info = wait_for(lambda: complete_file(os.path.join(drop, "info")))
    expected_uid = 65534 if os.geteuid() == 0 else os.geteuid()    # nobody, or the appliance's own user
    assert info.split() == [f"archive@{DOMAIN}", "someone@outside.example", str(expected_uid), "/"]
    with open(os.path.join(drop, "archived"), "rb") as f:
        archived = f.read()
    assert archived.startswith(f"Return-Path: <someone@outside.example>\nDelivered-To: archive@{DOMAIN}\n".encode())
    assert b"Subject: to-the-archive\n" in archived and b"\r" not in archived
    assert wait_for(lambda: log_lines(appliance, " delivered ", f'to="|cat > {drop}/archived;'))


def test_append_to_a_file_in_mbox_format(make_appliance, aliases_file, tmp_path):
    appliance = make_appliance(aliases={"file": str(aliases_file), "allow_commands": "yes"},
                               delivery={"nameservers": "127.0.0.1:9"})
    send(appliance, f"keep@{DOMAIN}", "first-kept")
    send(appliance, f"keep@{DOMAIN}", "second-kept")
    path = str(tmp_path / "kept.mbox")

    found = wait_for(lambda: len(read_mbox(path)) == 2 and read_mbox(path))
    assert [b"Subject: first-kept" in m for m in found].count(True) == 1
    assert all(m.startswith(f"Return-Path: <someone@outside.example>\nDelivered-To: keep@{DOMAIN}\n".encode())
               for m in found)
    assert log_lines(appliance, " delivered ", f"to={path}")


def test_failing_commands_bounce_or_wait_with_their_output(make_appliance, aliases_file):
    appliance = make_appliance(aliases={"file": str(aliases_file), "allow_commands": "yes"},
                               delivery={"nameservers": "127.0.0.1:9"})
    send(appliance, f"broken@{DOMAIN}", "cannot-file")
    send(appliance, f"later@{DOMAIN}", "try-later")
    assert wait_for(lambda: log_lines(appliance, " bounced ", "5.3.0 command failed with status 1: no such folder"))
    assert wait_for(lambda: log_lines(appliance, " deferred ", "4.3.0 command failed with status 75"))


def test_a_bounce_of_a_5_mb_header_block_from_a_noisy_command_is_small(make_appliance, aliases_file):
    appliance = make_appliance(aliases={"file": str(aliases_file), "allow_commands": "yes"},
                               delivery={"nameservers": "127.0.0.1:9"})
    filler = "".join(f"X-Filler-{n}: {'a' * 60}\r\n" for n in range(70_000))      # about 5 MB, headers only
    big = f"From: bob@{DOMAIN}\r\nTo: noisy@{DOMAIN}\r\nSubject: header-bomb\r\n{filler}".encode()
    with appliance.smtp(timeout=60) as client:
        client.sendmail(f"bob@{DOMAIN}", [f"noisy@{DOMAIN}"], big)
    [bounce] = wait_for(lambda: [m for m in appliance.messages(f"bob@{DOMAIN}") if b"multipart/report" in m], 30)
    assert len(big) > 5_000_000 and len(bounce) < 60_000
    assert b"Subject: header-bomb" in bounce and b"text/rfc822-headers" in bounce
    [reason] = [line for line in bounce.split(b"\n") if line.startswith(b"Diagnostic-Code:")]
    assert reason.startswith(b"Diagnostic-Code: X-mailappliance; 5.3.0 command failed with status 1: ")
    assert len(reason) < 300


def test_commands_are_refused_unless_allowed(tmp_path, aliases_file, drop):
    """Without allow_commands no command runs: `check` says so and exits 1; the daemon still starts
    (a typo must not stop mail for everybody) and defers those names 451 4.3.0 until fixed."""
    appliance = Appliance(str(tmp_path / "off"), services=SMTP_SERVICES,
                          overrides={"aliases": {"file": str(aliases_file)}})
    appliance.setup()
    expected = (f"{aliases_file}:1: commands and files are not allowed: |cat > {drop}/archived;"
                f' echo "$RECIPIENT $SENDER $(id -u) $(pwd)" > {drop}/info'
                " (set [aliases] allow_commands = yes to allow them)")
    result = appliance.cli("check", check=False)
    said = result.stdout + result.stderr
    assert result.returncode == 1
    assert expected in said
    assert f"{aliases_file}:2: commands and files are not allowed: {tmp_path}/kept.mbox" in said
    try:
        appliance.start()
        with appliance.smtp() as client:
            client.ehlo()
            client.mail("someone@outside.example")
            for name in ("archive", "keep"):
                code, text = client.rcpt(f"{name}@{DOMAIN}")
                assert (code, text[:5]) == (451, b"4.3.0")
        assert f"{aliases_file}:1: commands and files are not allowed" in appliance.log()
        assert "deferred at RCPT with 4.3.0" in appliance.log()
    finally:
        appliance.stop()
    assert os.listdir(drop) == [] and not os.path.exists(tmp_path / "kept.mbox")
