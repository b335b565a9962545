"""Properties of the web listener's parsers of client bytes: the Basic header and the event filter.

basic_credentials never raises, whatever the header; what it returns round-trips through an
encoding a browser would send; a filter of any text never raises and an empty one matches all.
"""
from __future__ import annotations

import base64

from hypothesis import given, strategies as st

from appliance.web import access
from appliance.web.events import Event, EventRing


@given(st.binary(max_size=600))
def test_any_authorization_header_gives_credentials_or_none(header):
    result = access.basic_credentials(header)
    assert result is None or (isinstance(result[0], str) and result[0] and isinstance(result[1], str))


@given(st.text(min_size=1, max_size=80).filter(lambda s: ":" not in s), st.text(max_size=80))
def test_what_a_browser_sends_is_read_back(login, password):
    header = b"Basic " + base64.b64encode(f"{login}:{password}".encode("utf-8"))
    assert access.basic_credentials(header) == (login, password)


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=400), st.integers(), st.none()),
                       max_size=30),
       st.text(max_size=60))
def test_any_event_is_kept_bounded_and_any_filter_works(fields, wanted):
    ring = EventRing(lambda: 0.0, size=3)
    for _ in range(5):
        ring("received", fields)
    events = ring.recent(10)
    assert len(events) == 3
    assert all(len(e.fields) <= 16 and all(len(v) <= 300 for _, v in e.fields) for e in events)
    ring.recent(10, wanted)
    assert Event(0.0, "x", ()).matches("") and Event(0.0, "x", ()).matches("  ")
