"""The mail-flow plots: an SVG per span with one series per outcome holding the counts, a legend
and a time axis, nothing that runs or fetches anything, drawn at most once per half minute."""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

import pytest

from appliance import maillog, stats
from appliance.stats import DAY, MINUTE, EventCounters
from appliance.web import plots

SVG = "{http://www.w3.org/2000/svg}"
START = 1_800_000_000.0          # a whole hour
LEGENDS = ["received", "delivered locally", "relayed", "deferred", "bounced", "rejected"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def classes(element: ET.Element) -> list[str]:
    return (element.get("class") or "").split()


def points(svg: str) -> dict[str, list[tuple[str, int]]]:
    """Legend name -> [(time label, value)] of every data point, read from the SVG's markup."""
    root = ET.fromstring(svg)
    names = [text.text for legends in root.iter(f"{SVG}g") if "legends" in classes(legends)
             for text in legends.iter(f"{SVG}text")]
    overlay = next(g for g in root.iter(f"{SVG}g") if classes(g) == ["plot", "overlay"])
    series = [g for g in overlay if "series" in classes(g)]
    assert len(series) == len(names)
    found = {}
    for name, serie in zip(names, series):
        found[name] = [(dots.find(f"{SVG}desc[@class='x_label']").text,
                        int(dots.find(f"{SVG}desc[@class='value']").text))
                       for dots in serie if "dots" in classes(dots)]
    return found


def label(seconds: float, span: str) -> str:
    return time.strftime(plots.SPAN[span].label, time.localtime(seconds))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counters(clock) -> EventCounters:
    """An hour of mail: 3 received and 2 delivered at START, 1 relayed, 1 bounced and 4 rejected
    seven minutes later, now eight minutes after START."""
    counters = EventCounters(clock)
    counters.add(stats.RECEIVED, count=3)
    counters.add(stats.DELIVERED, count=2)
    clock.now += 7 * MINUTE
    counters.add(stats.RELAYED)
    counters.add(stats.BOUNCED)
    counters.add(stats.REJECTED, "unknown user 550 5.1.1", count=4)
    clock.now += MINUTE
    return counters


def test_the_hour_holds_one_series_per_outcome_with_a_point_per_minute(counters):
    drawn = points(plots.flow_svg(counters, "hour"))
    assert list(drawn) == LEGENDS
    minutes = [label(START + (n - 51) * MINUTE, "hour") for n in range(60)]
    for name, values in drawn.items():
        assert [at for at, _ in values] == minutes, name
    nonzero = {name: {at: v for at, v in values if v} for name, values in drawn.items()}
    assert nonzero == {
        "received": {label(START, "hour"): 3}, "delivered locally": {label(START, "hour"): 2},
        "relayed": {label(START + 7 * MINUTE, "hour"): 1}, "deferred": {},
        "bounced": {label(START + 7 * MINUTE, "hour"): 1}, "rejected": {label(START + 7 * MINUTE, "hour"): 4}}


def test_the_day_counts_per_five_minutes_and_the_week_per_hour(counters, clock):
    day = points(plots.flow_svg(counters, "day"))
    assert len(day["received"]) == 288
    assert day["received"][-2:] == [(label(START, "day"), 3), (label(START + 5 * MINUTE, "day"), 0)]
    assert day["rejected"][-1] == (label(START + 5 * MINUTE, "day"), 4)
    clock.now += 2 * DAY
    week = points(plots.flow_svg(counters, "week"))
    assert len(week["received"]) == 168
    assert week["received"][-49] == (label(START, "week"), 3)
    assert sum(v for _, v in week["relayed"]) == 1 and sum(v for _, v in week["rejected"]) == 4
    assert sum(v for _, v in points(plots.flow_svg(counters, "day"))["received"]) == 0   # a day on


def test_the_svg_runs_nothing_and_fetches_nothing(counters):
    for span in plots.SPANS:
        svg = plots.flow_svg(counters, span)
        root = ET.fromstring(svg)
        tags = {element.tag for element in root.iter() if isinstance(element.tag, str)}
        assert f"{SVG}script" not in tags and f"{SVG}foreignObject" not in tags
        assert not [name for element in root.iter() for name in element.attrib if name.lower().startswith("on")]
        assert re.findall(r"https?://[^\s\"'<>]*", svg) == ["http://www.w3.org/2000/svg"]
        assert "url(" not in svg and "@import" not in svg and "href" not in svg
        assert "<!--" not in svg and not svg.startswith("<?xml")


def test_the_axis_and_the_legend_are_readable(counters):
    svg = plots.flow_svg(counters, "hour")
    root = ET.fromstring(svg)
    assert root.find(f"{SVG}title").text == "Mail flow, last hour (per minute)"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert set(LEGENDS) <= set(texts) and "messages per minute" in texts
    axis = next(g for g in root.iter(f"{SVG}g") if classes(g) == ["axis", "x"])
    shown = [t.text for t in axis.iter(f"{SVG}text")]
    assert shown and all(int(text[-2:]) % 10 == 0 for text in shown)     # a label every ten minutes
    y_axis = next(g for g in root.iter(f"{SVG}g") if classes(g)[:2] == ["axis", "y"])
    assert [t.text for t in y_axis.iter(f"{SVG}text")] == ["0", "1", "2", "3", "4"]    # whole messages
    hovers = [t.text for t in root.iter(f"{SVG}title")]
    assert f"rejected at {label(START + 7 * MINUTE, 'hour')}: 4" in hovers     # the point's tooltip, no script


def test_a_drawing_is_kept_half_a_minute(counters, clock):
    first = plots.flow_svg(counters, "hour")
    counters.add(stats.RECEIVED, count=5)
    clock.now += plots.CACHE_SECONDS - 1
    assert plots.flow_svg(counters, "hour") is first
    clock.now += 1
    fresh = plots.flow_svg(counters, "hour")
    assert fresh is not first and max(v for _, v in points(fresh)["received"]) == 5
    other = EventCounters(clock)                     # other counters have their own drawings
    assert sum(v for _, v in points(plots.flow_svg(other, "hour"))["received"]) == 0


def test_the_counting_service_can_be_given_and_maillog_events_show(clock):
    service = stats.CountingService(clock)
    service.startService()
    try:
        maillog.delivered("Q1", "bob@example.net", "mx.example.net[192.0.2.25]:25", 0.3, via="relay")
    finally:
        service.stopService()
    assert points(plots.flow_svg(service, "hour"))["relayed"][-1] == (label(clock.now, "hour"), 1)


def test_an_unknown_span_is_refused(counters):
    with pytest.raises(ValueError):
        plots.flow_svg(counters, "month")


@pytest.mark.parametrize("top, ticks", [(0, [0, 1]), (3, [0, 1, 2, 3]), (6, [0, 2, 4, 6]), (26, [0, 10, 20, 30]),
                                        (1234, [0, 500, 1000, 1500])])
def test_the_y_axis_has_whole_numbers(top, ticks):
    assert plots._y_ticks(top) == ticks


def test_a_large_count_draws(clock):
    counters = EventCounters(clock)
    counters.add(stats.RECEIVED, count=10**9)
    assert points(plots.draw(counters, "hour"))["received"][-1][1] == 10**9
