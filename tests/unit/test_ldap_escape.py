"""Filter injection: whatever a client sends as a login or address stays one compared value.

Named after maddy's advisory GHSA-5835-4gvc-32pc, where an unescaped username in the LDAP
filter let `*` and `)(` change what the search matched.
"""
from __future__ import annotations

import pytest
from ldap3.operation.search import parse_filter
from ldap3.protocol.convert import prepare_filter_for_sending

from appliance.config import DEFAULT_ALIAS_FILTER, DEFAULT_GROUP_FILTER, DEFAULT_USER_FILTER
from appliance.directory.ldap import fill_filter

HOSTILE = ["bob)(uid=*", "*", "alice@example.test)(|(mail=*", "*)(objectClass=*", "x\\2a@example.test",
           "nul\x00@example.test", "bob)(&)@example.test", "(|(mail=*))"]
EQUALITY = 10   # ldap3's tag for an equality match node


def _leaves(node) -> list[tuple[int, str, bytes]]:
    """Every comparison in a parsed filter, as (tag, attribute, value as sent on the wire)."""
    if not node.elements:
        return [(node.tag, node.assertion["attr"], prepare_filter_for_sending(node.assertion["value"]))]
    return [leaf for element in node.elements for leaf in _leaves(element)]


def _parsed(text: str):
    return parse_filter(text, None, False, False, None, False)


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("template", [DEFAULT_USER_FILTER, DEFAULT_ALIAS_FILTER, DEFAULT_GROUP_FILTER])
def test_ghsa_5835_4gvc_32pc_hostile_value_is_only_ever_compared_for_equality(template, value):
    harmless = _leaves(_parsed(fill_filter(template, "someone@example.test")))
    hostile = _leaves(_parsed(fill_filter(template, value)))
    assert [(tag, attribute) for tag, attribute, _ in hostile] == [(tag, attribute) for tag, attribute, _ in harmless]
    compared = [raw for (_, _, raw), (_, _, usual) in zip(hostile, harmless) if usual == b"someone@example.test"]
    assert compared and all(raw == value.encode() for raw in compared)
    assert all(tag == EQUALITY for tag, _, _ in hostile)


def test_ghsa_5835_4gvc_32pc_the_classic_login_is_escaped():
    assert fill_filter("(uid={address})", "bob)(uid=*") == r"(uid=bob\29\28uid=\2a)"


def test_local_and_domain_placeholders_are_escaped_too():
    assert fill_filter("(&(uid={local})(o={domain}))", "b*b@ex)ample") == r"(&(uid=b\2ab)(o=ex\29ample))"


def test_a_backslash_cannot_unescape_the_next_character():
    assert fill_filter("(mail={address})", "a\\29b@example.test") == r"(mail=a\5c29b@example.test)"
