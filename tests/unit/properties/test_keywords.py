"""Properties of the keyword rules (store/keywords.py): Dovecot's dovecot-keywords file, a client's flag list,
and the letters in Maildir names.

Any text reads as a keyword map without error, at most 26 names, each a valid atom, none twice
(case-insensitively); what we write reads back the same. Any flag list a client sends is either
refused with ValueError or becomes system flags in their spelling plus valid keywords. Letters
and names map back and forth.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance.store import keywords
from appliance.store.base import MailboxError, SYSTEM_FLAGS
from appliance.store.maildir import info_letters, split_name

atoms = st.text(alphabet=st.sampled_from(keywords._ATOM_CHARS), min_size=1, max_size=12)
words = st.one_of(atoms, st.text(max_size=12), st.sampled_from(["\\Seen", "\\SEEN", "\\Recent", "\\*", "$Junk", "a]"]))
lines = st.one_of(st.builds(lambda n, w: f"{n} {w}", st.integers(-1, 40), words), st.text(max_size=20))


@given(st.lists(lines, max_size=40).map("\n".join))
@example("0 a\n0 b\n1 A\n30 x\n2 \\Seen\n")
def test_any_keyword_file_reads_as_a_sane_map(text):
    found = keywords.parse_file(text)
    names = keywords.listed(found)
    assert len(found.names) <= keywords.MAX_KEYWORDS
    assert all(keywords.valid(name) for name in names)
    assert len({name.lower() for name in names}) == len(names)
    again = keywords.parse_file(keywords.format_file(found))
    assert keywords.listed(again) == names
    assert all(again.letters_of([name]) == found.letters_of([name]) for name in names)


@given(st.lists(words, max_size=8))
def test_client_flags_are_refused_or_clean(flags):
    try:
        clean = keywords.client_flags(flags)
    except ValueError:
        assert any(not keywords.valid(f) and f.lower() not in {s.lower() for s in SYSTEM_FLAGS} for f in flags)
        return
    system, names = keywords.split(clean)
    assert system <= set(SYSTEM_FLAGS)
    assert all(keywords.valid(name) for name in names)


@given(st.lists(atoms, max_size=30), st.sets(st.sampled_from(SYSTEM_FLAGS)))
def test_defined_keywords_round_trip_through_maildir_names(names, system):
    folder = keywords.KeywordMap()
    try:
        flags, _ = folder.define(frozenset(names) | system)
    except MailboxError as refused:
        assert refused.code == "LIMIT" and len({n.lower() for n in names}) > keywords.MAX_KEYWORDS
        return
    name = f"1700000000.M1P2Q3.host,S=10:2,{info_letters(flags, 'x:2,P', folder)}"
    assert split_name(name, folder) == ("1700000000.M1P2Q3.host,S=10", flags)
    assert "P" in name.partition(":")[2]             # a letter we do not know is kept
