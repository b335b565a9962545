"""Properties of the aliases file parser (aliases.py): any file gives a table or AliasesError.

Whatever the bytes of the file (and of an included list), loading answers an AliasTable or
AliasesError listing the problems, never another exception; resolving any address in a table
answers a list, None, or AliasLoopError.
"""
from __future__ import annotations

import os
import tempfile

from hypothesis import example, given, strategies as st

from appliance.aliases import AliasesError, AliasLoopError, load_aliases
from tests.unit.properties.strategies import address_like, examples

_names = st.sampled_from(["postmaster", "root", "team", "bob", "info@example.test", "Bob", "a b", "", "x@", "@",
                          "\u00e9", "team@other.test", "abuse", "bob.lock", "#x", "\"q\""])
_targets = st.one_of(
    st.sampled_from(["root", "bob", "team", "carol", "bob@elsewhere.test", "|/bin/true", '"|/bin/echo a, b"',
                     "/var/mail/x", "/dev/null", "/tmp/../etc/x", "./rel", ":include:inc.list", ":include:",
                     ":include:missing.list", '"unclosed', "|", "| ", "a@.", "\u00e9@x.test", "|x\x01y", '""',
                     "postmaster", "team@example.test"]),
    address_like)
_definition = st.builds(
    lambda name, colon, targets, sep: name + colon + sep.join(targets),
    _names, st.sampled_from([": ", ":", " : ", " "]), st.lists(_targets, max_size=4),
    st.sampled_from([", ", ",", " ", ",\n  ", "\n\t"]))
_junk = st.text(max_size=40).filter(lambda t: "include" not in t)   # never read arbitrary files off this machine
_lines = st.lists(st.one_of(_definition, _definition, st.sampled_from(["# comment", "", "   continued", "\t"]), _junk),
                  max_size=8).map("\n".join)
_files = st.one_of(_lines.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=80)
                   .filter(lambda b: b"include" not in b))


def _load(text: bytes, included: bytes, allow_commands: bool):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aliases")
        with open(path, "wb") as f:
            f.write(text)
        with open(os.path.join(tmp, "inc.list"), "wb") as f:
            f.write(included)
        return load_aliases(path, ["example.test", "example.org"], allow_commands)


@examples(1.0)
@given(_files, _files, st.booleans(), st.lists(st.one_of(_names, address_like), max_size=4))
@example(b"team: bob\nbob: team\n", b"", False, ["team", "team@example.test"])
@example(b"x: :include:inc.list\n", b"\xff\n", False, [])
@example(b"x: :include:inc.list\n", b":include:inc.list\n", True, ["x@example.test"])
def test_any_file_gives_a_table_or_aliases_error(text, included, allow_commands, lookups):
    try:
        table = _load(text, included, allow_commands)
    except AliasesError as error:
        assert error.args or str(error) is not None
        return
    assert isinstance(table.loop_problems(), list)
    for name in lookups:
        for address in (name, f"{name}@example.test"):
            try:
                found = table.resolve(address)
            except AliasLoopError:
                continue
            assert found is None or (isinstance(found, list) and all(isinstance(t, str) and t for t in found))
