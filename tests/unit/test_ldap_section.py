"""The [ldap] section: defaults that fit OpenLDAP's standard schemas, one clear line per mistake."""
from __future__ import annotations

import pytest

from appliance.directory.ldap import DEFAULT_USER_FILTER, LDAPSection, parse_ldap_section

CONF = "/etc/mailappliance/mailappliance.conf"


@pytest.fixture
def base(tmp_path):
    (tmp_path / "ldap.secret").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("not checked here\n")
    return str(tmp_path)


def _minimal(**extra: str) -> dict[str, str]:
    items = {"url": "ldaps://ldap1.example.org, ldap://ldap2.example.org:389",
             "bind_dn": "cn=mailappliance,dc=example,dc=org", "bind_password_file": "ldap.secret",
             "base_dn": "dc=example,dc=org"}
    items.update(extra)
    return items


def test_four_keys_are_enough_and_the_rest_has_working_defaults(base):
    section, problems = parse_ldap_section(_minimal(), base, CONF)
    assert problems == []
    assert section.url == ("ldaps://ldap1.example.org", "ldap://ldap2.example.org:389")
    assert section.bind_password_file == f"{base}/ldap.secret"
    assert (section.timeout, section.cache_ttl, section.pool_size, section.starttls) == (5, 60, 4, False)
    assert section.user_filter == DEFAULT_USER_FILTER
    assert (section.mail_attribute, section.alias_attribute, section.forward_attribute) == \
        ("mail", "mailLocalAddress", "mailRoutingAddress")
    assert section.shared_secret_attribute == ""


def test_every_key_can_be_set(base):
    section, problems = parse_ldap_section(_minimal(
        starttls="yes", ca_file="ca.pem", timeout="2", cache_ttl="0", pool_size="8",
        user_filter="(&(objectClass=posixAccount)(uid={local}))", mail_attribute="mail",
        alias_attribute="", forward_attribute="", disabled_filter="", alias_filter="", group_filter="",
        alias_member_attribute="rfc822MailMember", group_member_attribute="uniqueMember",
        shared_secret_attribute="userPassword"), base, CONF)
    assert problems == []
    assert section == LDAPSection(
        url=section.url, bind_dn=section.bind_dn, bind_password_file=section.bind_password_file,
        base_dn=section.base_dn, starttls=True, ca_file=f"{base}/ca.pem", timeout=2, cache_ttl=0, pool_size=8,
        user_filter="(&(objectClass=posixAccount)(uid={local}))", alias_attribute="", forward_attribute="",
        disabled_filter="", alias_filter="", group_filter="", group_member_attribute="uniqueMember",
        shared_secret_attribute="userPassword")


def test_missing_required_keys_are_each_one_line(base):
    section, problems = parse_ldap_section({}, base, CONF)
    assert section is None
    assert [line.split(":")[0:2] for line in problems] == [[CONF, " [ldap] url"], [CONF, " [ldap] bind_dn"],
                                                           [CONF, " [ldap] bind_password_file"],
                                                           [CONF, " [ldap] base_dn"]]
    assert all("missing; set" in line for line in problems)


def test_unknown_key_suggests_the_nearest(base):
    _, problems = parse_ldap_section(_minimal(bind_passwd_file="x"), base, CONF)
    assert problems == [f"{CONF}: [ldap] bind_passwd_file: unknown key 'bind_passwd_file'; "
                        f"did you mean 'bind_password_file'?"]


@pytest.mark.parametrize("key, value, says", [
    ("url", "http://ldap.example.org", "is not an ldap:// or ldaps:// URL"),
    ("url", "ldap://ldap.example.org:99999", "bad port"),
    ("url", "ldap://ldap.example.org/dc=example", "put the base DN in base_dn"),
    ("bind_dn", "mailappliance", "is not a DN"),
    ("bind_password_file", "nowhere.secret", "not a readable file"),
    ("ca_file", "nowhere.pem", "not a readable file"),
    ("starttls", "perhaps", "is not yes or no"),
    ("timeout", "0", "whole number from 1 to 300"),
    ("timeout", "1.5", "whole number from 1 to 300"),
    ("pool_size", "0", "whole number from 1 to 64"),
    ("cache_ttl", "-1", "whole number from 0 to 86400"),
    ("user_filter", "(mail=alice@example.org)", "must contain {address}"),
    ("user_filter", "(&(mail={address})", "is not a valid LDAP filter"),
    ("disabled_filter", "shadowExpire=1)", "is not a valid LDAP filter"),
    ("mail_attribute", "", "is not an attribute name"),
    ("group_member_attribute", "member;x", "is not an attribute name"),
])
def test_bad_values_name_key_and_reason(base, key, value, says):
    section, problems = parse_ldap_section(_minimal(**{key: value}), base, CONF)
    assert section is None
    assert len(problems) == 1
    assert problems[0].startswith(f"{CONF}: [ldap] {key}: ")
    assert says in problems[0]
