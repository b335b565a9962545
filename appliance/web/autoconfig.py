"""Mail client autoconfig (placeholder: the autoconfig work replaces this file)."""
from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource


def resources(cfg: Any) -> dict[bytes, Resource]:
    """Public resources by path (b"/mail/config-v1.1.xml", ...), mounted by site.py without access control."""
    return {}
