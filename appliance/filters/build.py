"""The checks `[checks]` asks for, in the order they run, and the DKIM signer `[dkim]` sets up.

The order is the pipeline's: at each stage the checks are asked in this list's order, so a
check that reads another's findings comes after it (greylisting reads the PTR, DNSBL and SPF
doubts; DMARC reads SPF and DKIM; Authentication-Results comes last).
"""
from __future__ import annotations

from typing import Any

from appliance.config import Config
from appliance.filters.authresults import AuthResults
from appliance.filters.base import Check
from appliance.filters.dkimverify import DKIMVerify
from appliance.filters.dmarc import DMARCCheck
from appliance.filters.pipeline import Pipeline
from appliance.filters.spf import SPFCheck
from appliance.filters.syncdns import SyncDNS


def make_pipeline(cfg: Config, reactor: Any, pool: Any, top: Any = None) -> Pipeline:
    """The configured checks; `pool` runs the blocking ones (pyspf, dkimpy); `top` gets their services."""
    checks: list[Check] = []
    settings = cfg.checks
    # One blocking resolver (and its cache) for pyspf, dkimpy and DMARC, used in `pool` only.
    sync_dns = SyncDNS(cfg.delivery.nameservers, settings.dns_timeout)
    # connect: the client's reverse DNS and the block lists (filters/fcrdns.py, filters/dnsbl.py)
    # mail: SPF of MAIL FROM and HELO (filters/spf.py)
    if settings.spf != "off":
        checks.append(SPFCheck(sync_dns, reactor, pool, cfg.appliance.hostname, settings.spf, settings.spf_temperror))
    # mail, rcpt: rate limits (filters/rates.py), then greylisting (filters/greylist.py)
    # data: clamd, spamd (filters/clamd.py, filters/spamd.py), DKIM, DMARC (filters/dkimverify.py,
    #       filters/dmarc.py), the operator's hooks (filters/hooks.py), Authentication-Results last
    if settings.dkim_verify:
        checks.append(DKIMVerify(sync_dns, reactor, pool))
    if settings.dmarc != "off":
        checks.append(DMARCCheck(sync_dns, reactor, pool, settings.dmarc))
    # Authentication-Results: last of all (it reports what the checks above found)
    if settings.spf != "off" or settings.dkim_verify or settings.dmarc != "off":
        checks.append(AuthResults(cfg.appliance.hostname))
    return Pipeline(checks)


def make_signer(cfg: Config, reactor: Any, pool: Any) -> Any:
    """filters/dkimsign.py's signer, or None."""
    return None
