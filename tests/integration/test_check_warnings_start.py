"""A real `twistd mailappliance` with a meaning error in its aliases file (issue 12 item 6):
it logs the warning `check` prints, starts, and takes mail for everybody else.
"""
from __future__ import annotations

import smtplib

import pytest

from tests.integration.harness import DOMAIN, Appliance, make_message


def test_twistd_logs_the_warning_and_serves(tmp_path, request):
    aliases = tmp_path / "app" / "aliases"
    app = Appliance(str(tmp_path / "app"), services=("smtp",), overrides={"aliases": {"file": str(aliases)}})
    request.node.appliances = [app]             # conftest shows the log when the test fails
    app.setup()
    aliases.write_text("postmaster: alice\nabuse: alice\nsales: alice, bobb\n")
    printed = [line for line in app.cli("check").stdout.splitlines() if "warning:" in line]
    assert printed == [f"{aliases}:3: warning: sales@{DOMAIN} -> bobb@{DOMAIN}: no such user; "
                       f"mail to sales@{DOMAIN} is refused (550 5.1.1)"]
    app.start()
    try:
        assert f'config-warning warning="{printed[0]}"' in app.log()
        with app.smtp() as client:
            client.sendmail("someone@outside.example", [f"alice@{DOMAIN}"], make_message("hello"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):      # what the warning said
                client.sendmail("someone@outside.example", [f"sales@{DOMAIN}"], make_message("lost"))
    finally:
        app.stop()
