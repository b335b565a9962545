"""Strategies and helpers shared by the property tests."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

from hypothesis import settings, strategies as st
from twisted.python.failure import Failure

from appliance import maillog


def examples(fraction: float) -> settings:
    """The current profile's max_examples scaled by `fraction` (for costly properties)."""
    return settings(max_examples=max(10, int(settings.default.max_examples * fraction)))


# Bytes biased towards what parsers split on: line ends, blanks, quotes, brackets, separators.
SPECIAL = b'\r\n \t:;,<>@"\\()[]{}.=*+-/%|#0123456789'
special_bytes = st.lists(st.one_of(st.sampled_from([bytes([c]) for c in SPECIAL]),
                                   st.binary(min_size=1, max_size=4)), max_size=60).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=300), special_bytes)

atom_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+", min_size=1,
                    max_size=12)
domains = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
                   min_size=1, max_size=3).map(".".join)
addresses = st.builds(lambda local, domain: f"{local}@{domain}",
                      st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_+", min_size=1, max_size=16), domains)


@contextlib.contextmanager
def no_logged_failures() -> Iterator[list]:
    """Collects what `maillog.log.failure` is called with: a session that logs a failure caught a bug."""
    caught: list = []

    def record(text, failure=None, **fields):
        caught.append((text, failure if failure is not None else Failure()))

    with mock.patch.object(maillog.log, "failure", side_effect=record):
        yield caught

# Address-shaped text built from awkward pieces: empty labels, dots alone, brackets, non-ASCII
# letters whose lower case is longer, IDNA prefixes, blanks and control characters.
_local_pieces = st.sampled_from(["a", "Bob", "x.y", "İ", "ß", "\u00e9", "\"q\"", " ", "\t", "\x7f", "+tag", "", "@",
                                 "postmaster", "Postmaster", "<", ">", ":", "%"])
_domain_pieces = st.sampled_from(["example.test", "Example.TEST", ".", "..", "", "b.", "xn--", "xn--ü", "ü",
                                  "\u00df", "[1.2.3.4]", "[", "]", "ІДН", "a" * 64, " ", "\x00", "\u3002", "x.test\u3002", "\uff0e"])
address_like = st.builds(lambda local, at, domain: "".join(local) + at + "".join(domain),
                         st.lists(_local_pieces, max_size=4).map(lambda p: p * (1 + len(p) % 3)),
                         st.sampled_from(["@", "@", "", "@@"]),
                         st.lists(_domain_pieces, max_size=4))
