"""Maildir keywords are Dovecot's: a real Dovecot reads the keywords we stored, and we read the ones it adds.

Both keep the keyword list in `dovecot-keywords` and a message's keywords as the letters a..z in
its file name (store/keywords.py). Dovecot (Debian's dovecot-imapd) runs on a loopback port over
a Maildir our folder layer wrote, as the user `nobody` when the tests run as root.
"""
from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from appliance.store import maildir
from tests.integration.harness import end_process, free_port, log_tail, port_accepts, require_program

CONFIG = """
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 0
mail_location = maildir:{maildir}:INDEX={root}/index
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


@pytest.fixture
def place():
    """A directory Dovecot's own processes (user `dovecot`, `nobody`) can reach: pytest's tmp_path is 0700."""
    base = tempfile.mkdtemp(prefix="test-dovecot-")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dovecot_on(place):
    """dovecot_on(maildir) -> an imaplib client logged in to a private Dovecot serving that Maildir."""
    binary = require_program("dovecot")
    started: list[tuple[subprocess.Popen, imaplib.IMAP4]] = []

    def start(path: str) -> imaplib.IMAP4:
        root, port = os.path.join(place, "dovecot"), free_port()
        for sub in ("run", "state", "home", "index"):
            os.makedirs(os.path.join(root, sub))
        with open(os.path.join(root, "passwd"), "w") as handle:
            handle.write("alice:{PLAIN}secret\n")
        os.chmod(root, 0o755)                                  # Dovecot's auth process runs as `dovecot`
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:                                           # Dovecot refuses to serve mail as root
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for top in (path, os.path.join(root, "home"), os.path.join(root, "index")):
                for folder, _, files in os.walk(top):
                    for entry in [folder] + [os.path.join(folder, name) for name in files]:
                        os.chown(entry, uid, gid)
        config = os.path.join(root, "dovecot.conf")
        with open(config, "w") as handle:
            handle.write(CONFIG.format(root=root, maildir=path, port=port, uid=uid, gid=gid))
        process = subprocess.Popen([binary, "-F", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                end_process(process)
                pytest.fail("dovecot did not start:\n" + log_tail(os.path.join(root, "dovecot.log")))
            time.sleep(0.1)
        client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        client.login("alice", "secret")
        started.append((process, client))
        return client

    yield start
    for process, client in started:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
        end_process(process)


def test_dovecot_and_we_share_maildir_keywords(place, dovecot_on):
    path = os.path.join(place, "Maildir")
    for sub in maildir.SUBDIRS:
        os.makedirs(os.path.join(path, sub))
    ours = maildir.MaildirFolder(path)
    first = ours.append(b"Subject: a\r\n\r\nx\r\n", frozenset({"\\Seen", "$Label1", "Work"}), None)
    ours.append(b"Subject: b\r\n\r\ny\r\n", frozenset({"Todo"}), None)
    ours.store([first], "-", frozenset({"work"}))

    dovecot = dovecot_on(path)
    assert dovecot.select("INBOX") == ("OK", [b"2"])
    listed = dovecot.response("FLAGS")[1][0]
    assert b"$Label1" in listed and b"Todo" in listed        # (Dovecot lists the keywords messages carry)
    flags = dovecot.fetch("1:2", "(FLAGS)")[1]
    assert b"$Label1" in flags[0] and b"\\Seen" in flags[0] and b"Work" not in flags[0]
    assert b"Todo" in flags[1]
    assert dovecot.store("2", "+FLAGS", "(FromDovecot)")[0] == "OK"
    dovecot.logout()

    again = maildir.MaildirFolder(path).refresh()           # a restarted appliance over Dovecot's changes
    assert again.keywords == ("$Label1", "Work", "Todo", "FromDovecot")
    assert [again.flags_of(uid) for uid in again.uids] == [{"\\Seen", "$Label1"}, {"Todo", "FromDovecot"}]
