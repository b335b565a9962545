"""Aliases, lists, forwards, plus-addressing, catch-all and masquerading, over real SMTP sessions."""
from __future__ import annotations

import os
import signal
import smtplib

import pytest

from tests.integration.harness import DOMAIN, make_message, require_program, wait_for

ALIASES = """\
# the organisation's aliases
postmaster: root
root: alice
contact: alice
jmp: contact
staff: alice, bob, alice@example.test, contact
everyone: :include:members.txt
fwd: someone@outside.test
all: alice, bob
"""


@pytest.fixture
def aliases_file(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "members.txt").write_text("alice\nbob@example.test\n")
    path = folder / "aliases"
    path.write_text(ALIASES)
    return path


@pytest.fixture
def org(make_appliance, aliases_file):
    """An appliance with the aliases above, a restricted list and a catch-all-free domain."""
    return make_appliance(aliases={"file": str(aliases_file), "restricted": "all@example.test"},
                          delivery={"nameservers": "127.0.0.1:9"})


def send(appliance, rcpts, subject, sender="someone@outside.example", service="smtp"):
    with appliance.smtp(service) as client:
        refused = client.sendmail(sender, rcpts, make_message(subject, sender=sender))
    return refused


def count_with(appliance, user, marker: bytes) -> int:
    return sum(marker in message for message in appliance.messages(user))


def test_alias_to_a_user_and_alias_to_an_alias(org):
    send(org, [f"contact@{DOMAIN}"], "via-contact")
    send(org, [f"jmp@{DOMAIN}"], "via-jmp")
    wait_for(lambda: count_with(org, "alice", b"via-contact") == 1 and count_with(org, "alice", b"via-jmp") == 1)


def test_list_with_duplicates_gives_one_copy_each(org):
    send(org, [f"staff@{DOMAIN}", f"alice@{DOMAIN}"], "staff-meeting")
    wait_for(lambda: count_with(org, "bob", b"staff-meeting") == 1 and count_with(org, "alice", b"staff-meeting"))
    assert count_with(org, "alice", b"staff-meeting") == 1


def test_include_file_members(org):
    send(org, [f"everyone@{DOMAIN}"], "to-everyone")
    wait_for(lambda: count_with(org, "alice", b"to-everyone") == 1 and count_with(org, "bob", b"to-everyone") == 1)


def test_forward_to_outside_is_queued_for_that_address(org):
    send(org, [f"fwd@{DOMAIN}"], "forwarded")
    line = wait_for(lambda: [l for l in org.log().splitlines() if " received " in l and "someone@outside.test" in l])
    assert "rcpts=someone@outside.test" in line[0]
    assert count_with(org, "alice", b"forwarded") == 0


def test_restricted_list_refused_to_outsider_accepted_for_insider(org):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(org, [f"all@{DOMAIN}"], "outsider")
    code, text = refused.value.recipients[f"all@{DOMAIN}"]
    assert code == 550 and b"5.7.1" in text
    with org.submit("alice") as client:
        client.sendmail(f"alice@{DOMAIN}", [f"all@{DOMAIN}"], make_message("insider", sender=f"alice@{DOMAIN}"))
    wait_for(lambda: count_with(org, "bob", b"insider") == 1)
    assert count_with(org, "bob", b"outsider") == 0


def test_plus_addressing_reaches_the_user_and_keeps_the_tag(org):
    send(org, [f"alice+lists@{DOMAIN}"], "tagged")
    message = wait_for(lambda: [m for m in org.messages("alice") if b"tagged" in m])[0]
    assert b"Delivered-To: alice+lists@example.test" in message


def test_catch_all_on_and_off(make_appliance, aliases_file):
    off = make_appliance(aliases={"file": str(aliases_file)})
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(off, [f"nobody@{DOMAIN}"], "lost")
    on = make_appliance(aliases={"file": str(aliases_file), "catch_all": f"{DOMAIN}: bob@{DOMAIN}"})
    send(on, [f"nobody@{DOMAIN}"], "caught")
    send(on, [f"postmaster@{DOMAIN}"], "for-postmaster")
    wait_for(lambda: count_with(on, "bob", b"caught") == 1 and count_with(on, "alice", b"for-postmaster") == 1)
    assert count_with(on, "bob", b"for-postmaster") == 0


def test_masquerading_of_envelope_and_headers_with_an_exception(make_appliance):
    org = make_appliance(relay={"trusted_networks": "127.0.0.1/32"},
                         masquerade={"domains": "lan.example.test", "as": DOMAIN, "exceptions": "root"})
    send(org, [f"alice@{DOMAIN}"], "from-pc12", sender="jean@pc12.lan.example.test")
    send(org, [f"alice@{DOMAIN}"], "from-root", sender="root@pc12.lan.example.test")
    jean = wait_for(lambda: [m for m in org.messages("alice") if b"from-pc12" in m])[0]
    assert b"Return-Path: <jean@example.test>" in jean
    assert b"From: jean@example.test" in jean
    root = wait_for(lambda: [m for m in org.messages("alice") if b"from-root" in m])[0]
    assert b"Return-Path: <root@pc12.lan.example.test>" in root
    assert "masqueraded" in org.log() and "original=jean@pc12.lan.example.test" in org.log()


def test_mail_to_a_masqueraded_host_address_is_local(make_appliance):
    org = make_appliance(masquerade={"domains": "lan.example.test", "as": DOMAIN})
    send(org, ["alice@pc12.lan.example.test"], "to-host-address")
    wait_for(lambda: count_with(org, "alice", b"to-host-address") == 1)


def test_broken_reload_keeps_the_old_table(org, aliases_file):
    aliases_file.write_text(ALIASES + "broken line without a colon\n")
    os.kill(org.pid, signal.SIGHUP)
    wait_for(lambda: "reload-refused" in org.log())
    send(org, [f"contact@{DOMAIN}"], "after-bad-reload")
    wait_for(lambda: count_with(org, "alice", b"after-bad-reload") == 1)
    aliases_file.write_text(ALIASES + "newalias: bob\n")
    os.kill(org.pid, signal.SIGHUP)
    wait_for(lambda: org.log().count("reloaded changed=none") >= 1)
    send(org, [f"newalias@{DOMAIN}"], "after-good-reload")
    wait_for(lambda: count_with(org, "bob", b"after-good-reload") == 1)


def test_alias_loop_is_a_clear_error_and_no_mail_storm(make_appliance, tmp_path):
    good = make_appliance()
    loop = tmp_path / "loop-aliases"
    loop.write_text("a: b\nb: a\n")
    with open(good.config_path, "a", encoding="utf-8") as handle:
        handle.write(f"\n[aliases]\nfile = {loop}\n")
    result = good.cli("check", check=False)
    assert result.returncode == 1
    assert "loop" in (result.stdout + result.stderr)


def test_vrfy_and_expn_reveal_nothing_swaks(org):
    swaks = require_program("swaks")
    with org.smtp() as client:
        assert client.verify(f"alice@{DOMAIN}")[0] == 252
        assert client.verify(f"nobody@{DOMAIN}")[0] == 252
        assert client.expn(f"staff@{DOMAIN}")[0] == 502
    import subprocess
    result = subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(org.ports["smtp"]), "--from",
                             "x@outside.example", "--to", f"staff@{DOMAIN}", "--header", "Subject: swaks-list"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: count_with(org, "bob", b"swaks-list") == 1)
