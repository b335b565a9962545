"""A [listen] port that cannot be bound: `check` finds it, start-up says it in one line, the demo avoids it.

Another mail server on port 25, or a port below 1024 for a user without the privilege, used to
pass `check` and then end start-up with a 35-line traceback.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from appliance import cli, listenbind
from tests.integration.harness import SMTP_SERVICES, Appliance, ApplianceError
from tests.integration.unprivileged import (as_user, mailappliance_argv, public_folder, require_root_and_user,
                                            twistd_argv)


@pytest.fixture
def appliance(tmp_path):
    made = Appliance(str(tmp_path / "appliance"), services=SMTP_SERVICES)
    made.setup()
    yield made
    made.stop()


def hold(port: int, interface: str = "127.0.0.1") -> socket.socket:
    """Another program listening on the port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((interface, port))
    sock.listen(1)
    return sock


def busy_line(appliance: Appliance, name: str = "smtp") -> str:
    port = appliance.ports[name]
    return f"{appliance.config_path}: [listen] {name}: tcp:{port}:interface=127.0.0.1: port {port} is in use"


def test_check_tries_the_binds_and_names_the_busy_port(appliance):
    with hold(appliance.ports["smtp"]):
        result = appliance.cli("check", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", busy_line(appliance) + "\n")


def test_check_tries_the_web_listener_too_and_lists_it(tmp_path):
    web = Appliance(str(tmp_path / "web"), services=("smtp", "web"))
    web.setup()
    with hold(web.ports["web"]):
        result = web.cli("check", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", busy_line(web, "web") + "\n")
    listed = web.cli("check").stdout
    assert f"web         tcp:{web.ports['web']}:interface=127.0.0.1" in listed.splitlines(), listed


def test_start_with_a_busy_port_is_one_line_not_a_traceback(appliance):
    with hold(appliance.ports["submission"]), pytest.raises(ApplianceError):
        appliance.start()
    assert appliance.process.returncode not in (0, None)
    output = open(appliance.output_path, encoding="utf-8").read()
    assert busy_line(appliance, "submission") in output.splitlines()
    assert "Traceback" not in output and "Traceback" not in appliance.log()
    assert len(output.splitlines()) <= 2


def test_check_does_not_count_the_running_servers_own_ports(appliance):
    appliance.start()
    result = appliance.cli("check", check=False)
    assert result.returncode == 0 and "in use" not in result.stdout + result.stderr


@pytest.fixture
def privileged(tmp_path):
    """A config with smtp on port 25, in a folder the unprivileged user can read and write."""
    require_root_and_user()
    folder = public_folder()
    made = Appliance(os.path.join(folder, "appliance"), services=SMTP_SERVICES)
    made.sections["listen"]["smtp"] = "tcp:25:interface=127.0.0.1"
    made.setup()
    subprocess.run(["chown", "-R", "nobody:", made.root], check=True)
    yield made
    shutil.rmtree(folder, ignore_errors=True)


def test_an_unprivileged_check_warns_about_a_port_below_1024(privileged):
    result = as_user([*mailappliance_argv(), "--config", privileged.config_path, "check"])
    assert result.returncode == 0, result
    assert ("warning: [listen] smtp: tcp:25:interface=127.0.0.1: port 25 needs root or CAP_NET_BIND_SERVICE; "
            "not tried, the server must be started with it") in result.stdout.splitlines()


def test_an_unprivileged_start_on_port_25_says_why_in_one_line(privileged):
    result = as_user([*twistd_argv(), "-n", "--pidfile=", f"--logfile={privileged.log_path}", "mailappliance",
                      "--config", privileged.config_path], timeout=30)
    assert result.returncode != 0
    expected = (f"{privileged.config_path}: [listen] smtp: tcp:25:interface=127.0.0.1: "
                "port 25 needs root or CAP_NET_BIND_SERVICE")
    assert expected in (result.stdout + result.stderr).splitlines(), result
    assert "Traceback" not in result.stdout + result.stderr + privileged.log()


def test_the_demo_as_root_does_not_write_a_busy_port_25(tmp_path, capsys):
    require_root_and_user()
    try:
        holder = hold(25, "0.0.0.0")
    except OSError:
        holder = None            # something else holds it already: the very case under test
    try:
        assert cli.main(["demo", str(tmp_path / "demo")]) == 0
    finally:
        if holder is not None:
            holder.close()
    config = (tmp_path / "demo" / "mailappliance.conf").read_text()
    [smtp] = [line for line in config.splitlines() if line.startswith("smtp =")]
    assert smtp != "smtp = tcp:25" and listenbind.address_of(smtp.split("=", 1)[1].strip()).port != 25
    port = listenbind.address_of(smtp.split("=", 1)[1].strip()).port
    assert f"smtp: port 25 is in use; using port {port} on 127.0.0.1 instead" in capsys.readouterr().out
