"""`mailappliance status` as one screen of aligned plain text, from the daemon's JSON report.

Kept apart from the daemon side (appliance/status.py) so the screen can change without touching
what the daemon sends, and so the same report can be shown elsewhere (issue 13's web page).
The report comes from the running daemon, so every field is read defensively: a daemon of an
older or newer version may leave one out, and the screen then says "unknown" instead of failing.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LABEL = 13          # width of the left column ("certificate  ")
RENEW_DAYS = 14     # as `check`'s expiry warning


def render(report: Mapping[str, Any]) -> list[str]:
    """The whole screen, one string per line."""
    return [*_heading(report), "", *_services(report), "", *_queue(report.get("queue") or {}), "",
            *_flow(report), "", *_disk(report.get("disk") or {}), *_quota(report.get("quota")), "",
            *_certificate(report.get("certificate"))]


def duration(seconds: float | None) -> str:
    """`3d 4h`, `2h 13m`, `5m 2s`, `40s`: the two largest units, enough to judge at a glance."""
    if seconds is None:
        return "unknown"
    left = max(0, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def size(count: int | None) -> str:
    """Bytes in binary units (`12.3 MiB`), as du -h would; "none" for a folder that does not exist yet."""
    if count is None:
        return "none"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}".rstrip()


def _heading(report: Mapping[str, Any]) -> list[str]:
    return [f"mailappliance {report.get('version', '')} on {report.get('hostname', 'unknown')}: "
            f"running {duration(report.get('uptime'))}, pid {report.get('pid', 'unknown')}"]


def _services(report: Mapping[str, Any]) -> list[str]:
    services = report.get("services") or []
    if not services:
        return [_row("services", "none: [listen] is empty")]
    width = max(len(str(s.get("name", ""))) for s in services) + 2
    return [_row("services" if number == 0 else "",
                 f"{str(s.get('name', '')):<{width}}{s.get('address') or 'not listening (' + str(s.get('endpoint', '')) + ')'}")
            for number, s in enumerate(services)]


def _queue(queue: Mapping[str, Any]) -> list[str]:
    messages = int(queue.get("messages", 0))
    if not messages:
        return [_row("queue", "empty")]
    facts = [_plural(messages, "message")]
    if queue.get("held"):
        facts.append(f"{queue['held']} held")
    facts.append(f"{queue.get('deferred', 0)} deferred")
    lines = [_row("queue", f"{', '.join(facts)}; oldest {duration(queue.get('oldest'))}")]
    reasons = queue.get("reasons") or []
    if reasons:
        width = max(len(str(r.get("recipients", 0))) for r in reasons)
        for number, reason in enumerate(reasons):
            lines.append(_row("  deferred" if number == 0 else "",
                              f"{reason.get('recipients', 0):>{width}}  {reason.get('reason', '')}"))
    return lines


def _flow(report: Mapping[str, Any]) -> list[str]:
    """Mail of the last hour and day: one table, rejections by reason under their total."""
    mail = report.get("mail") or {}
    hour, day = mail.get("last_hour") or {}, mail.get("last_day") or {}
    rejected = report.get("rejected") or {}
    r_hour, r_day = rejected.get("last_hour") or {}, rejected.get("last_day") or {}
    logins = report.get("failed_logins") or {}
    rows: list[tuple[str, object, object]] = []
    for kind in ("received", "delivered", "relayed", "deferred", "bounced", "rejected"):
        rows.append((f"  {kind}", hour.get(kind, 0), day.get(kind, 0)))
        if kind == "rejected":
            for reason in sorted(r_day, key=lambda name: (-r_day[name], name)):
                rows.append((f"    {reason}", r_hour.get(reason, 0), r_day[reason]))
    rows.append(("failed logins", logins.get("last_hour", 0), logins.get("last_day", 0)))
    width = max(LABEL + 10, *(len(label) + 2 for label, _, _ in rows))
    head = f"{'mail':<{width}}{'last hour':>10}{'last day':>10}"
    return [head, *(f"{label:<{width}}{a:>10}{b:>10}" for label, a, b in rows)]


def _disk(disk: Mapping[str, Any]) -> list[str]:
    folders = disk.get("folders") or []
    if disk.get("age") is None:
        return [_row("disk", "being measured; ask again in a moment")]
    width = max(len(str(f.get("name", ""))) for f in folders) + 2 if folders else 0
    lines = [_row("disk" if number == 0 else "",
                  f"{str(f.get('name', '')):<{width}}{size(f.get('bytes')):>10}  {f.get('path', '')}")
             for number, f in enumerate(folders)]
    return lines + [_row("", f"(measured {duration(disk['age'])} ago)")]


def _quota(quota: Mapping[str, Any] | None) -> list[str]:
    """`quota  default 1.0 GiB; 1 mailbox at 90% or more` and one line per such mailbox."""
    if not quota:
        return []
    default = quota.get("default") or 0
    full = quota.get("nearly_full") or []
    head = f"default {size(default) if default else 'unlimited'}; "
    if not full:
        return [_row("quota", head + "no mailbox at 90% or more (as measured at delivery and IMAP)")]
    lines = [_row("quota", head + f"{len(full)} {'mailbox' if len(full) == 1 else 'mailboxes'} at 90% or more, as last measured:")]
    for entry in full:
        used, limit = int(entry.get("used") or 0), int(entry.get("limit") or 0)
        share = f"{used * 100 // limit}%" if limit else "?"
        lines.append(_row("", f"{entry.get('user', '')}  {share}  {size(used)} of {size(limit)}"))
    return lines


def _certificate(cert: Mapping[str, Any] | None) -> list[str]:
    if not cert:
        return [_row("certificate", "none: [tls] certificate is empty")]
    days = int(cert.get("days", 0))
    date = str(cert.get("not_after", ""))[:10]
    if days < 0:
        when = f"EXPIRED on {date} ({_plural(-days, 'day')} ago)"
    else:
        when = f"expires {date}, in {_plural(days, 'day')}" + ("; renew it now" if days <= RENEW_DAYS else "")
    names = ", ".join(cert.get("names") or [])
    return [_row("certificate", f"{when}"), _row("", f"{names}  ({cert.get('path', '')})")]
