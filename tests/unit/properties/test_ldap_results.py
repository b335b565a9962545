"""Properties of how directory/ldap.py reads search results: random entries and attributes.

Whatever a directory returns (attributes as lists or single values, text or undecodable bytes,
empty, duplicated, several entries, odd result codes), finding a user answers a UserEntry whose
addresses are valid and normalised, None, or DirectoryUnavailable (or _Unanswered, which the
client turns into DirectoryUnavailable or a failover); finding an alias answers a list of
distinct non-empty targets or None.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance import address
from appliance.config import LDAPSection
from appliance.directory import ldap
from appliance.errors import DirectoryUnavailable
from tests.unit.properties.strategies import address_like, addresses

SETTINGS = LDAPSection(url=("ldap://ldap.example.test",), bind_dn="cn=svc,dc=example,dc=test",
                       bind_password_file="/nonexistent", base_dn="dc=example,dc=test",
                       shared_secret_attribute="userPassword")

_text = st.one_of(addresses, address_like, st.text(max_size=20),
                  st.sampled_from(["{CLEARTEXT}pw", "{SSHA}abc", "{plain}", "|/bin/sh", "/etc/passwd", " ", ""]))
_value = st.one_of(_text, _text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=12))
_values = st.one_of(st.lists(_value, max_size=4), _value)
_attributes = st.dictionaries(
    st.sampled_from(["mail", "mailLocalAddress", "mailRoutingAddress", "userPassword", "rfc822MailMember",
                     "member", "other"]), _values, max_size=6)
_entries = st.lists(st.one_of(
    st.builds(lambda dn, attributes: {"type": "searchResEntry", "dn": dn, "attributes": attributes},
              st.sampled_from(["uid=a,dc=example,dc=test", "uid=b,dc=example,dc=test", ""]), _attributes),
    st.just({"type": "searchResRef", "uri": ["ldap://elsewhere/"]})), max_size=3)


class FakeConnection:
    """Answers every search from `answers` (base DN -> entries), with the result code given."""

    class server:
        name = "ldap://ldap.example.test"

    def __init__(self, entries, members, code):
        self._entries, self._members, self._code = entries, members, code
        self.result: dict = {}
        self.response: list = []

    def search(self, base, search_filter, search_scope, attributes, size_limit, time_limit):
        if base == SETTINGS.base_dn:
            self.response = list(self._entries)
            self.result = {"result": self._code, "description": "x"}
        elif search_filter == SETTINGS.disabled_filter:
            self.response, self.result = [], {"result": 0}
        else:
            found = self._members.get(base)
            self.response = [{"type": "searchResEntry", "dn": base, "attributes": found}] if found else []
            self.result = {"result": 0 if found else 32}
        return True


_members = st.dictionaries(st.sampled_from(["uid=a,dc=example,dc=test", "uid=b,dc=example,dc=test", "|x"]),
                           _attributes, max_size=2)
_codes = st.sampled_from([0, 0, 0, 4, 32, 1, 53])


_CLIENT: list = []


def _client():
    """One client for every example: the searches read only the settings."""
    if not _CLIENT:
        _CLIENT.append(ldap.LDAPClient(SETTINGS, "secret"))
    return _CLIENT[0]


@given(_entries, _codes, st.one_of(addresses, address_like))
@example([{"type": "searchResEntry", "dn": "uid=a", "attributes": {"mail": ["a@."]}}], 0, "a@example.test")
@example([{"type": "searchResEntry", "dn": "uid=a", "attributes": {"mail": "İ" * 64 + "@x.test"}}], 0, "a@x.test")
def test_a_user_entry_has_valid_normalised_addresses(entries, code, wanted):
    try:
        found = _client()._find_user(FakeConnection(entries, {}, code), wanted)
    except (DirectoryUnavailable, ldap._Unanswered):
        return
    if found is None:
        return
    record = found.record
    assert address.is_valid(record.address) and address.normalise(record.address) == record.address
    assert record.address in record.addresses
    assert all(address.is_valid(a) and address.normalise(a) == a for a in record.addresses)
    assert found.forward == "" or address.is_valid(found.forward)
    assert record.shared_secret is None or (isinstance(record.shared_secret, str) and record.shared_secret)


@given(_entries, _members, _codes, st.one_of(addresses, address_like))
def test_alias_targets_are_distinct_and_not_empty(entries, members, code, wanted):
    try:
        targets = _client()._find_alias(FakeConnection(entries, members, code), wanted)
    except (DirectoryUnavailable, ldap._Unanswered):
        return
    if targets is None:
        return
    assert all(isinstance(t, str) and t and t == t.strip() for t in targets)
    assert len(set(targets)) == len(targets)


@given(st.lists(_text, max_size=4))
def test_a_shared_secret_is_text_or_none(values):
    secret = ldap._secret(values)
    assert secret is None or (isinstance(secret, str) and secret)


@given(st.one_of(addresses, address_like, st.text(max_size=30)))
def test_filters_are_escaped_whatever_the_address(text):
    filled = ldap.fill_filter(SETTINGS.user_filter, text)
    inner = filled[1:-1]
    assert filled.startswith("(") and filled.endswith(")")
    assert inner.count("(") == inner.count(")") == SETTINGS.user_filter[1:-1].count("(")
