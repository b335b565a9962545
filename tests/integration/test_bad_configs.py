"""Every broken configuration in configs/bad/ is refused, with its own error line, by `check` and by twistd.

Each case is a folder: `mailappliance.conf`, `expected` (a substring the error output must hold) and an
optional `setup` naming the certificate to put beside it: absent = a good self-signed pair in tls/,
`none` = no certificate, `mismatch` = a certificate with the key of another one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from appliance import tls

CASES_DIR = os.path.join(os.path.dirname(__file__), "configs", "bad")
CASES = sorted(os.listdir(CASES_DIR))
BINDIR = os.path.dirname(sys.executable)
TWISTD_TIMEOUT = 20


def prepare(case: str, folder) -> tuple[str, str]:
    """Copy the case into `folder`, make its certificate; (config path, expected substring)."""
    shutil.copytree(os.path.join(CASES_DIR, case), folder)
    setup = (folder / "setup").read_text().strip() if (folder / "setup").exists() else ""
    cert, key = str(folder / "tls/cert.pem"), str(folder / "tls/key.pem")
    if setup != "none":
        tls.generate_self_signed("mail.example.test", cert, key)
    if setup == "mismatch":
        tls.generate_self_signed("other.example.test", str(folder / "other.pem"), key)
    return str(folder / "mailappliance.conf"), (folder / "expected").read_text().strip()


def test_there_are_enough_cases():
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES)
def test_check_refuses(case, tmp_path):
    config_path, expected = prepare(case, tmp_path / case)
    result = subprocess.run([os.path.join(BINDIR, "mailappliance"), "--config", config_path, "check"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert all(line.startswith(config_path + ": ") for line in result.stderr.splitlines()), result.stderr


@pytest.mark.parametrize("case", CASES)
def test_twistd_refuses_to_start(case, tmp_path):
    config_path, expected = prepare(case, tmp_path / case)
    result = subprocess.run([os.path.join(BINDIR, "twistd"), "-n", "--pidfile", str(tmp_path / "twistd.pid"),
                             "mailappliance", "--config", config_path],
                            capture_output=True, text=True, timeout=TWISTD_TIMEOUT, cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr, result
