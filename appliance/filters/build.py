"""The checks `[checks]` asks for, in the order they run, and the DKIM signer `[dkim]` sets up.

The order is the pipeline's: at each stage the checks are asked in this list's order, so a
check that reads another's findings comes after it (greylisting reads the PTR, DNSBL and SPF
doubts; DMARC reads SPF and DKIM; Authentication-Results comes last).
"""
from __future__ import annotations

from typing import Any

from appliance.config import Config
from appliance.filters.base import Check
from appliance.filters.clamd import ClamdCheck
from appliance.filters.pipeline import Pipeline
from appliance.filters.spamd import SpamdCheck


def make_pipeline(cfg: Config, reactor: Any, pool: Any, top: Any = None) -> Pipeline:
    """The configured checks; `pool` runs the blocking ones (pyspf, dkimpy); `top` gets their services."""
    checks: list[Check] = []
    # connect: the client's reverse DNS and the block lists (filters/fcrdns.py, filters/dnsbl.py)
    # mail: SPF of MAIL FROM and HELO (filters/spf.py)
    # mail, rcpt: rate limits (filters/rates.py), then greylisting (filters/greylist.py)
    # data: clamd, spamd (filters/clamd.py, filters/spamd.py), DKIM, DMARC (filters/dkimverify.py,
    #       filters/dmarc.py), the operator's hooks (filters/hooks.py), Authentication-Results last
    checks += _scanners(cfg, reactor)
    return Pipeline(checks)


def _scanners(cfg: Config, reactor: Any) -> list[Check]:
    """clamd before spamd: a virus is refused without spending SpamAssassin's seconds on it."""
    settings = cfg.checks
    scanners: list[Check] = []
    if settings.clamd:
        scanners.append(ClamdCheck(reactor, settings))
    if settings.spamd:
        scanners.append(SpamdCheck(reactor, settings))
    return scanners


def make_signer(cfg: Config, reactor: Any, pool: Any) -> Any:
    """filters/dkimsign.py's signer, or None."""
    return None
