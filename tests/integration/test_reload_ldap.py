"""SIGHUP reloads the [ldap] settings of a running appliance, against real slapd instances."""
from __future__ import annotations

from tests.integration.test_ldap_appliance import ALICE, LDAPSetup, ldap, slapd  # noqa: F401 (fixtures)
from tests.integration.test_reload import rcpt_reply, reload, rewrite


def test_a_new_ldap_url_is_used_after_reload(ldap: LDAPSetup, slapd):
    second = ldap.slapd("second")
    app = ldap.appliance(slapd.url)
    assert rcpt_reply(app, ALICE) == 250
    slapd.stop()                                   # the directory moves to another server
    assert rcpt_reply(app, ALICE) == 451           # still asking the old one: temporary failure
    rewrite(app, ldap={"url": second.url})
    outcome = reload(app)
    assert "[ldap] url" in outcome and "reloaded" in outcome, outcome
    assert rcpt_reply(app, ALICE) == 250


def test_ldap_settings_that_fail_the_check_are_refused(ldap: LDAPSetup, slapd, tmp_path):
    app = ldap.appliance(slapd.url)
    rewrite(app, ldap={"bind_password_file": str(tmp_path / "missing.secret")})
    outcome = reload(app)
    assert "reload-refused" in outcome and "[ldap] bind_password_file" in outcome, outcome
    assert rcpt_reply(app, ALICE) == 250
