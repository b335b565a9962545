"""`mailappliance check` with `[directory] backend = ldap` asks a real slapd about the aliases
file's targets (issue 12 item 6): an alias to an address the directory does not have is a
warning line with the aliases file's name and line, and `check` still exits 0.
"""
from __future__ import annotations

from tests.integration.harness import Appliance
from tests.integration.slapd import BASE_DN, SERVICE_DN, SERVICE_PASSWORD
from tests.integration.test_ldap_appliance import ldap, slapd  # noqa: F401 (fixtures)


def test_check_looks_up_alias_targets_in_the_directory(slapd, tmp_path):  # noqa: F811
    secret = tmp_path / "ldap.secret"
    secret.write_text(SERVICE_PASSWORD + "\n")
    aliases = tmp_path / "app" / "aliases"
    overrides = {"directory": {"backend": "ldap"}, "aliases": {"file": str(aliases)},
                 "ldap": {"url": slapd.url, "bind_dn": SERVICE_DN, "bind_password_file": str(secret),
                          "base_dn": BASE_DN, "timeout": "5"}}
    app = Appliance(str(tmp_path / "app"), services=("smtp",), overrides=overrides, users={})
    app.setup()
    # alice is a user, a.smith@ her second address, staff@ a group, postmaster@ a nisMailAlias.
    aliases.write_text("abuse: postmaster\nsales: alice, a.smith, staff\n# typo\nsupport: alice, bobb\n")
    result = app.cli("check")
    warnings = [line for line in result.stdout.splitlines() if "warning:" in line]
    assert warnings == [f"{aliases}:4: warning: support@example.test -> bobb@example.test: no such user; "
                        "mail to support@example.test is refused (550 5.1.1)"], result.stdout
