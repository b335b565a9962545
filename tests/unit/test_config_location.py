"""Which configuration file the commands read: --config, else MAILAPPLIANCE_CONFIG, else /etc/mailappliance.

An admin with the file elsewhere sets the variable once (a shell profile, a cron file) instead
of repeating --config on every command; and a missing file says how to choose another.
"""
from __future__ import annotations

import io
import sys

import pytest
from twisted.python import usage

from appliance import cli, config, tap, tls

CONF = """\
[appliance]
hostname = {hostname}
domains = example.test
state_dir = var

[listen]
smtp = tcp:2525:interface=127.0.0.1
"""
HINT = "; choose the file with --config PATH or the environment variable MAILAPPLIANCE_CONFIG"


@pytest.fixture
def two_configs(tmp_path):
    paths = {}
    for name in ("env", "option"):
        path = tmp_path / name / "mailappliance.conf"
        path.parent.mkdir()
        path.write_text(CONF.format(hostname=f"{name}.example.test"))
        tls.generate_self_signed(f"{name}.example.test", str(path.parent / "tls" / "cert.pem"),
                                 str(path.parent / "tls" / "key.pem"))
        paths[name] = str(path)
    return paths


def check(capsys, *argv: str) -> tuple[int, str, str]:
    sys.stdin = io.StringIO("")
    code = cli.main([*argv, "check"])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_environment_variable_names_the_file(capsys, monkeypatch, two_configs):
    monkeypatch.setenv("MAILAPPLIANCE_CONFIG", two_configs["env"])
    code, out, _ = check(capsys)
    assert code == 0 and out.startswith(f"{two_configs['env']}: OK\nhostname    env.example.test\n")


def test_the_option_wins_over_the_environment_variable(capsys, monkeypatch, two_configs):
    monkeypatch.setenv("MAILAPPLIANCE_CONFIG", two_configs["env"])
    code, out, _ = check(capsys, "--config", two_configs["option"])
    assert code == 0 and "hostname    option.example.test" in out


def test_an_unreadable_default_says_how_to_choose_another(capsys, monkeypatch):
    monkeypatch.delenv("MAILAPPLIANCE_CONFIG", raising=False)
    code, _, err = check(capsys)
    assert (code, err) == (1, f"{config.DEFAULT_PATH}: cannot read: No such file or directory{HINT}\n")


def test_an_empty_variable_means_the_default(capsys, monkeypatch):
    monkeypatch.setenv("MAILAPPLIANCE_CONFIG", "")
    assert check(capsys)[2].startswith(f"{config.DEFAULT_PATH}: cannot read")


def test_twistd_reads_the_variable_too_and_its_option_wins(monkeypatch, two_configs):
    monkeypatch.setenv("MAILAPPLIANCE_CONFIG", two_configs["env"])
    options = tap.Options()
    options.parseOptions([])
    assert options.loaded.appliance.hostname == "env.example.test"
    options = tap.Options()
    options.parseOptions(["--config", two_configs["option"]])
    assert options.loaded.appliance.hostname == "option.example.test"


def test_twistd_names_both_ways_when_the_file_is_missing(monkeypatch):
    monkeypatch.delenv("MAILAPPLIANCE_CONFIG", raising=False)
    with pytest.raises(usage.UsageError) as caught:
        tap.Options().parseOptions([])
    assert f"{config.DEFAULT_PATH}: cannot read: No such file or directory{HINT}" in str(caught.value)
