"""The mail-flow plots as SVG (placeholder: the plots work replaces this file)."""
from __future__ import annotations

from typing import Any

SPANS = ("hour", "day", "week")


def flow_svg(counters: Any, span: str) -> str:
    """One SVG document plotting received, delivered, relayed, deferred, bounced and rejected over `span`."""
    return '<svg xmlns="http://www.w3.org/2000/svg"/>'
