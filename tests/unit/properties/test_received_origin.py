"""The HELO name in our Received line (intake._printable) is outside text: any string becomes
visible ASCII only, at most 255 characters, the same with or without its fast path."""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance.intake import _printable


def _by_character(text: str) -> str:
    return "".join(c if 32 < ord(c) < 127 else "?" for c in text)[:255]


@given(st.text(max_size=400))
@example("client.bench.test")
@example("a b")
@example("tab\there")
@example("x" * 300)
@example("caf\u00e9")
@example("\x7f")
def test_helo_names_become_visible_ascii(text):
    out = _printable(text)
    assert out == _by_character(text)
    assert len(out) <= 255 and all(33 <= ord(c) <= 126 or c == "?" for c in out)
