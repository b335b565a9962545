"""`mailappliance check` with `[directory] backend = ldap` asks a real slapd about the aliases
file's targets (issue 12 item 6): a target the directory has no user, nisMailAlias or group for
is a warning line with the aliases file's name and line, `check` still exits 0, and the running
server does refuse mail to those aliases, as the warning says; an alias to a directory group is
no warning, and the server delivers it to the group's members.
"""
from __future__ import annotations

import smtplib

import pytest

from tests.integration.harness import Appliance, make_message
from tests.integration.slapd import BASE_DN, SERVICE_DN, SERVICE_PASSWORD
from tests.integration.test_ldap_appliance import ldap, slapd, wait_for_subjects  # noqa: F401 (fixtures)


def test_check_looks_up_alias_targets_in_the_directory(slapd, tmp_path, request):  # noqa: F811
    secret = tmp_path / "ldap.secret"
    secret.write_text(SERVICE_PASSWORD + "\n")
    aliases = tmp_path / "app" / "aliases"
    overrides = {"directory": {"backend": "ldap"}, "aliases": {"file": str(aliases)},
                 "ldap": {"url": slapd.url, "bind_dn": SERVICE_DN, "bind_password_file": str(secret),
                          "base_dn": BASE_DN, "timeout": "5", "cache_ttl": "0"}}
    app = Appliance(str(tmp_path / "app"), services=("smtp",), overrides=overrides, users={})
    request.node.appliances = [app]
    app.setup()
    # alice is a user and a.smith@ her second address; staff@ is a directory group.
    aliases.write_text("abuse: alice\nteam: alice, a.smith\nsales: alice, staff\n# typo\nsupport: alice, bobb\n")
    result = app.cli("check")
    warnings = [line for line in result.stdout.splitlines() if "warning:" in line]
    assert warnings == [
        f"{aliases}:5: warning: support@example.test -> bobb@example.test: no such user; "
        "mail to support@example.test is refused (550 5.1.1)"], result.stdout
    app.start()
    try:
        with app.smtp() as client:
            for alias in ("team", "sales"):
                assert client.sendmail("someone@outside.example", [f"{alias}@example.test"], make_message(alias)) == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("someone@outside.example", ["support@example.test"], make_message("support"))
            assert refused.value.recipients["support@example.test"][0] == 550
        wait_for_subjects(app, "alice", ["team", "sales"])
        wait_for_subjects(app, "bob", ["sales"])
    finally:
        app.stop()
