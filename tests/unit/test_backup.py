"""`mailappliance backup` and `restore` on real files: the manifest, refusals, damaged archives, modes and owners.

Each test builds a small appliance on disk with the real writers (users file, Maildir or mbox
delivery, the IMAP folder code for UID lists and flags, the queue's spool) and drives the command
through cli.main, as an operator would. The running-daemon case is tests/integration/test_backup.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import socket
import stat
import tarfile
import threading

import pytest

from appliance import backup, cli, config, pickup, queue, tls
from appliance.directory.file import add_user, list_users
from appliance.envelope import Envelope, Recipient, new_id
from appliance.inline import InlinePool, InlineReactor
from appliance.store import index, maildir, mbox

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test
state_dir = var

[listen]
smtp = tcp:2525

[storage]
format = {storage}
path = var/mail/{{domain}}/{{local}}
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_site(root, storage: str = "maildir") -> config.Config:
    """A configuration with a certificate, two users, mail for alice (flags set over the folder code) and a queued message."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "mailappliance.conf")
    with open(path, "w") as handle:
        handle.write(CONF.format(storage=storage))
    cfg = config.load(path)
    tls.generate_self_signed(cfg.appliance.hostname, cfg.tls.certificate, cfg.tls.key)
    add_user(cfg.directory.users_file, "alice@example.test", "pw-a")
    add_user(cfg.directory.users_file, "bob@example.test", "pw-b")
    mailbox = os.path.join(cfg.appliance.state_dir, "mail", "example.test", "alice")
    for n in range(3):
        message = b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n)
        if storage == "mbox":
            mbox.append(mailbox, message, "someone@outside.example")
        else:
            maildir.write(mailbox, message)
    store = (mbox.MboxAccount if storage == "mbox" else maildir.MaildirAccount)(mailbox)
    store.ensure_special()
    inbox = store.folder("INBOX")
    snapshot = inbox.refresh()
    inbox.store([snapshot.uids[0]], "", frozenset({"\\Seen", "\\Flagged"}))
    spool = queue.Spool(os.path.join(cfg.appliance.state_dir, "queue"), InlineReactor(), InlinePool())
    spool.recover()
    envelope = Envelope(id=new_id(), sender="alice@example.test",
                        recipients=[Recipient(address="carol@remote.example", local=False)])
    spool.put(envelope, b"Subject: queued\r\n\r\nwaiting\r\n")
    spool.close()
    pickup.prepare_folder(os.path.join(cfg.appliance.state_dir, pickup.FOLDER))
    pickup.write(os.path.join(cfg.appliance.state_dir, pickup.FOLDER), "root@example.test", ["bob@example.test"],
                 b"Subject: from cron\r\n\r\nnot picked up yet\r\n")
    keys = os.path.join(cfg.appliance.state_dir, "dkim")      # where `dkim keygen` writes by default
    os.makedirs(keys, mode=0o700)
    with open(os.path.join(keys, "example.test.mail.key"), "w", opener=lambda p, f: os.open(p, f, 0o600)) as key:
        key.write("-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n")
    return cfg


def archive_of(capsys, cfg: config.Config, tmp_path) -> str:
    dest = str(tmp_path / "site.tar")
    code, out, err = run(capsys, "--config", cfg.path, "backup", dest)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"wrote {dest} ")
    return dest


def manifest_of(path: str) -> dict:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile(backup.MANIFEST).read())


def tree(root) -> dict[str, bytes | None]:
    """Relative path -> content (None for a folder) of everything below root but the folder locks
    (empty files the daemon makes when it first locks a folder, so a backup leaves them out)."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            if name == "mailappliance-lock":
                continue
            with open(os.path.join(folder, name), "rb") as handle:
                found[os.path.relpath(os.path.join(folder, name), root)] = handle.read()
    return found


# ---------------------------------------------------------------- the manifest

def test_the_manifest_lists_every_file_with_its_size_mode_and_sha256(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600          # it holds the TLS key and password hashes
    manifest = manifest_of(dest)
    assert (manifest["format"], manifest["version"]) == ("mailappliance-backup", 1)
    assert manifest["hostname"] == socket.gethostname() and manifest["created"].endswith("Z")
    assert manifest["daemon_running"] is False
    assert manifest["storage"] == {"format": "maildir", "shape": "{domain}/{local}"}
    entries = {entry["path"]: entry for entry in manifest["entries"]}
    with tarfile.open(dest) as tar:
        names = [m.name for m in tar.getmembers()]
        assert names[-1] == backup.MANIFEST and set(names[:-1]) == set(entries)
        for member in tar.getmembers()[:-1]:
            if member.isfile():
                data = tar.extractfile(member).read()
                assert entries[member.name]["size"] == len(data)
                assert entries[member.name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert entries["files/tls-key"]["mode"] == 0o600
    assert {"files/config", "files/users", "files/tls-certificate", "files/tls-key"} <= set(entries)
    uidlist = "mail/example.test/alice/mailappliance-uidlist"
    assert uidlist in entries and "mail/example.test/alice/.Trash/cur" in entries
    assert any(p.startswith("state/queue/segments/") and p.endswith(".log") for p in entries)
    assert not any(p.endswith("mailappliance-lock") for p in entries)
    assert entries["dkim/example.test.mail.key"]["mode"] == 0o600 and not any(p.startswith("state/dkim") for p in entries)


def test_a_folder_as_destination_gets_a_dated_archive_and_an_existing_file_is_refused(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    os.makedirs(tmp_path / "backups")
    code, out, _ = run(capsys, "--config", cfg.path, "backup", str(tmp_path / "backups"))
    assert code == 0
    [name] = os.listdir(tmp_path / "backups")
    assert name.startswith(f"mailappliance-{socket.gethostname()}-") and name.endswith("Z.tar")
    code, _, err = run(capsys, "--config", cfg.path, "backup", str(tmp_path / "backups" / name))
    assert code == 1 and err == f"mailappliance: {tmp_path / 'backups' / name} already exists; " \
                                "give a new file name or a folder\n"


def test_a_destination_inside_the_state_folder_is_refused(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = os.path.join(cfg.appliance.state_dir, "b.tar")
    code, _, err = run(capsys, "--config", cfg.path, "backup", dest)
    assert code == 1
    assert err == f"mailappliance: {dest} is inside {cfg.appliance.state_dir}; write the backup elsewhere " \
                  "(it would copy itself)\n"
    assert not os.path.exists(dest)


def test_a_torn_record_at_the_end_of_a_segment_stays_out_of_the_backup(capsys, tmp_path):
    """What the daemon is appending right now is not half in the backup (it would come back as damage)."""
    cfg = make_site(tmp_path / "site")
    segments = os.path.join(cfg.appliance.state_dir, "queue", "segments")
    [log] = [n for n in os.listdir(segments) if n.endswith(".log")]
    with open(os.path.join(segments, log), "rb") as handle:
        whole = handle.read()
    with open(os.path.join(segments, log), "ab") as handle:
        handle.write(queue.encode_record("HALF1", b'{"id": "HALF1"}', b"x" * 500)[:60])
    dest = archive_of(capsys, cfg, tmp_path)
    with tarfile.open(dest) as tar:
        assert tar.extractfile(f"state/queue/segments/{log}").read() == whole


# ---------------------------------------------------------------- restore

def new_target(tmp_path, storage: str = "maildir", state: str = "newvar") -> str:
    """A configuration for the new machine: another folder, another state_dir."""
    root = tmp_path / "new"
    os.makedirs(root, exist_ok=True)
    text = CONF.format(storage=storage).replace("state_dir = var", f"state_dir = {state}")
    text = text.replace("path = var/mail", f"path = {state}/mail")
    (root / "mailappliance.conf").write_text(text)
    return str(root / "mailappliance.conf")


@pytest.mark.parametrize("storage", ["maildir", "mbox"])
def test_restore_into_a_new_state_folder_gives_back_the_same_files(capsys, tmp_path, storage):
    cfg = make_site(tmp_path / "site", storage)
    dest = archive_of(capsys, cfg, tmp_path)
    target = new_target(tmp_path, storage)
    code, out, err = run(capsys, "--config", target, "restore", dest)
    assert (code, err) == (0, ""), err
    assert f"config           {target} kept (it differs from the backup's: that one is {target}.from-backup)" \
        in out.splitlines()
    with open(target + ".from-backup") as copy, open(cfg.path) as old:
        assert copy.read() == old.read()
    new = config.load(target)
    old_state, new_state = tree(cfg.appliance.state_dir), tree(new.appliance.state_dir)
    assert new_state == old_state
    assert list_users(new.directory.users_file) == ["alice@example.test", "bob@example.test"]
    assert stat.S_IMODE(os.stat(new.tls.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(new.appliance.state_dir, "dkim", "example.test.mail.key")).st_mode) == 0o600
    envelopes, damaged = queue.read_spool(os.path.join(new.appliance.state_dir, "queue"))
    assert [e.recipients[0].address for e in envelopes] == ["carol@remote.example"] and not damaged


def test_restore_without_a_config_writes_the_backups_next_to_the_new_state(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    os.chmod(tmp_path / "site", 0o755)
    dest = archive_of(capsys, cfg, tmp_path)
    target = str(tmp_path / "fresh" / "mailappliance.conf")
    code, out, err = run(capsys, "--config", target, "restore", dest)
    assert (code, err) == (0, "")
    with open(target) as new, open(cfg.path) as old:
        assert new.read() == old.read()
    assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o755   # the old folder's, not 0700: the daemon reads it
    assert os.path.isfile(tmp_path / "fresh" / "var" / "mail" / "example.test" / "alice" / "mailappliance-uidlist")
    assert run(capsys, "--config", target, "check")[0] == 0


def test_restore_refuses_a_state_folder_that_is_not_empty_and_writes_nothing(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    target = new_target(tmp_path)
    state = tmp_path / "new" / "newvar"
    os.makedirs(state)
    (state / "something").write_text("x")
    code, out, err = run(capsys, "--config", target, "restore", dest)
    assert (code, out) == (1, "")
    assert err == (f"mailappliance: {state} is not empty; restore fills an empty state folder only "
                   "(stop the daemon and give a new or empty state_dir)\n")
    assert sorted(os.listdir(tmp_path / "new")) == ["mailappliance.conf", "newvar"]
    assert os.listdir(state) == ["something"]


def test_restore_refuses_to_overwrite_a_different_users_file(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    target = new_target(tmp_path)
    add_user(str(tmp_path / "new" / "users"), "zed@example.test", "pw")
    code, _, err = run(capsys, "--config", target, "restore", dest)
    assert code == 1
    assert err == f"mailappliance: {tmp_path / 'new' / 'users'} already exists and differs from the backup; " \
                  "move it away first (restore never overwrites)\n"
    assert not os.path.exists(tmp_path / "new" / "newvar")


def test_restore_refuses_another_storage_format(capsys, tmp_path):
    cfg = make_site(tmp_path / "site", "maildir")
    dest = archive_of(capsys, cfg, tmp_path)
    code, _, err = run(capsys, "--config", new_target(tmp_path, "mbox"), "restore", dest)
    assert code == 1 and "holds maildir mailboxes but [storage] format is mbox" in err
    assert not os.path.exists(tmp_path / "new" / "newvar")


def corrupt(path: str, member: str) -> None:
    """Flip one byte inside `member`'s data, where a disk or a transfer would damage it."""
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data
    with open(path, "r+b") as handle:
        handle.seek(offset + 5)
        byte = handle.read(1)
        handle.seek(offset + 5)
        handle.write(bytes([byte[0] ^ 0x20]))


def test_a_damaged_archive_is_refused_with_its_member_named_and_nothing_restored(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    with tarfile.open(dest) as tar:
        last_file = [m.name for m in tar.getmembers() if m.isfile() and m.name != backup.MANIFEST][-1]
    corrupt(dest, last_file)        # the last one: a restore that wrote as it checked would have written the rest
    target = str(tmp_path / "fresh" / "mailappliance.conf")
    code, out, err = run(capsys, "--config", target, "restore", dest)
    assert (code, out) == (1, "")
    assert err == (f"mailappliance: {dest}: {last_file}: checksum mismatch (the archive is damaged); "
                   "nothing was restored\n")
    assert not os.path.exists(tmp_path / "fresh")


def test_a_cut_archive_and_a_stranger_tar_are_refused(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    cut = str(tmp_path / "cut.tar")
    with open(dest, "rb") as source, open(cut, "wb") as out:
        out.write(source.read()[: os.path.getsize(dest) // 2])
    target = str(tmp_path / "fresh" / "mailappliance.conf")
    code, _, err = run(capsys, "--config", target, "restore", cut)
    assert code == 1 and err == f"mailappliance: {cut}: no manifest; not a mailappliance backup, or cut short\n"
    stranger = str(tmp_path / "stranger.tar")
    with tarfile.open(stranger, "w") as tar:
        info = tarfile.TarInfo("etc/passwd")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x:y"))
    code, _, err = run(capsys, "--config", target, "restore", stranger)
    assert code == 1 and err == f"mailappliance: {stranger}: no manifest; not a mailappliance backup, or cut short\n"
    assert not os.path.exists(tmp_path / "fresh")


def test_a_member_escaping_its_area_is_refused_even_with_a_matching_manifest(capsys, tmp_path):
    evil = str(tmp_path / "evil.tar")
    data = b"owned\n"
    entry = {"path": "state/../../escaped", "type": "file", "mode": 0o644, "owner": "root", "group": "root",
             "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = json.dumps({"format": "mailappliance-backup", "version": 1, "storage":
                           {"format": "maildir", "shape": "{domain}/{local}"}, "entries": [entry]}).encode()
    with tarfile.open(evil, "w") as tar:
        for name, content in ((entry["path"], data), (backup.MANIFEST, manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    code, _, err = run(capsys, "--config", new_target(tmp_path), "restore", evil)
    assert code == 1 and err == "mailappliance: bad manifest entry 'state/../../escaped'\n"
    assert not os.path.exists(tmp_path / "escaped")


def test_restore_keeps_modes_and_as_root_owners_by_name(capsys, tmp_path):
    """As root the owner named in the backup is set (the daemon's user must be able to read its
    files); as anyone else the files are the restoring user's, with the modes they had."""
    cfg = make_site(tmp_path / "site")
    nobody = pwd.getpwnam("nobody")
    expected = nobody.pw_uid if os.geteuid() == 0 else os.geteuid()
    if os.geteuid() == 0:
        os.chown(cfg.directory.users_file, nobody.pw_uid, nobody.pw_gid)
    os.chmod(cfg.directory.users_file, 0o640)
    dest = archive_of(capsys, cfg, tmp_path)
    target = new_target(tmp_path)
    assert run(capsys, "--config", target, "restore", dest)[0] == 0
    restored = os.stat(tmp_path / "new" / "users")
    assert (restored.st_uid, stat.S_IMODE(restored.st_mode)) == (expected, 0o640)
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "newvar" / "pickup").st_mode) == 0o1733   # sticky, as sendmail needs


def test_a_restore_that_fails_half_way_removes_what_it_wrote(capsys, tmp_path):
    """The TLS key's folder is a file on the new machine: the key cannot be written, after the state was."""
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    target = new_target(tmp_path)
    with open(target, "a") as handle:
        handle.write("\n[tls]\ncertificate = tls/cert.pem\nkey = blocker/key.pem\n")
    (tmp_path / "new" / "blocker").write_text("a file, not a folder")
    code, out, err = run(capsys, "--config", target, "restore", dest)
    assert (code, out) == (1, "")
    assert err.startswith("mailappliance: ") and err.endswith("/new/blocker: in the way: a file where a folder must go\n") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path / "new")) == ["blocker", "mailappliance.conf"]     # no .from-backup either


def test_a_different_certificate_on_the_new_machine_is_kept_and_the_backups_is_put_beside_it(capsys, tmp_path):
    cfg = make_site(tmp_path / "site")
    dest = archive_of(capsys, cfg, tmp_path)
    target = new_target(tmp_path)
    new = config.load(target)
    tls.generate_self_signed(new.appliance.hostname, new.tls.certificate, new.tls.key)   # e.g. from certbot
    with open(new.tls.key, "rb") as handle:
        own_key = handle.read()
    code, out, err = run(capsys, "--config", target, "restore", dest)
    assert (code, err) == (0, "")
    assert f"tls-key          {new.tls.key} kept (it differs from the backup's: that one is {new.tls.key}.from-backup)" \
        in out.splitlines()
    with open(new.tls.key, "rb") as kept, open(new.tls.key + ".from-backup", "rb") as beside, \
            open(cfg.tls.key, "rb") as old:
        assert (kept.read(), beside.read()) == (own_key, old.read())
    assert stat.S_IMODE(os.stat(new.tls.key + ".from-backup").st_mode) == 0o600


@pytest.mark.parametrize("storage", ["maildir", "mbox"])
def test_a_folder_is_copied_only_while_the_server_does_not_hold_its_lock(capsys, tmp_path, storage):
    """The server changes a folder (here: an expunge) under the folder's lock; the backup waits for
    it, so the restored folder has the messages and the UID list of one moment: same UIDVALIDITY,
    same UIDs for the same messages, the expunged one gone from both."""
    cfg = make_site(tmp_path / "site", storage)
    mailbox = os.path.join(cfg.appliance.state_dir, "mail", "example.test", "alice")
    account = (mbox.MboxAccount if storage == "mbox" else maildir.MaildirAccount)(mailbox)
    inbox = account.folder("INBOX")
    before = inbox.refresh()
    dest = str(tmp_path / "b.tar")
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (backup.backup(cfg, dest), finished.set()), daemon=True)
    with index.locked(inbox._lock):             # what Folder.expunge does, step by step, under its lock
        worker.start()
        assert not finished.wait(1.0), "the backup copied a folder the server was changing"
        inbox._remove([inbox._keys[before.uids[0]]])
        inbox._refresh_locked()
    worker.join(30)
    assert finished.is_set()
    target = new_target(tmp_path, storage)
    assert run(capsys, "--config", target, "restore", dest)[0] == 0
    moved = os.path.join(config.load(target).appliance.state_dir, "mail", "example.test", "alice")
    restored = (mbox.MboxAccount if storage == "mbox" else maildir.MaildirAccount)(moved).folder("INBOX").refresh()
    assert (restored.uidvalidity, restored.uids) == (before.uidvalidity, before.uids[1:])
    assert restored.uidnext == before.uidnext
    assert [restored.flags_of(uid) for uid in restored.uids] == [before.flags_of(uid) for uid in before.uids[1:]]


def move_after_the_first_copy(monkeypatch, names: tuple[str, str], move) -> list:
    """Run `move` (the daemon moving a message between two places) right after the backup copied
    the first of the two places, whichever it is; the list returned says whether it ran."""
    moved: list = []
    for name in names:
        def copy_then_move(*args, _real=getattr(backup, name)):
            result = _real(*args)
            if not moved:
                moved.append(move() or True)
            return result
        monkeypatch.setattr(backup, name, copy_then_move)
    return moved


def test_a_message_delivered_while_the_backup_runs_is_in_it_at_least_once(capsys, tmp_path, monkeypatch):
    """The daemon moves a message from the queue to the mailbox (mailbox first, then the done
    mark, which deletes the finished segment). Whichever of the two the backup copies first, the
    move happens right after it: the message must still be in the restored queue or mailbox."""
    cfg = make_site(tmp_path / "site")
    spool_dir = os.path.join(cfg.appliance.state_dir, "queue")
    bob = os.path.join(cfg.appliance.state_dir, "mail", "example.test", "bob")
    spool = queue.Spool(spool_dir, InlineReactor(), InlinePool())
    spool.recover()
    moving = Envelope(id=new_id(), sender="carol@remote.example", recipients=[Recipient(address="bob@example.test")])
    spool.put(moving, b"Subject: on its way\r\n\r\nbody\r\n")
    spool.close()

    def deliver_now() -> None:
        maildir.write(bob, b"Subject: on its way\r\n\r\nbody\r\n")
        spool = queue.Spool(spool_dir, InlineReactor(), InlinePool())
        spool.recover()
        spool.done(moving.id)
        spool.close()

    moved = move_after_the_first_copy(monkeypatch, ("copy_queue", "copy_maildir"), deliver_now)
    dest = archive_of(capsys, cfg, tmp_path)
    assert moved
    target = new_target(tmp_path)
    assert run(capsys, "--config", target, "restore", dest)[0] == 0
    state = config.load(target).appliance.state_dir
    queued = [e.id for e in queue.read_queue(os.path.join(state, "queue"))]
    delivered = [m for sub in ("new", "cur") for m in os.listdir(os.path.join(state, "mail", "example.test", "bob", sub))]
    assert moving.id in queued or delivered


def test_a_message_picked_up_while_the_backup_runs_is_in_it_at_least_once(capsys, tmp_path, monkeypatch):
    """sendmail's file is queued, then removed from pickup/: the same argument one step earlier."""
    cfg = make_site(tmp_path / "site")
    folder = os.path.join(cfg.appliance.state_dir, pickup.FOLDER)
    [name] = pickup.list_ready(folder)
    spool_dir = os.path.join(cfg.appliance.state_dir, "queue")
    picked = Envelope(id=new_id(), sender="root@example.test", recipients=[Recipient(address="bob@example.test")])

    def pick_up_now() -> None:
        spool = queue.Spool(spool_dir, InlineReactor(), InlinePool())
        spool.recover()
        spool.put(picked, b"Subject: from cron\r\n\r\nnot picked up yet\r\n")
        spool.close()
        pickup.remove(folder, name)

    moved = move_after_the_first_copy(monkeypatch, ("copy_pickup", "copy_queue"), pick_up_now)
    dest = archive_of(capsys, cfg, tmp_path)
    assert moved
    target = new_target(tmp_path)
    assert run(capsys, "--config", target, "restore", dest)[0] == 0
    state = config.load(target).appliance.state_dir
    queued = [e.id for e in queue.read_queue(os.path.join(state, "queue"))]
    assert picked.id in queued or pickup.list_ready(os.path.join(state, pickup.FOLDER)) == [name]


def test_the_checks_state_database_is_copied_whole_while_it_is_open_in_wal_mode(capsys, tmp_path):
    """Greylisting's SQLite file (filters/statestore.py) is copied through SQLite's backup API: the
    rows still in the write-ahead log are in the restored file, and no -wal or -shm file travels."""
    import sqlite3
    cfg = make_site(tmp_path / "site")
    path = os.path.join(cfg.appliance.state_dir, "checks.sqlite")
    live = sqlite3.connect(path)
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")            # the row stays in the -wal file only
    live.execute("CREATE TABLE triplets (key TEXT)")
    live.execute("INSERT INTO triplets VALUES ('192.0.2/x@y/alice')")
    live.commit()
    assert os.path.getsize(path + "-wal") > 0
    dest = archive_of(capsys, cfg, tmp_path)
    live.close()
    with tarfile.open(dest) as archive:
        names = archive.getnames()
    assert not any(name.endswith(("-wal", "-shm")) for name in names)
    target = new_target(tmp_path)
    code, _, err = run(capsys, "--config", target, "restore", dest)
    assert code == 0, err
    restored = sqlite3.connect(os.path.join(config.load(target).appliance.state_dir, "checks.sqlite"))
    assert restored.execute("SELECT key FROM triplets").fetchall() == [("192.0.2/x@y/alice",)]
    restored.close()
