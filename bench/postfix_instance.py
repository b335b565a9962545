"""A private, throwaway Postfix instance (Debian's postfix package) used as the benchmark's anchor.

It runs from its own config, queue and data folders below one temp dir (`postfix -c DIR`), listens
on one loopback port, and delivers the benchmark domain to Maildirs through virtual(8), so it
pays the same costs as the appliance: a durable queue write before 250, then a Maildir delivery.
Needs root (Postfix's master starts as root) and the `postfix` system user.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess

MASTER_CF = "/etc/postfix/master.cf"


def available() -> str:
    """Why a private Postfix cannot run here, or "" when it can."""
    if not shutil.which("postfix", path="/usr/sbin:/usr/bin") or not os.path.exists(MASTER_CF):
        return "Debian's postfix package is not installed"
    if os.geteuid() != 0:
        return "a Postfix instance needs root to start"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix system user"
    return ""


def private_master_cf(stock: str, port: int) -> str:
    """Debian's master.cf with smtpd on 127.0.0.1:port and no chroot (the queue is not a jail)."""
    lines = []
    for line in stock.splitlines():
        fields = line.split()
        if line[:1].strip() and not line.startswith("#") and len(fields) >= 8:
            fields[4] = "n"
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            line = " ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


class PrivatePostfix:
    """One Postfix instance below `root` accepting mail for `user`@`domain` on 127.0.0.1:`port`."""

    def __init__(self, root: str, port: int, domain: str, user: str) -> None:
        self.root = os.path.abspath(root)
        self.port = port
        self.domain = domain
        self.user = user
        self.etc = os.path.join(self.root, "etc")
        self.log_path = os.path.join(self.root, "postfix.log")
        self.maildir = os.path.join(self.root, "vmail", user)

    def _main_cf(self, owner: pwd.struct_passwd) -> str:
        root = self.root
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {root}/queue",
            f"data_directory = {root}/data",
            "myhostname = postfix.bench.test",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            f"virtual_mailbox_domains = {self.domain}",
            f"virtual_mailbox_base = {root}/vmail",
            f"virtual_mailbox_maps = texthash:{self.etc}/vmailbox",
            f"virtual_uid_maps = static:{owner.pw_uid}",
            f"virtual_gid_maps = static:{owner.pw_gid}",
            f"maillog_file_prefixes = {root}",
            f"maillog_file = {self.log_path}",
            "smtpd_peername_lookup = no",
            "biff = no",
            "",
        ])

    def setup(self) -> None:
        owner = pwd.getpwnam("postfix")
        for name in ("etc", "queue", "data", "vmail"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        os.chmod(self.root, 0o755)            # master opens data/ as the postfix user
        for name in ("data", "vmail"):
            os.chown(os.path.join(self.root, name), owner.pw_uid, owner.pw_gid)
        with open(MASTER_CF, encoding="utf-8") as handle:
            master_cf = private_master_cf(handle.read(), self.port)
        files = {"master.cf": master_cf, "main.cf": self._main_cf(owner),
                 "vmailbox": f"{self.user}@{self.domain} {self.user}/\n"}
        for name, text in files.items():
            with open(os.path.join(self.etc, name), "w", encoding="utf-8") as handle:
                handle.write(text)

    def _postfix(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["postfix", "-c", self.etc, action], capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix -c {self.etc} start failed:\n{result.stderr}{self.log_tail()}")

    def stop(self) -> None:
        self._postfix("stop")

    def delivered(self) -> int:
        return sum(len(os.listdir(os.path.join(self.maildir, sub))) for sub in ("new", "cur")
                   if os.path.isdir(os.path.join(self.maildir, sub)))

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "\n".join(handle.read().splitlines()[-lines:])
        except FileNotFoundError:
            return ""
