"""README.md's "Try it" commands, followed to the letter in a fresh copy, as root and as a normal user.

The commands are read from README.md itself, so the test fails when the README drifts from what
works. Each run gets a checkout-like copy of the working tree (tracked and new files, no .venv),
a new venv made by the README's own command, the demo started by it, then one message sent
with msmtp and read back with fetchmail, both verifying the demo certificate with the settings
the demo printed. The second command (.ci/test) runs in the same copy, on one test file.
PyPI (or the machine's pip mirror) and Debian's packages must be reachable.
"""
from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.harness import port_accepts, require_program, wait_for
from tests.integration.unprivileged import require_root_and_user

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
INSTALL_TIMEOUT = 900        # a new venv and `pip install .` on a busy machine
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What this machine needs to reach its package index (mirror, proxy, CA); never the README's business.
PASSED_THROUGH = re.compile(r"PIP_\w+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|CI")
SUBJECT = "read me " + secrets.token_hex(4)


def readme_commands() -> list[str]:
    """The shell blocks of README.md's "Try it" section, in order."""
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("\n## Try it", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_readme_gives_two_commands_the_first_starts_the_demo():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in command for command in commands)
    assert " demo " in commands[0] and "twistd -n mailappliance" in commands[0]
    assert not commands[0].startswith("sudo ")            # absent on a fresh Debian used as root


@dataclass
class Person:
    """Who follows the README: root, or a throwaway normal user; `home` holds the copy."""

    user: str | None
    home: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, command: str) -> list[str]:
        argv = ["sh", "-c", command]
        if self.user is None:
            return argv
        account = pwd.getpwnam(self.user)
        return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--", *argv]

    def run(self, command: str, cwd: str, timeout: float = 120, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command), cwd=cwd, env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=timeout)

    def write(self, path: str, text: str) -> None:
        """A file of this person's, mode 0600 (msmtp and fetchmail refuse anything looser)."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o600)
        if self.user is not None:
            shutil.chown(path, self.user, pwd.getpwnam(self.user).pw_gid)


def fresh_environment(user: str, home: str) -> dict[str, str]:
    passed = {name: value for name, value in os.environ.items() if PASSED_THROUGH.fullmatch(name)}
    return {"PATH": SYSTEM_PATH, "HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8", **passed}


def copy_checkout(destination: str) -> None:
    """The working tree as a fresh clone would have it (tracked and new files, nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            target = os.path.join(destination, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture
def root_person() -> Iterator[Person]:
    require_root_and_user()
    home = tempfile.mkdtemp(prefix="readme-root-")
    yield Person(None, home, fresh_environment("root", home))
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def normal_person() -> Iterator[Person]:
    """A throwaway account with a home folder, as a new admin's own login would be."""
    require_root_and_user()
    require_program("useradd")
    name = f"mareadme{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    home = pwd.getpwnam(name).pw_dir
    try:
        yield Person(name, home, fresh_environment(name, home))
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def test_the_readme_works_as_written_for_root(root_person):
    follow_the_readme(root_person)


def test_the_readme_works_as_written_for_a_normal_user(normal_person):
    follow_the_readme(normal_person)


def follow_the_readme(person: Person) -> None:
    for program in ("msmtp", "fetchmail"):
        require_program(program)
    checkout = os.path.join(person.home, "mailappliance")
    copy_checkout(checkout)
    if person.user is not None:
        subprocess.run(["chown", "-R", f"{person.user}:", checkout], check=True)
    start_demo, run_tests = readme_commands()
    output_path = os.path.join(person.home, "demo.out")
    with open(output_path, "wb") as output:
        demo = subprocess.Popen(person.argv(start_demo), cwd=checkout, env=person.env, stdout=output,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        printed = wait_until_serving(demo, output_path)
        send_and_read_back(person, checkout, printed)
    finally:
        os.killpg(demo.pid, signal.SIGTERM)        # the README's line runs twistd in the foreground
        demo.wait(30)
    result = person.run(f"{run_tests} tests/unit/test_config_location.py", cwd=checkout, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def wait_until_serving(demo: subprocess.Popen, output_path: str) -> str:
    """The demo's printed instructions, once its submission and POP3S ports accept."""
    deadline = time.monotonic() + INSTALL_TIMEOUT
    while True:
        with open(output_path, encoding="utf-8", errors="replace") as handle:
            printed = handle.read()
        ports = [int(port) for port in re.findall(r"^  (?:submission|pop3s) +tcp:(\d+)", printed, re.M)]
        if len(ports) == 2 and all(port_accepts(port) for port in ports):
            return printed
        assert demo.poll() is None, f"the README's first command ended with {demo.returncode}:\n{printed[-4000:]}"
        assert time.monotonic() < deadline, f"the demo is not serving after {INSTALL_TIMEOUT} s:\n{printed[-4000:]}"
        time.sleep(1)


def pasted(printed: str, rc_file: str) -> str:
    """The indented lines the demo printed for `rc_file`, as a user pastes them."""
    after = printed.split(f"put these lines in {rc_file} (mode 0600)", 1)[1].split("\n")[1:]
    lines = []
    for line in after:
        if line.startswith("  "):
            lines.append(line[2:])
        elif lines:
            break
    return "\n".join(lines) + "\n"


def send_and_read_back(person: Person, checkout: str, printed: str) -> None:
    person.write(os.path.join(person.home, ".msmtprc"), pasted(printed, "~/.msmtprc"))
    person.write(os.path.join(person.home, ".fetchmailrc"), pasted(printed, "~/.fetchmailrc"))
    sent = person.run("msmtp demo@example.test", cwd=person.home,
                      stdin=f"To: demo@example.test\nSubject: {SUBJECT}\n\nsent by msmtp, read by fetchmail\n")
    assert (sent.returncode, sent.stderr) == (0, ""), sent
    demo_folder = os.path.join(checkout, "demo")

    def fetched() -> list[str]:
        person.run("fetchmail", cwd=person.home, timeout=60)    # 1 (no mail yet) until delivery is done
        texts = []
        for name in sorted(os.listdir(demo_folder)):
            if name.startswith("fetched-"):
                with open(os.path.join(demo_folder, name), encoding="utf-8", errors="replace") as handle:
                    texts.append(handle.read())
        return texts

    [message] = wait_for(fetched, 60, interval=1)
    assert f"Subject: {SUBJECT}" in message and "sent by msmtp, read by fetchmail" in message
    assert "with ESMTPSA" in message                          # authenticated submission over TLS
