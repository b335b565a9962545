"""Recipient resolution at RCPT time: aliases, lists, plus-addressing, catch-all, masquerading."""
from __future__ import annotations

import pytest
from twisted.internet import defer

from appliance import aliases as aliasesmod
from appliance.intake import RecipientResolver
from appliance.interfaces import UserRecord
from appliance.masquerade import Masquerader
from appliance.replies import SMTPReplyError

USERS = {a: UserRecord(a, frozenset({a})) for a in ("alice@example.test", "bob@example.test", "root@example.test")}


class Directory:
    supports_shared_secrets = False

    def __init__(self, directory_aliases=None):
        self.directory_aliases = directory_aliases

    def lookup(self, addr):
        return defer.succeed(USERS.get(addr.lower()))


class LDAPLike(Directory):
    def resolve_alias(self, addr):
        return defer.succeed((self.directory_aliases or {}).get(addr))


def table(tmp_path, text):
    path = tmp_path / "aliases"
    path.write_text(text)
    return aliasesmod.AliasResolver(str(path), ("example.test",))


def resolve(resolver, rcpt, insider=True):
    d = resolver.resolve(rcpt, insider)
    results = []
    d.addBoth(results.append)
    (result,) = results
    if isinstance(result, Exception) or hasattr(result, "value"):
        raise result.value
    return [(r.address, r.local, r.original, r.extension) for r in result]


def reply_of(resolver, rcpt, insider=True):
    with pytest.raises(SMTPReplyError) as info:
        resolve(resolver, rcpt, insider)
    return info.value.reply.line().decode()


def test_user_alias_list_and_forward(tmp_path):
    r = RecipientResolver(Directory(), table(tmp_path, "contact: alice\nstaff: alice, bob, alice@example.test\n"
                                             "fwd: someone@outside.test\n"), ("example.test",))
    assert resolve(r, "alice@example.test") == [("alice@example.test", True, "", "")]
    assert resolve(r, "contact@example.test") == [("alice@example.test", True, "contact@example.test", "")]
    assert [a for a, *_ in resolve(r, "staff@example.test")] == ["alice@example.test", "bob@example.test"]
    assert resolve(r, "fwd@example.test") == [("someone@outside.test", False, "fwd@example.test", "")]
    assert reply_of(r, "nobody@example.test").startswith("550 5.1.1")


def test_alias_to_unknown_local_user_is_refused(tmp_path):
    r = RecipientResolver(Directory(), table(tmp_path, "ghost: nobody\n"), ("example.test",))
    assert reply_of(r, "ghost@example.test").startswith("550 5.1.1")


def test_remote_recipient_passes_through():
    r = RecipientResolver(Directory(), None, ("example.test",))
    assert resolve(r, "x@elsewhere.test") == [("x@elsewhere.test", False, "", "")]


def test_plus_addressing_keeps_the_tag_and_can_be_off():
    r = RecipientResolver(Directory(), None, ("example.test",))
    assert resolve(r, "alice+lists@example.test") == [("alice@example.test", True, "alice+lists@example.test", "+lists")]
    off = RecipientResolver(Directory(), None, ("example.test",), delimiter="")
    assert reply_of(off, "alice+lists@example.test").startswith("550 5.1.1")
    assert reply_of(r, "+lists@example.test").startswith("550 5.1.1")


def test_catch_all_takes_unknown_users_only():
    r = RecipientResolver(Directory(), None, ("example.test",), catch_all={"example.test": "bob@example.test"})
    assert resolve(r, "anything@example.test") == [("bob@example.test", True, "anything@example.test", "")]
    assert resolve(r, "alice@example.test") == [("alice@example.test", True, "", "")]


def test_restricted_list_only_for_insiders(tmp_path):
    r = RecipientResolver(Directory(), table(tmp_path, "all: alice, bob\n"), ("example.test",),
                          restricted=frozenset({"all@example.test"}))
    assert reply_of(r, "all@example.test", insider=False).startswith("550 5.7.1")
    assert len(resolve(r, "all@example.test", insider=True)) == 2


def test_masqueraded_host_address_is_local():
    m = Masquerader(domains=("lan.example.test",), as_domain="example.test")
    r = RecipientResolver(Directory(), None, ("example.test",), masquerader=m)
    assert r.is_local("alice@pc12.lan.example.test")
    assert resolve(r, "alice@pc12.lan.example.test")[0][:2] == ("alice@example.test", True)


def test_directory_lists_expand_recursively_and_loops_stop():
    ldap = LDAPLike({"staff@example.test": ["alice@example.test", "team@example.test"],
                     "team@example.test": ["bob@example.test", "alice@example.test"],
                     "loop@example.test": ["loop2@example.test"], "loop2@example.test": ["loop@example.test"]})
    r = RecipientResolver(ldap, None, ("example.test",))
    assert [a for a, *_ in resolve(r, "staff@example.test")] == ["alice@example.test", "bob@example.test"]
    assert reply_of(r, "loop@example.test").startswith("550 5.4.6")


def test_aliases_file_target_that_is_a_directory_list_expands_to_its_members(tmp_path):
    ldap = LDAPLike({"staff@example.test": ["alice@example.test", "team@example.test"],
                     "team@example.test": ["bob@example.test", "outside@elsewhere.test"]})
    r = RecipientResolver(ldap, table(tmp_path, "sales: staff@example.test, alice\n"), ("example.test",))
    assert resolve(r, "sales@example.test") == [("alice@example.test", True, "sales@example.test", ""),
                                                 ("bob@example.test", True, "sales@example.test", ""),
                                                 ("outside@elsewhere.test", False, "sales@example.test", "")]
    assert reply_of(r, "nobody@example.test").startswith("550 5.1.1")


def test_aliases_file_target_neither_user_nor_list_is_still_refused(tmp_path):
    r = RecipientResolver(LDAPLike({}), table(tmp_path, "sales: ghost@example.test\n"), ("example.test",))
    assert reply_of(r, "sales@example.test").startswith("550 5.1.1")


def test_loop_through_aliases_file_and_directory_list_is_refused(tmp_path):
    ldap = LDAPLike({"staff@example.test": ["alice@example.test", "sales@example.test"]})
    r = RecipientResolver(ldap, table(tmp_path, "sales: staff@example.test\n"), ("example.test",))
    assert reply_of(r, "sales@example.test").startswith("550 5.4.6")


def test_command_in_a_directory_list_named_by_the_aliases_file_is_refused(tmp_path):
    ldap = LDAPLike({"staff@example.test": ["alice@example.test", "|/bin/sh -c id"]})
    r = RecipientResolver(ldap, table(tmp_path, "sales: staff@example.test\n"), ("example.test",))
    assert reply_of(r, "sales@example.test") == "550 5.7.1 Recipient address rejected: delivery target not allowed"
