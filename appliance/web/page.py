"""The status page: one HTML document, no JavaScript, nothing fetched, inline CSS.

Built from the same report `mailappliance status` prints (appliance/status.py), plus what only
the page shows: the plots, the deferred mail by destination, the TLS share, rejections by client
network and the last log events. Every value that came from outside (addresses, replies, log
fields) is escaped here, in one place: `_e`. The SVG plots are ours (appliance/web/plots.py)
and are inlined as they are; the Content-Security-Policy (site.py) forbids scripts anyway.
"""
from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance import stats
from appliance.envelope import Envelope

WINDOWS = {"last_hour": stats.HOUR, "last_day": stats.DAY}
WINDOW_NAMES = {"last_hour": "last hour", "last_day": "last 24 hours"}
SPAN_NAMES = {"hour": "Last hour (per minute)", "day": "Last day (per hour)", "week": "Last week (per hour)"}
MAX_ROWS = 20
CERTIFICATE_WARN_DAYS = 14

LOGIN_NEEDED = "Log in to see the status page."
LOGIN_FAILED = "Login refused."
NOT_ALLOWED = "This login may not see the status page."

STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:80em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:.15em .7em;text-align:left;vertical-align:top}
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#a00;font-weight:bold}.muted{color:#777}figure{margin:.5em 0}svg{max-width:100%;height:auto}
code{font-size:.9em}form.inline{display:inline}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class View:
    """Everything one page shows."""

    report: dict[str, Any]
    svgs: Mapping[str, str] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    wanted: str = ""
    destinations: Mapping[str, int] = field(default_factory=dict)
    tls_share: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    rejected_networks: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    login: str | None = None


def deferred_destinations(envelopes: Iterable[Envelope]) -> dict[str, int]:
    """Domain -> recipients waiting after a failed attempt (most first, at most MAX_ROWS)."""
    domains: Counter[str] = Counter()
    for envelope in envelopes:
        for rcpt in envelope.pending():
            if rcpt.last_error:
                domains[rcpt.address.rpartition("@")[2].lower() or "(no domain)"] += 1
    return dict(domains.most_common(MAX_ROWS))


# --- small pieces ----------------------------------------------------------------------------------

def _document(title: str, body: str) -> bytes:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n").encode("utf-8")


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], table_id: str = "",
           numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"n\">{_e(v)}</td>" if i in numeric else f"<td>{_e(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return "<p class=\"muted\">None.</p>"
    ident = f" id=\"{_e(table_id)}\"" if table_id else ""
    return f"<table{ident}><tr>{head}</tr>{''.join(body)}</table>"


def duration(seconds: float | None) -> str:
    """`3 d 4 h`, `5 h 2 min`, `12 min`, `40 s`: how long, the way an operator says it."""
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{secs} s"


def size(count: int | None) -> str:
    if count is None:
        return "missing"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


# --- the sections ----------------------------------------------------------------------------------

def _flow(report: Mapping[str, Any]) -> str:
    mail = report.get("mail", {})
    rows = [(kind, *(mail.get(w, {}).get(kind, 0) for w in WINDOWS)) for kind in stats.FLOW]
    cells = []
    for kind, *counts in rows:
        numbers = "".join(f"<td class=\"n\" id=\"{_e(kind)}-{w}\">{_e(n)}</td>" for w, n in zip(WINDOWS, counts))
        cells.append(f"<tr><td>{_e(kind)}</td>{numbers}</tr>")
    head = "".join(f"<th>{_e(WINDOW_NAMES[w])}</th>" for w in WINDOWS)
    return f"<h2>Mail flow</h2><table id=\"flow\"><tr><th>messages</th>{head}</tr>{''.join(cells)}</table>"


def _plots(svgs: Mapping[str, str]) -> str:
    parts = ["<h2>Plots</h2>"]
    for span, name in SPAN_NAMES.items():
        svg = svgs.get(span)
        inner = svg if svg else "<p class=\"muted\">This plot could not be drawn; see the log.</p>"
        parts.append(f"<figure id=\"plot-{_e(span)}\"><figcaption>{_e(name)}</figcaption>{inner}</figure>")
    return "".join(parts)


def _queue(queue: Mapping[str, Any], destinations: Mapping[str, int]) -> str:
    summary = _table(["messages", "held", "deferred", "recipients waiting", "oldest"],
                     [(queue.get("messages", 0), queue.get("held", 0), queue.get("deferred", 0),
                       queue.get("recipients", 0), duration(queue.get("oldest")))],
                     table_id="queue", numeric=range(5))
    by_destination = _table(["destination", "recipients"], destinations.items(), "deferred-destinations", [1])
    by_reason = _table(["reason", "recipients"], [(r["reason"], r["recipients"]) for r in queue.get("reasons", [])],
                       "deferred-reasons", [1])
    return (f"<h2>Queue</h2>{summary}<h3>Deferred by destination</h3>{by_destination}"
            f"<h3>Deferred by reason</h3>{by_reason}")


def _rejections(report: Mapping[str, Any], networks: Mapping[str, Mapping[str, int]]) -> str:
    parts = ["<h2>Rejections</h2>"]
    for window in WINDOWS:
        reasons = sorted(report.get("rejected", {}).get(window, {}).items(), key=lambda item: (-item[1], item[0]))
        parts.append(f"<h3>By reason, {_e(WINDOW_NAMES[window])}</h3>")
        parts.append(_table(["reason", "rejections"], reasons[:MAX_ROWS], f"rejected-{window}", [1]))
    by_network = sorted(networks.get("last_day", {}).items(), key=lambda item: (-item[1], item[0]))
    parts.append("<h3>By client network, last 24 hours</h3>")
    parts.append(_table(["network", "rejections"], by_network[:MAX_ROWS], "rejected-networks", [1]))
    return "".join(parts)


def _services(report: Mapping[str, Any], tls_share: Mapping[str, Mapping[str, tuple[int, int]]]) -> str:
    share = tls_share.get("last_day", {})
    rows = []
    for service in report.get("services", []):
        sessions, connections = share.get(service["name"], (0, 0))
        percent = f"{100 * sessions / connections:.0f} % of {connections}" if connections else "-"
        rows.append((service["name"], service.get("endpoint", ""), service.get("address") or "not bound", percent))
    return "<h2>Services</h2>" + _table(["service", "[listen]", "bound to", "TLS, last 24 hours"], rows, "services")


def _logins(report: Mapping[str, Any]) -> str:
    failed = report.get("failed_logins", {})
    rows = [(WINDOW_NAMES[w], failed.get(w, 0)) for w in WINDOWS]
    return "<h2>Failed logins</h2>" + _table(["period", "failed logins"], rows, "failed-logins", [1])


def _certificate(cert: Mapping[str, Any] | None) -> str:
    if not cert:
        return "<h2>Certificate</h2><p class=\"warn\">No certificate is loaded.</p>"
    days = cert.get("days", 0)
    left = f"<span class=\"warn\">{_e(days)} days</span>" if days < CERTIFICATE_WARN_DAYS else f"{_e(days)} days"
    return (f"<h2>Certificate</h2><table id=\"certificate\"><tr><th>names</th><td>{_e(', '.join(cert['names']))}"
            f"</td></tr><tr><th>valid until</th><td>{_e(cert['not_after'])}</td></tr>"
            f"<tr><th>left</th><td>{left}</td></tr><tr><th>file</th><td>{_e(cert.get('path', ''))}</td></tr></table>")


def _disk(disk: Mapping[str, Any] | None) -> str:
    if not disk:
        return ""
    rows = [(f["name"], f["path"], size(f["bytes"])) for f in disk.get("folders", [])]
    age = disk.get("age")
    note = "" if age is None else f"<p class=\"muted\">measured {_e(duration(age))} ago</p>"
    return "<h2>Disk used</h2>" + _table(["what", "folder", "size"], rows, "disk", [2]) + note


def _events(events: list[Any], wanted: str) -> str:
    form = ("<form method=\"get\" action=\"/\"><label>Queue id or address: "
            f"<input name=\"q\" value=\"{_e(wanted)}\" maxlength=\"200\"></label> "
            "<button type=\"submit\">Filter</button></form>")
    rows = [(_utc(item.when), item.event, " ".join(f"{k}={v}" for k, v in item.fields)) for item in events]
    title = f"Last events matching “{_e(wanted)}”" if wanted else "Last events"
    return f"<h2>{title}</h2>{form}" + _table(["time", "event", "details"], rows, "events")


def render(view: View) -> bytes:
    report = view.report
    who = ""
    if view.login:
        who = (f"<p>Logged in as {_e(view.login)}. <form class=\"inline\" method=\"post\" action=\"/logout\">"
               "<button type=\"submit\">Log out</button></form></p>")
    header = (f"<h1>{_e(report.get('hostname', ''))}: mail server status</h1>{who}"
              f"<p class=\"muted\">mailappliance {_e(report.get('version', ''))}, up "
              f"{_e(duration(report.get('uptime')))}, at {_e(_utc(report.get('now', time.time())))}</p>")
    body = "".join([
        header, _flow(report), _plots(view.svgs), _queue(report.get("queue", {}), view.destinations),
        _rejections(report, view.rejected_networks), _services(report, view.tls_share), _logins(report),
        _certificate(report.get("certificate")), _disk(report.get("disk")), _events(view.events, view.wanted),
    ])
    return _document(f"{report.get('hostname', '')} status", body)


def login_form(note: str = "") -> bytes:
    """The admin login; POST to /login (the only form that changes anything: it starts a session)."""
    text = f"<p class=\"warn\">{_e(note)}</p>" if note else ""
    return _document("Log in", f"<h1>Mail server status: log in</h1>{text}"
                     "<form method=\"post\" action=\"/login\">"
                     "<p><label>Address <input name=\"login\" id=\"login\" autocomplete=\"username\" "
                     "maxlength=\"320\"></label></p>"
                     "<p><label>Password <input name=\"password\" id=\"password\" type=\"password\" "
                     "autocomplete=\"current-password\" maxlength=\"1024\"></label></p>"
                     "<p><button type=\"submit\" id=\"submit\">Log in</button></p></form>")


def message(text: str) -> bytes:
    """A short answer (401, 403, 404...); the refusals carry the login form."""
    if text in (LOGIN_NEEDED, LOGIN_FAILED, NOT_ALLOWED):
        return login_form(text)
    return _document(text, f"<p>{_e(text)}</p>")
