"""`user show`: what an operator reads about one address, for the users file and (faked) LDAP."""
from __future__ import annotations

import os

import pytest

from appliance import config, usershow
from appliance.directory.file import UserEntry, format_entry
from appliance.directory.ldap import UserEntry as LDAPUserEntry
from appliance.errors import DirectoryUnavailable
from appliance.interfaces import UserRecord
from appliance.usershow import ShowError, show_user

CONF = """\
[appliance]
hostname = mail.example.test
domains = example.test
"""

HASH = "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA"
USERS = [
    "# people",
    "",
    format_entry(UserEntry("alice@example.test", HASH, None, ("a.smith@example.test",))),
    format_entry(UserEntry("bob@example.test", HASH, "bobs-cram-secret")),
    format_entry(UserEntry("carol@example.test", "!" + HASH)),
]
ALIASES = """\
team: alice, bob
postmaster: alice
"""


@pytest.fixture
def cfg(tmp_path) -> config.Config:
    (tmp_path / "mailappliance.conf").write_text(CONF)
    (tmp_path / "users").write_text("\n".join(USERS) + "\n")
    (tmp_path / "aliases").write_text(ALIASES)
    return config.load(str(tmp_path / "mailappliance.conf"))


def fields(lines: list[str]) -> dict[str, str]:
    """`name   value` lines as a dict (the value of the last line with that name)."""
    result = {}
    for line in lines:
        name, value = line[:14].strip(), line[15:]
        result[name] = value
    return result


def test_user_by_an_extra_address_shows_entry_mailbox_and_addresses(cfg):
    shown = fields(show_user(cfg, "A.Smith@Example.TEST"))
    assert shown == {
        "address": "a.smith@example.test",
        "entry": f"{cfg.directory.users_file} line 3",
        "primary": "alice@example.test",
        "addresses": "a.smith@example.test, alice@example.test",
        "mailbox": os.path.join(cfg.appliance.state_dir, "mail/example.test/alice") + " (maildir)",
        "logins": "enabled",
        "shared secret": "none",
        "quota": "unlimited ([storage] quota); 0 KiB used",
    }


def test_quota_shows_usage_of_every_folder_and_where_the_limit_comes_from(cfg, tmp_path):
    from appliance.directory.file import set_quota
    from appliance.store.maildir import write
    mailbox = os.path.join(cfg.appliance.state_dir, "mail/example.test/alice")
    write(mailbox, b"Subject: a\r\n\r\n" + b"x" * 3000 + b"\r\n")
    write(mailbox + "/.Trash", b"Subject: b\r\n\r\n" + b"y" * 3000 + b"\r\n")
    set_quota(cfg.directory.users_file, "alice@example.test", 10 * 1024)
    assert fields(show_user(cfg, "alice@example.test"))["quota"] == "6 KiB used of 10K (58%; the user's own)"
    set_quota(cfg.directory.users_file, "alice@example.test", None)
    assert fields(show_user(cfg, "alice@example.test"))["quota"] == "unlimited ([storage] quota); 6 KiB used"


def test_shared_secret_is_said_to_exist_but_never_shown(cfg):
    lines = show_user(cfg, "bob@example.test")
    assert fields(lines)["shared secret"] == "set"
    assert fields(lines)["entry"].endswith("line 4")
    text = "\n".join(lines)
    assert "bobs-cram-secret" not in text and HASH not in text and "c2FsdA" not in text


def test_disabled_user(cfg):
    assert fields(show_user(cfg, "carol@example.test"))["logins"] == "disabled"


def test_alias_shows_its_final_targets(cfg):
    shown = fields(show_user(cfg, "team@example.test"))
    assert shown["expands to"] == "alice@example.test, bob@example.test (aliases file)"
    assert shown["user"] == f"none: not in {cfg.directory.users_file}"


def test_user_that_is_also_an_alias_shows_both(cfg, tmp_path):
    (tmp_path / "aliases").write_text("alice: alice, alice@elsewhere.example\n")
    shown = fields(show_user(cfg, "alice@example.test"))
    assert shown["primary"] == "alice@example.test"
    assert shown["expands to"] == "alice@example.test, alice@elsewhere.example (aliases file)"


def test_broken_aliases_file_is_reported_not_fatal(cfg, tmp_path):
    (tmp_path / "aliases").write_text("team alice\n")
    shown = fields(show_user(cfg, "alice@example.test"))
    assert shown["primary"] == "alice@example.test"
    assert "the aliases file has problems" in shown["expands to"]
    assert "missing colon" in shown["expands to"]


@pytest.mark.parametrize("text, message", [
    ("nobody@example.test", "nobody@example.test: no user, alias or list has this address"),
    ("alice@elsewhere.example", "alice@elsewhere.example: elsewhere.example is not one of [appliance] domains"),
    ("not an address", "'not an address' is not a mail address; write user@domain"),
])
def test_unknown_foreign_or_bad_addresses_are_one_clear_error(cfg, text, message):
    with pytest.raises(ShowError) as caught:
        show_user(cfg, text)
    assert str(caught.value).startswith(message)


def test_missing_users_file_means_no_users(cfg, tmp_path):
    os.unlink(tmp_path / "users")
    with pytest.raises(ShowError, match="no user, alias or list"):
        show_user(cfg, "alice@example.test")


# ---- LDAP, with the blocking client faked ------------------------------------------------------------

LDAP_CONF = CONF + """
[directory]
backend = ldap

[ldap]
url = ldap://ldap.example.test
bind_dn = cn=mailappliance,dc=example,dc=test
bind_password_file = ldap.secret
base_dn = dc=example,dc=test
"""

ALICE_DN = "uid=alice,ou=people,dc=example,dc=test"


class FakeClient:
    """The blocking LDAPClient's find_user/find_alias, answering from `users` and `lists`."""

    alice = LDAPUserEntry(ALICE_DN, UserRecord("alice@example.test",
                                               frozenset({"alice@example.test", "a.smith@example.test"})))
    users = {"alice@example.test": alice, "a.smith@example.test": alice}
    lists = {"staff@example.test": ["alice@example.test", "bob@example.test"]}
    failure: Exception | None = None
    closed = 0

    def __init__(self, settings, password: str):
        assert password == "s3cret"

    def find_user(self, address: str, deadline: float):
        if self.failure:
            raise self.failure
        return self.users.get(address)

    def find_alias(self, address: str, deadline: float):
        return self.lists.get(address)

    def close(self) -> None:
        FakeClient.closed += 1


@pytest.fixture
def ldap_cfg(tmp_path, monkeypatch) -> config.Config:
    (tmp_path / "ldap.secret").write_text("s3cret\n")
    (tmp_path / "m.conf").write_text(LDAP_CONF)
    monkeypatch.setattr(usershow, "LDAPClient", FakeClient)
    return config.load(str(tmp_path / "m.conf"))


def test_ldap_user_shows_the_dn(ldap_cfg):
    shown = fields(show_user(ldap_cfg, "a.smith@example.test"))
    assert shown["entry"] == ALICE_DN
    assert shown["primary"] == "alice@example.test"


def test_ldap_group_shows_its_members(ldap_cfg):
    shown = fields(show_user(ldap_cfg, "staff@example.test"))
    assert shown["expands to"] == "alice@example.test, bob@example.test (directory)"
    assert shown["user"] == "none: no user entry in the directory"


def test_ldap_unavailable_is_one_line_and_the_client_is_closed(ldap_cfg, monkeypatch):
    monkeypatch.setattr(FakeClient, "failure", DirectoryUnavailable("ldap://ldap.example.test: connection refused"))
    closed = FakeClient.closed
    with pytest.raises(ShowError, match="^the directory could not tell: ldap://ldap.example.test: connection refused$"):
        show_user(ldap_cfg, "alice@example.test")
    assert FakeClient.closed == closed + 1
