"""/metrics in the Prometheus text format (placeholder: the metrics work replaces this file)."""
from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource


class MetricsResource(Resource):
    """GET /metrics; `top` is the ApplianceService (its `stats` service holds the counters)."""

    isLeaf = True

    def __init__(self, top: Any) -> None:
        super().__init__()
        self.top = top

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return b""
