"""Run a command as a real unprivileged local user, the way a cron job of an ordinary user runs.

The tests run as root; `nobody` (present on every Debian system) is the other user. Missing
means: not root, or no setpriv. That fails under CI (a skip would hide what these tests check)
and skips elsewhere, as require_program does.
"""
from __future__ import annotations

import os
import pwd
import site
import subprocess
import sys
import tempfile

import pytest

from tests.integration.harness import require_program

USER = "nobody"


def require_root_and_user() -> pwd.struct_passwd:
    """The unprivileged account; fails under CI, skips elsewhere, when the tests cannot switch to it."""
    if os.geteuid() != 0:
        message = "switching to another user needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    require_program("setpriv")
    return pwd.getpwnam(USER)


def public_folder() -> str:
    """A new folder every user can reach (pytest's tmp_path is below root's 0700 folder)."""
    folder = tempfile.mkdtemp(prefix="mailappliance-public-", dir="/tmp")
    os.chmod(folder, 0o755)
    return folder


def as_user(argv: list[str], user: str = USER, **kwargs) -> subprocess.CompletedProcess:
    """Run argv as `user` (its uid, primary group, no other groups), with a plain environment."""
    account = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": account.pw_dir, "USER": user, "LOGNAME": user,
           "LANG": "C.UTF-8", **kwargs.pop("env", {})}
    command = [require_program("setpriv"), f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
               "--clear-groups", "--", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=kwargs.pop("timeout", 60),
                          **kwargs)


def mailappliance_argv(user: str = USER) -> list[str]:
    """`mailappliance` as `user` can run it."""
    return python_argv("from appliance.cli import main; raise SystemExit(main())", user)


def twistd_argv(user: str = USER) -> list[str]:
    """`twistd` as `user` can run it (the worktree's plugin is found through the venv's .pth file)."""
    return python_argv("from twisted.scripts.twistd import run; run()", user)


def python_argv(main: str, user: str = USER) -> list[str]:
    """Run `main` with this Python if `user` may execute it, else with the system python3, importing
    the worktree's appliance package and the venv's site-packages either way (the venv's own python
    may be a link into a root-only folder, as with pyenv)."""
    paths = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
             *site.getsitepackages()]
    code = ("import site, sys; before = list(sys.path); [site.addsitedir(p) for p in sys.argv.pop(1).split(':')]; "
            "sys.path[:] = [p for p in sys.path if p not in before] + before; " + main)   # ours before Debian's
    for python in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"):
        if as_user([python, "-c", "pass"], user).returncode == 0:
            return [python, "-c", code, ":".join(paths)]
    pytest.fail(f"no Python interpreter {user} may run")
