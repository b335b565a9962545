"""The [ldap] section: defaults that fit OpenLDAP's standard schemas, one clear line per mistake.

[ldap] goes through config.load like every other section (same converters, same suggestion of
the nearest key); whether its files can be read is appliance.checks' business (test_checks.py).
"""
from __future__ import annotations

import pytest

from appliance import config
from appliance.config import DEFAULT_USER_FILTER, LDAPSection
from appliance.errors import ConfigError

HEAD = """\
[appliance]
hostname = mail.example.test
domains = example.test
[directory]
backend = ldap
[ldap]
"""


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


def _write(base: str, items: dict[str, str]) -> str:
    path = f"{base}/mailappliance.conf"
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEAD + "".join(f"{key} = {value}\n" for key, value in items.items()))
    return path


def _section(base: str, items: dict[str, str]) -> LDAPSection:
    return config.load(_write(base, items)).ldap


def _problems(base: str, items: dict[str, str]) -> tuple[str, list[str]]:
    path = _write(base, items)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    return path, caught.value.problems


def test_four_keys_are_enough_and_the_rest_has_working_defaults(base):
    section = _section(base, _minimal())
    assert section.url == ("ldaps://ldap1.example.org", "ldap://ldap2.example.org:389")
    assert section.bind_password_file == f"{base}/ldap.secret"
    assert (section.timeout, section.cache_ttl, section.pool_size, section.starttls) == (5, 60, 4, False)
    assert section.user_filter == DEFAULT_USER_FILTER
    assert (section.mail_attribute, section.alias_attribute, section.forward_attribute) == \
        ("mail", "mailLocalAddress", "mailRoutingAddress")
    assert section.shared_secret_attribute == ""


def test_defaults_in_the_schema_are_the_dataclass_defaults(base):
    section = _section(base, _minimal())
    assert section == LDAPSection(url=section.url, bind_dn=section.bind_dn,
                                  bind_password_file=section.bind_password_file, base_dn=section.base_dn)


def test_every_key_can_be_set(base):
    section = _section(base, _minimal(
        starttls="yes", ca_file="ca.pem", timeout="2", cache_ttl="0", pool_size="8",
        user_filter="(&(objectClass=posixAccount)(uid={local}))", mail_attribute="mail",
        alias_attribute="", forward_attribute="", disabled_filter="", alias_filter="", group_filter="",
        alias_member_attribute="rfc822MailMember", group_member_attribute="uniqueMember",
        shared_secret_attribute="userPassword"))
    assert section == LDAPSection(
        url=section.url, bind_dn=section.bind_dn, bind_password_file=section.bind_password_file,
        base_dn=section.base_dn, starttls=True, ca_file=f"{base}/ca.pem", timeout=2, cache_ttl=0, pool_size=8,
        user_filter="(&(objectClass=posixAccount)(uid={local}))", alias_attribute="", forward_attribute="",
        disabled_filter="", alias_filter="", group_filter="", group_member_attribute="uniqueMember",
        shared_secret_attribute="userPassword")


def test_missing_required_keys_are_each_one_line(base):
    path, problems = _problems(base, {})
    assert [line.split(":")[0:2] for line in problems] == [[path, " [ldap] url"], [path, " [ldap] bind_dn"],
                                                           [path, " [ldap] bind_password_file"],
                                                           [path, " [ldap] base_dn"]]
    assert all("missing; set" in line for line in problems)


def test_unknown_key_suggests_the_nearest(base):
    path, problems = _problems(base, _minimal(bind_passwd_file="x"))
    assert problems == [f"{path}: [ldap] bind_passwd_file: unknown key 'bind_passwd_file'; "
                        f"did you mean 'bind_password_file'?"]


@pytest.mark.parametrize("key, value, says", [
    ("url", "http://ldap.example.org", "is not an ldap:// or ldaps:// URL"),
    ("url", "ldap://ldap.example.org:99999", "bad port"),
    ("url", "ldap://ldap.example.org/dc=example", "put the base DN in base_dn"),
    ("bind_dn", "mailappliance", "is not a DN"),
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
    path, problems = _problems(base, _minimal(**{key: value}))
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: [ldap] {key}: ")
    assert says in problems[0]
