"""`mailappliance dkim keygen|show` and appliance/dkimkeys.py: the files an operator gets, the record to publish."""
from __future__ import annotations

import os
import stat

import pytest

from appliance import dkimkeys
from tests.unit.test_cli import run

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test, example.org
state_dir = var
[dkim]
ed25519 = {ed25519}
"""


def write_conf(tmp_path, ed25519: str = "no", extra: str = "") -> str:
    path = tmp_path / "mailappliance.conf"
    path.write_text(CONF.format(ed25519=ed25519) + extra)
    return str(path)



def record_strings(zone: str) -> list[str]:
    """The character-strings of one zone-file TXT record, as a DNS server would load them."""
    inside = zone[zone.index("(") + 1:zone.rindex(")")]
    return [part for i, part in enumerate(inside.split('"')) if i % 2 == 1]


# ---------------------------------------------------------------- keygen

def test_keygen_writes_a_0600_key_in_0700_folders_and_prints_the_record(capsys, tmp_path):
    conf = write_conf(tmp_path)
    code, out, err = run(capsys, "--config", conf, "dkim", "keygen", "example.test")
    assert (code, err) == (0, "")
    key = tmp_path / "var" / "dkim" / "example.test" / "mail.rsa.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key.parent.parent).st_mode) == 0o700
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert not (key.parent / "mail.ed25519.pem").exists()
    zone = out[out.index("mail._domainkey"):]
    assert zone.startswith("mail._domainkey.example.test. 3600 IN TXT ( \"v=DKIM1; k=rsa; \"")
    assert "".join(record_strings(zone)) == dkimkeys.record_value(key.read_bytes())
    assert str(key) in out


def test_keygen_refuses_to_replace_a_key_without_force(capsys, tmp_path):
    conf = write_conf(tmp_path)
    assert run(capsys, "--config", conf, "dkim", "keygen", "example.test")[0] == 0
    key = tmp_path / "var" / "dkim" / "example.test" / "mail.rsa.pem"
    first = key.read_bytes()
    code, out, err = run(capsys, "--config", conf, "dkim", "keygen", "example.test")
    assert code == 1 and out == ""
    assert "already exists; add --force" in err
    assert key.read_bytes() == first
    assert run(capsys, "--config", conf, "dkim", "keygen", "example.test", "--force")[0] == 0
    assert key.read_bytes() != first
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert [name for name in os.listdir(key.parent)] == ["mail.rsa.pem"]      # no temporary file left


def test_keygen_refuses_a_domain_we_do_not_serve_and_a_path_like_name(capsys, tmp_path):
    conf = write_conf(tmp_path)
    code, _, err = run(capsys, "--config", conf, "dkim", "keygen", "exmaple.test")
    assert code == 1 and "exmaple.test is not one of [appliance] domains (example.test, example.org)" in err
    for bad in ("../example.test", "example.test/x"):
        code, _, err = run(capsys, "--config", conf, "dkim", "keygen", bad)
        assert code == 1 and "is not a domain name" in err
    code, _, err = run(capsys, "--config", conf, "dkim", "keygen", "example.test", "--selector", "../up")
    assert code == 1 and "is not a DKIM selector" in err
    assert not (tmp_path / "var").exists()


def test_keygen_selector_option_and_ed25519_and_show(capsys, tmp_path):
    conf = write_conf(tmp_path, ed25519="yes", extra="selector = s2026\n")
    code, out, _ = run(capsys, "--config", conf, "dkim", "keygen", "Example.ORG")
    assert code == 0 and "mail from @example.org is signed with it from now on" in out
    code, out, _ = run(capsys, "--config", conf, "dkim", "keygen", "example.org", "--selector", "next")
    assert code == 0 and "still signed with selector s2026 until [dkim] selector = next" in out
    assert [line.split()[0] for line in out.splitlines() if "IN TXT" in line] == [
        "next._domainkey.example.org.", "next-ed25519._domainkey.example.org."]        # only the new keys
    folder = tmp_path / "var" / "dkim" / "example.org"
    assert sorted(os.listdir(folder)) == ["next.ed25519.pem", "next.rsa.pem", "s2026.ed25519.pem", "s2026.rsa.pem"]
    assert stat.S_IMODE(os.stat(folder / "s2026.ed25519.pem").st_mode) == 0o600
    code, out, err = run(capsys, "--config", conf, "dkim", "show", "example.org")
    assert (code, err) == (0, "")
    names = [line.split()[0] for line in out.splitlines() if "IN TXT" in line]
    assert names == ["next._domainkey.example.org.", "next-ed25519._domainkey.example.org.",
                     "s2026._domainkey.example.org.", "s2026-ed25519._domainkey.example.org."]
    ed_record = [line for line in out.splitlines() if "k=ed25519" in line]
    assert len(ed_record) == 2
    value = dkimkeys.record_value((folder / "s2026.ed25519.pem").read_bytes())
    assert value.startswith("v=DKIM1; k=ed25519; p=") and len(value.split("p=")[1]) == 44   # 32 bytes, base64


def test_show_without_a_key_says_how_to_make_one(capsys, tmp_path):
    conf = write_conf(tmp_path)
    code, out, err = run(capsys, "--config", conf, "dkim", "show", "example.test")
    assert code == 1 and out == ""
    assert "example.test has no DKIM key" in err and "dkim keygen example.test" in err


def test_keys_folder_setting_is_used(capsys, tmp_path):
    conf = write_conf(tmp_path, extra="keys = /%s\n" % str(tmp_path / "elsewhere").lstrip("/"))
    assert run(capsys, "--config", conf, "dkim", "keygen", "example.test")[0] == 0
    assert (tmp_path / "elsewhere" / "example.test" / "mail.rsa.pem").exists()
    assert not (tmp_path / "var").exists()


def test_owner_is_state_dirs_when_run_as_root(tmp_path, monkeypatch):
    """Root running keygen must not lock the daemon (state_dir's owner) out of its key."""
    state_dir = tmp_path / "var"
    state_dir.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "stat", _fake_stat_owner(str(state_dir), 4242, 4343))
    assert dkimkeys.owner_for(str(state_dir), str(state_dir / "dkim")) == (4242, 4343)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert dkimkeys.owner_for(str(state_dir), str(state_dir / "dkim")) is None


def _fake_stat_owner(path: str, uid: int, gid: int):
    real = os.stat

    def fake(candidate, *args, **kwargs):
        info = real(candidate, *args, **kwargs)
        if str(candidate) != path:
            return info
        values = list(info)
        values[stat.ST_UID], values[stat.ST_GID] = uid, gid
        return os.stat_result(values)
    return fake


def test_keygen_gives_the_folders_and_files_to_state_dirs_owner(capsys, tmp_path):
    """As root (the usual case) a real chown to another user; as anyone else, to themselves."""
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    conf = write_conf(tmp_path)
    (tmp_path / "var").mkdir()
    os.chown(tmp_path / "var", *owner)
    assert run(capsys, "--config", conf, "dkim", "keygen", "example.test")[0] == 0
    for path in (tmp_path / "var" / "dkim", tmp_path / "var" / "dkim" / "example.test",
                 tmp_path / "var" / "dkim" / "example.test" / "mail.rsa.pem"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == owner


# ---------------------------------------------------------------- the record's text

def test_character_strings_are_at_most_255_octets_and_join_back():
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    parts = dkimkeys.character_strings(value)
    assert parts[0] == "v=DKIM1; k=rsa; "
    assert all(0 < len(part) <= 255 for part in parts)
    assert "".join(parts) == value
    assert len(parts) == 4          # the tags, then 602 characters of p= in 255 + 255 + 92


def test_rsa_2048_record_needs_two_key_strings():
    pem = dkimkeys.new_private_pem(dkimkeys.RSA)
    zone = dkimkeys.zone_record("example.test", "mail", dkimkeys.record_value(pem))
    strings = record_strings(zone)
    assert [len(s) <= 255 for s in strings] == [True] * 3
    assert strings[1].startswith("p=MIIB")      # DER SubjectPublicKeyInfo of a 2048-bit key


def test_a_broken_key_file_is_reported_not_crashed(tmp_path):
    path = tmp_path / "example.test" / "mail.rsa.pem"
    path.parent.mkdir()
    path.write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nbroken\n-----END RSA PRIVATE KEY-----\n")
    [key] = dkimkeys.stored_keys(str(tmp_path), "example.test")
    with pytest.raises(dkimkeys.DKIMKeyError, match="mail.rsa.pem"):
        dkimkeys.read_record(key)


def test_stored_keys_ignore_other_files_and_unsafe_domains(tmp_path):
    folder = tmp_path / "example.test"
    folder.mkdir()
    for name in ("mail.rsa.pem", "mail.rsa.pem.tmp12", "README", "mail.dsa.pem", "old.ed25519.pem"):
        (folder / name).write_text("x")
    found = dkimkeys.stored_keys(str(tmp_path), "example.test")
    assert [(k.selector, k.algorithm) for k in found] == [("mail", "rsa"), ("old", "ed25519")]
    assert dkimkeys.stored_keys(str(tmp_path), "../example.test") == []
