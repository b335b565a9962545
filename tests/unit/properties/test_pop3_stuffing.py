"""Byte-stuffing of a POP3 multi-line answer (RFC 1939 3), checked against the rule itself.

store/pop3view.dot_stuff looks at a dot-poor body dot by dot and searches a dot-rich one; both
paths must give exactly what the RFC's rule gives, line by line, for any body.
"""
from __future__ import annotations

from hypothesis import example, given, strategies as st

from appliance.mime import crlf
from appliance.store.pop3view import DOTS_LOOKED_AT, dot_stuff

_pieces = st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"\r", b"a", b"..", b"\r\n.", b"x.y", b" "]), max_size=60)


def by_the_rule(body: bytes) -> bytes:
    """Every line (CRLF-terminated) that begins with "." gets one more in front."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


@given(_pieces)
@example([b"a."] * DOTS_LOOKED_AT + [b"\r\n."])             # the dot line after the dots looked at one by one
@example([b"x."] * (DOTS_LOOKED_AT - 1) + [b"\r\n."])
@example([b"."])
def test_stuffing_follows_the_rule(pieces):
    body = crlf(b"".join(pieces))                             # what the pool stuffs: the CRLF form
    assert dot_stuff(body) == by_the_rule(body)


@given(_pieces)
def test_nothing_to_stuff_is_no_copy(pieces):
    body = crlf(b"".join(pieces))
    if by_the_rule(body) == body:
        assert dot_stuff(body) is body
