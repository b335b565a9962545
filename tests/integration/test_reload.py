"""SIGHUP reloads every setting that needs no rebinding, and refuses the ones that do.

Each test edits the config file of a running `twistd`, sends SIGHUP with os.kill (what
`systemctl reload` does), and looks at what a client notices over SMTP.
"""
from __future__ import annotations

import os
import signal
import smtplib

import pytest

from tests.integration.harness import (DOMAIN, Appliance, free_port, make_message, port_accepts, render_config,
                                       wait_for)


def rewrite(appliance: Appliance, **sections: dict[str, str]) -> None:
    """Change keys of the running appliance's config file (the process is not told yet)."""
    for section, keys in sections.items():
        appliance.sections.setdefault(section, {}).update(keys)
    with open(appliance.config_path, "w", encoding="utf-8") as handle:
        handle.write(render_config(appliance.sections))


def reload(appliance: Appliance) -> str:
    """SIGHUP, then the one line that says how the reload ended (`reloaded ...` or `reload-refused ...`)."""
    before = _outcomes(appliance)
    os.kill(appliance.pid, signal.SIGHUP)
    wait_for(lambda: len(_outcomes(appliance)) > len(before))
    return _outcomes(appliance)[-1]


def _outcomes(appliance: Appliance) -> list[str]:
    return [line for line in appliance.log().splitlines() if " reloaded " in line or " reload-refused " in line]


def send(appliance: Appliance, rcpts: list[str], subject: str, sender: str = "someone@outside.example") -> dict:
    with appliance.smtp() as client:
        return client.sendmail(sender, rcpts, make_message(subject, sender=sender))


def rcpt_reply(appliance: Appliance, rcpt: str, sender: str = "someone@outside.example") -> int:
    with appliance.smtp() as client:
        client.ehlo()
        client.mail(sender)
        return client.rcpt(rcpt)[0]


def count_with(appliance: Appliance, user: str, marker: bytes) -> int:
    return sum(marker in message for message in appliance.messages(user))


def test_a_new_aliases_file_at_the_default_path_is_read_on_reload(appliance):
    assert rcpt_reply(appliance, f"sales@{DOMAIN}") == 550
    with open(os.path.join(appliance.root, "aliases"), "w", encoding="utf-8") as handle:
        handle.write("sales: bob\n")
    outcome = reload(appliance)
    assert "reloaded" in outcome and "[aliases] file" in outcome, outcome
    send(appliance, [f"sales@{DOMAIN}"], "to-sales")
    wait_for(lambda: count_with(appliance, "bob", b"to-sales") == 1)
    # Local mail (`sendmail`, through the pickup folder) is resolved with the new table too.
    appliance.cli("sendmail", f"sales@{DOMAIN}", stdin="Subject: cron-to-sales\n\nnightly\n")
    wait_for(lambda: count_with(appliance, "bob", b"cron-to-sales") == 1)


def test_a_new_aliases_file_key_is_used_after_reload(appliance, tmp_path):
    table = tmp_path / "company-aliases"
    table.write_text("info: alice\n")
    assert rcpt_reply(appliance, f"info@{DOMAIN}") == 550
    rewrite(appliance, aliases={"file": str(table)})
    assert "[aliases] file" in reload(appliance)
    send(appliance, [f"info@{DOMAIN}"], "to-info")
    wait_for(lambda: count_with(appliance, "alice", b"to-info") == 1)
    table.write_text("info: bob\n")                 # the file alone changed: re-read too
    assert "reloaded" in reload(appliance)
    send(appliance, [f"info@{DOMAIN}"], "to-info-again")
    wait_for(lambda: count_with(appliance, "bob", b"to-info-again") == 1)


def test_a_new_catch_all_is_used_after_reload(appliance):
    assert rcpt_reply(appliance, f"whoever@{DOMAIN}") == 550
    rewrite(appliance, aliases={"catch_all": f"{DOMAIN}: bob@{DOMAIN}"})
    assert "[aliases] catch_all" in reload(appliance)
    send(appliance, [f"whoever@{DOMAIN}"], "to-whoever")
    wait_for(lambda: count_with(appliance, "bob", b"to-whoever") == 1)


def test_trusted_networks_are_reloaded(appliance):
    assert rcpt_reply(appliance, "friend@elsewhere.example") == 554       # relay denied
    rewrite(appliance, relay={"trusted_networks": "127.0.0.1/32"})
    assert "[relay] trusted_networks" in reload(appliance)
    assert rcpt_reply(appliance, "friend@elsewhere.example") == 250
    rewrite(appliance, relay={"trusted_networks": ""})
    reload(appliance)
    assert rcpt_reply(appliance, "friend@elsewhere.example") == 554


def test_greylisting_turned_on_by_reload(appliance):
    assert rcpt_reply(appliance, f"alice@{DOMAIN}") == 250
    rewrite(appliance, checks={"greylist": "all"})
    assert "[checks] greylist" in reload(appliance)
    assert rcpt_reply(appliance, f"alice@{DOMAIN}", sender="new@outside.example") == 451
    rewrite(appliance, checks={"greylist": "off"})
    reload(appliance)
    assert rcpt_reply(appliance, f"alice@{DOMAIN}", sender="other@outside.example") == 250


def test_max_message_size_is_reloaded(appliance):
    big = make_message("big", body="x" * 5000 + "\r\n")
    with appliance.smtp() as client:
        client.sendmail("someone@outside.example", [f"alice@{DOMAIN}"], big)
    rewrite(appliance, limits={"max_message_size": "2000"})
    assert "[limits] max_message_size" in reload(appliance)
    with appliance.smtp() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "2000"
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("someone@outside.example", [f"alice@{DOMAIN}"], big)
    assert refused.value.smtp_code == 552


def test_a_listen_change_is_refused_and_nothing_else_changes(appliance):
    old_port, new_port = appliance.ports["smtp"], free_port()
    rewrite(appliance, listen={"smtp": f"tcp:{new_port}:interface=127.0.0.1"},
            aliases={"catch_all": f"{DOMAIN}: bob@{DOMAIN}"})
    outcome = reload(appliance)
    assert "reload-refused" in outcome and "[listen] smtp" in outcome and "restart" in outcome, outcome
    assert "catch_all" not in outcome          # only the keys that need the restart are named
    assert port_accepts(old_port) and not port_accepts(new_port)
    assert rcpt_reply(appliance, f"whoever@{DOMAIN}") == 550          # the catch-all was not applied either
    send(appliance, [f"alice@{DOMAIN}"], "after-refusal")
    wait_for(lambda: count_with(appliance, "alice", b"after-refusal") == 1)


def test_a_broken_config_is_refused_with_its_problems_and_the_old_settings_kept(appliance):
    rewrite(appliance, aliases={"catch_all": f"{DOMAIN}: bob@{DOMAIN}"}, limits={"max_recipients": "many"})
    outcome = reload(appliance)
    assert "reload-refused" in outcome, outcome
    assert any("[limits] max_recipients" in line and "reload-refused" in line for line in appliance.log().splitlines())
    assert rcpt_reply(appliance, f"whoever@{DOMAIN}") == 550
    send(appliance, [f"alice@{DOMAIN}"], "after-broken")
    wait_for(lambda: count_with(appliance, "alice", b"after-broken") == 1)
    rewrite(appliance, limits={"max_recipients": "50"})              # fixed: now the catch-all comes in
    assert "reloaded" in reload(appliance)
    assert rcpt_reply(appliance, f"whoever@{DOMAIN}") == 250


def test_a_broken_aliases_file_is_refused_and_the_old_table_kept(appliance):
    path = os.path.join(appliance.root, "aliases")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sales: bob\n")
    reload(appliance)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sales: bob\nthis line has no colon\n")
    outcome = reload(appliance)
    assert "reload-refused" in outcome, outcome
    send(appliance, [f"sales@{DOMAIN}"], "still-bob")
    wait_for(lambda: count_with(appliance, "bob", b"still-bob") == 1)


def test_restricted_lists_and_masquerading_are_reloaded(appliance, tmp_path):
    table = tmp_path / "aliases"
    table.write_text("all: alice, bob\n")
    rewrite(appliance, aliases={"file": str(table)})
    reload(appliance)
    assert rcpt_reply(appliance, f"all@{DOMAIN}") == 250
    assert rcpt_reply(appliance, "carol@pc1.lan.example.test") == 554          # not ours: relay denied
    rewrite(appliance, aliases={"restricted": f"all@{DOMAIN}"},
            masquerade={"domains": "lan.example.test", "as": DOMAIN})
    outcome = reload(appliance)
    assert "[aliases] restricted" in outcome and "[masquerade] domains" in outcome, outcome
    assert rcpt_reply(appliance, f"all@{DOMAIN}") == 550                     # outsiders may not write to it
    send(appliance, [f"alice@pc1.lan.example.test"], "hidden-host")        # a hidden host is ours now
    wait_for(lambda: count_with(appliance, "alice", b"hidden-host") == 1)


def test_a_new_users_file_is_used_after_reload(appliance):
    assert rcpt_reply(appliance, f"carol@{DOMAIN}") == 550
    rewrite(appliance, directory={"users_file": "users-2"})
    appliance.cli("user", "add", f"carol@{DOMAIN}", stdin="carol-secret-3\n")   # writes users-2, as the file says
    assert "[directory] users_file" in reload(appliance)
    assert rcpt_reply(appliance, f"carol@{DOMAIN}") == 250
    assert rcpt_reply(appliance, f"alice@{DOMAIN}") == 550                   # alice is only in the old file


def test_a_reload_as_soon_as_the_ports_answer_does_not_kill_the_server(make_appliance):
    """`systemctl reload` right after start: SIGHUP's default action would end the process."""
    appliance = make_appliance()               # returns as soon as the ports accept connections
    os.kill(appliance.pid, signal.SIGHUP)
    wait_for(lambda: _outcomes(appliance))
    assert appliance.process.poll() is None
    assert "reloaded" in _outcomes(appliance)[-1]
    assert rcpt_reply(appliance, f"alice@{DOMAIN}") == 250


def test_a_pop3_maildrop_stays_locked_across_a_reload(make_appliance):
    """The reload builds a new login path; the lock of a POP3 session opened before it still holds."""
    import poplib

    from tests.integration.test_pop3 import POP3_SSL

    appliance = make_appliance(services=("smtp", "pop3s"))

    def login() -> POP3_SSL:
        client = POP3_SSL(appliance.ports["pop3s"], appliance.tls_context())
        client.user(f"alice@{DOMAIN}")
        client.pass_(appliance.users["alice"])
        return client

    first = login()
    rewrite(appliance, logins={"failures_per_address": "6"})       # a new throttle and Login too
    assert "[logins] failures_per_address" in reload(appliance)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        login()
    first.quit()
    login().quit()
