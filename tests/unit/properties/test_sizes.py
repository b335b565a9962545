"""Properties of config.parse_size, which reads `[storage] quota`, the users file's `quota=` and the LDAP quota
attribute: any text gives a size or a ValueError (a config error, a bad line, an ignored value), never another
exception; what format_size writes reads back as the same number."""
from __future__ import annotations

import pytest
from hypothesis import example, given, strategies as st

from appliance.config import MAX_SIZE, format_size, parse_size

sizes_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda n, space, unit, tail: f"{n}{space}{unit}{tail}", st.integers(0, 10**22),
              st.sampled_from(["", " ", "  "]), st.sampled_from(list("kKmMgGtTbBpP") + ["", "ki", "İ"]),
              st.sampled_from(["", "b", "B", "iB", "ib", "bb", "\n"])))


@given(sizes_text)
@example("9" * 20 + "T")
@example("\u212a")            # KELVIN SIGN lower-cases to k; it is no digit and no unit here
@example("１G")               # a full-width digit is no digit for a quota
def test_any_text_is_a_size_or_a_value_error(text):
    try:
        size = parse_size(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(size, int) and 0 <= size <= MAX_SIZE


@given(st.integers(0, MAX_SIZE))
def test_format_size_reads_back(size):
    written = format_size(size)
    assert parse_size("0" if written == "unlimited" else written) == size


@pytest.mark.parametrize("text, size", [("", 0), ("0", 0), ("1G", 1 << 30), ("500M", 500 << 20), ("2048k", 2 << 20),
                                        ("1GB", 1 << 30), ("1GiB", 1 << 30), ("12 M", 12 << 20), ("123", 123),
                                        (" 7b ", 7)])
def test_what_operators_write(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["-1", "1.5G", "1 G B", "G", "5ib", "1P", "ten", "１G", "0x10"])
def test_what_is_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)
