"""The mail-flow plots of the status page: server-side SVG drawn by pygal.

Why pygal: it is pure Python and writes SVG natively (no image backend, no numpy, a ~1 MB
install against matplotlib's ~40 MB with numpy and Pillow), it is maintained (Kozea; release
3.1.3 in 2026), and its output is one self-contained <svg> the page can inline: with `js=[]`
it links no script, its CSS is inlined from the package, and it names each chart's styles by
a unique id, so three plots on one page do not restyle each other.

What we change in pygal's output (through its `add_xml_filter` hook, not by drawing anything):
its comments (they carry its web address), the inline <script> with the chart's settings for
its JavaScript (written even with `js=[]`), and the coordinates it stores for its JavaScript
tooltips: without JavaScript these are only weight; each data point keeps its value and time
(`<desc class="value">`, `<desc class="x_label">`, which the tests read) and gains a <title>,
which every browser shows on hover without any script.

Drawing is CPU work (about 0.1 s for the hour, 0.3 s for the day on this machine's cores), so
the page draws on a pool thread (appliance/web/site.py), and each span's SVG is kept for
CACHE_SECONDS: an admin reloading the page, or several admins, cost one drawing per span per
half minute. Thread-safe.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import pygal
from pygal.etree import etree
from pygal.style import Style

from appliance import stats
from appliance.stats import HOUR, MINUTE, EventCounters

CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Span:
    title: str
    width: int             # seconds per data point
    points: int
    label: str             # strftime format of a point's time (the server's local time, as in the log)
    major_minutes: int     # the axis labels the points whose time of day is a multiple of this
    unit: str


SPAN = {
    "hour": Span("last hour", MINUTE, 60, "%H:%M", 10, "per minute"),
    "day": Span("last day", 5 * MINUTE, 288, "%H:%M", 180, "per 5 minutes"),
    "week": Span("last week", HOUR, 168, "%a %d %H:%M", 24 * 60, "per hour"),
}
SPANS = tuple(SPAN)

# (counter kind, legend) in drawing order; colours chosen to read apart, also in grey-scale print
SERIES = (
    (stats.RECEIVED, "received"),
    (stats.DELIVERED, "delivered locally"),
    (stats.RELAYED, "relayed"),
    (stats.DEFERRED, "deferred"),
    (stats.BOUNCED, "bounced"),
    (stats.REJECTED, "rejected"),
)
COLOURS = ("#1f5fbf", "#2e9b45", "#17a2b8", "#e69500", "#c0392b", "#7d3c98")

_STYLE = Style(
    background="#ffffff", plot_background="#ffffff", foreground="#222222", foreground_strong="#000000",
    foreground_subtle="#888888", colors=COLOURS, font_family="sans-serif", label_font_size=12,
    major_label_font_size=12, legend_font_size=13, title_font_size=15, tooltip_font_size=12)

_cache: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, str]]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def flow_svg(counters: Any, span: str) -> str:
    """One <svg> document plotting received, delivered locally, relayed, deferred, bounced and
    rejected over `span` (hour, day or week); `counters` is the EventCounters (or the
    CountingService holding them). Drawn at most once per CACHE_SECONDS per span."""
    if span not in SPAN:
        raise ValueError(f"unknown span {span!r}: one of {', '.join(SPANS)}")
    counters = getattr(counters, "counters", counters)
    now = counters.now()
    with _cache_lock:
        kept = _cache.get(counters, {}).get(span)
    if kept is not None and 0 <= now - kept[0] < CACHE_SECONDS:
        return kept[1]
    svg = draw(counters, span)
    with _cache_lock:
        _cache.setdefault(counters, {})[span] = (now, svg)
    return svg


def draw(counters: EventCounters, span: str) -> str:
    """The SVG of `span` now, without the cache."""
    shape = SPAN[span]
    starts, series = counters.timeline([kind for kind, _ in SERIES], shape.points, shape.width)
    moments = [time.localtime(start) for start in starts]
    labels = [time.strftime(shape.label, moment) for moment in moments]
    major = [label for label, moment in zip(labels, moments)
             if (moment.tm_hour * 60 + moment.tm_min) % shape.major_minutes == 0]
    chart = pygal.Line(
        js=[], disable_xml_declaration=True, style=_STYLE, width=960, height=360, margin=12,
        title=f"Mail flow, {shape.title} ({shape.unit})", y_title=f"messages {shape.unit}",
        legend_at_bottom=True, legend_at_bottom_columns=len(SERIES), truncate_legend=-1,
        x_labels=labels, x_labels_major=major, show_minor_x_labels=False, truncate_label=-1,
        y_labels=_y_ticks(max((max(values) for values in series.values()), default=0)),
        show_dots=True, dots_size=2.5 if shape.points <= 60 else 1.5, stroke_style={"width": 1.5},
        print_values=False)
    chart.add_xml_filter(_ScriptFree([name for _, name in SERIES]))
    for kind, name in SERIES:
        chart.add(name, series[kind])
    return chart.render(is_unicode=True)


def _y_ticks(top: int) -> list[int]:
    """Whole numbers for the y axis (messages come in ones): 0 up to `top` or beyond, in steps
    of 1, 2 or 5 times a power of ten, at most six ticks."""
    step = 1
    for power in range(19):
        step = next((m * 10**power for m in (1, 2, 5) if top <= 5 * m * 10**power), 0)
        if step:
            break
    step = step or max(1, top)
    return list(range(0, max(top, 1) + step, step))[:7]


class _ScriptFree:
    """pygal xml_filter: drop comments, the <script> holding the chart's settings for pygal's
    JavaScript (it adds one even with js=[]) and the tooltips' coordinates; give each data
    point a <title> (`received at 09:41: 3`)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self, root: Any) -> Any:
        for parent in [root, *root.iter()]:
            for child in [c for c in parent if c.tag is etree.Comment or _local(c.tag) == "script"]:
                parent.remove(child)
        for overlay in root.iter():
            if "overlay" not in (overlay.get("class") or "").split() or "plot" not in overlay.get("class", ""):
                continue
            for number, serie in enumerate(child for child in overlay if "series" in (child.get("class") or "")):
                name = self.names[number] if number < len(self.names) else ""
                for dots in serie:
                    self._point(dots, name)
        return root

    @staticmethod
    def _point(dots: Any, name: str) -> None:
        value = label = ""
        for circle in [child for child in dots if _local(child.tag) == "circle"]:
            for axis in ("cx", "cy"):          # 17.096153846153847: a tenth of a pixel is plenty
                if circle.get(axis):
                    circle.set(axis, f"{float(circle.get(axis)):.1f}")
        for desc in [child for child in dots if _local(child.tag) == "desc"]:
            kind = (desc.get("class") or "").split()
            if kind[:1] in (["x"], ["y"]):
                dots.remove(desc)
            elif kind == ["value"]:
                value = desc.text or ""
            elif kind == ["x_label"]:
                label = desc.text or ""
        if value:
            title = etree.SubElement(dots, "title")
            title.text = f"{name} at {label}: {value}"


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""
