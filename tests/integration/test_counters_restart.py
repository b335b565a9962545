"""The mail-flow counters on a real twistd: delivered locally and relayed counted apart, and the
numbers of the last hour still there after the daemon is stopped and started again."""
from __future__ import annotations

import os
import smtplib
import stat

import pytest

from tests.integration.harness import DOMAIN, make_message, wait_for
from tests.integration.test_status import row

ALICE = f"alice@{DOMAIN}"
FAR = "carol@far.example"



def flow(screen: str) -> dict[str, list[str]]:
    return {kind: row(screen, kind) for kind in ("received", "delivered", "relayed", "deferred", "bounced",
                                                 "rejected")}


def test_the_counts_survive_a_restart_and_relayed_is_told_from_delivered(make_appliance, silent_nameserver):
    smarthost = make_appliance(services=("smtp",), appliance={"hostname": "localhost"},
                               relay={"trusted_networks": "127.0.0.1/32"},
                               delivery={"nameservers": silent_nameserver})
    app = make_appliance(services=("smtp",), relay={
        "trusted_networks": "127.0.0.1/32", "smarthost": f"localhost:{smarthost.ports['smtp']}",
        "smarthost_ca_file": smarthost.cert_path})
    with app.smtp() as client:
        for number in range(2):
            client.sendmail("someone@outside.example", [ALICE], make_message(f"local {number}"))
        client.sendmail(ALICE, [FAR], make_message("far away", sender=ALICE))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("someone@outside.example", [f"nobody@{DOMAIN}"], make_message("unknown user"))
    wait_for(lambda: len(app.messages("alice")) == 2, timeout=10)
    wait_for(lambda: "via=relay" in app.log(), timeout=20, interval=0.2)
    expected = {"received": ["3", "3"], "delivered": ["2", "2"], "relayed": ["1", "1"], "deferred": ["0", "0"],
                "bounced": ["0", "0"], "rejected": ["1", "1"]}
    assert flow(app.cli("status").stdout) == expected

    app.stop()
    saved = os.path.join(app.root, "var", "counters.json")
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    app.start()
    screen = app.cli("status").stdout
    assert flow(screen) == expected, screen
    assert row(screen, "unknown user 550 5.1.1") == ["1", "1"]
    assert "buckets of counts restored" in app.log()

    with app.smtp() as client:                  # and counting goes on from there
        client.sendmail("someone@outside.example", [ALICE], make_message("after the restart"))
    wait_for(lambda: len(app.messages("alice")) == 3, timeout=10)
    assert row(app.cli("status").stdout, "delivered") == ["3", "3"]


def test_a_damaged_counters_file_means_starting_from_zero(make_appliance):
    app = make_appliance(services=("smtp",))
    with app.smtp() as client:
        client.sendmail("someone@outside.example", [ALICE], make_message("counted"))
    wait_for(lambda: app.messages("alice"), timeout=10)
    app.stop()
    saved = os.path.join(app.root, "var", "counters.json")
    with open(saved, "r+b") as handle:
        handle.truncate(os.path.getsize(saved) // 2)
    app.start()
    assert row(app.cli("status").stdout, "received") == ["0", "0"]
    lines = [line for line in app.log().splitlines() if "[stats#" in line]
    assert len(lines) == 2 and "no saved counters; counting from zero" in lines[0], lines      # the first start
    assert "[stats#warn]" in lines[1] and "counters.json: saved counters unusable (not JSON" in lines[1], lines
    assert lines[1].endswith("counting from zero")
