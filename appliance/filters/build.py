"""The checks `[checks]` asks for, in the order they run, and the DKIM signer `[dkim]` sets up.

The order is the pipeline's: at each stage the checks are asked in this list's order, so a
check that reads another's findings comes after it (greylisting reads the PTR, DNSBL and SPF
doubts; DMARC reads SPF and DKIM; Authentication-Results comes last).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from appliance.config import Config
from appliance.filters.authresults import AuthResults
from appliance.filters.base import Check
from appliance.filters.clamd import ClamdCheck
from appliance.filters.dkimverify import DKIMVerify
from appliance.filters.dmarc import DMARCCheck
from appliance.filters.pipeline import Pipeline
from appliance.filters.spamd import SpamdCheck
from appliance.filters.spf import SPFCheck
from appliance.filters.syncdns import SyncDNS


def make_pipeline(cfg: Config, reactor: Any, pool: Any, top: Any = None, keep: Sequence[Check] = ()) -> Pipeline:
    """The configured checks; `pool` runs the blocking ones (pyspf, dkimpy); `top` gets their services.

    `keep`: checks of the running pipeline that a reload hands over (appliance.tap), used again
    instead of new ones, so greylisting's triplets and the rate windows live on in memory.
    """
    checks: list[Check] = []
    settings = cfg.checks
    # One blocking resolver (and its cache) for pyspf, dkimpy and DMARC, used in `pool` only.
    sync_dns = SyncDNS(cfg.delivery.nameservers, settings.dns_timeout)
    # connect: the client's reverse DNS and the block lists (filters/fcrdns.py, filters/dnsbl.py)
    checks += _connect_checks(cfg, reactor)
    # mail: SPF of MAIL FROM and HELO (filters/spf.py)
    if settings.spf != "off":
        checks.append(SPFCheck(sync_dns, reactor, pool, cfg.appliance.hostname, settings.spf, settings.spf_temperror))
    # mail, rcpt: rate limits (filters/rates.py), then greylisting (filters/greylist.py)
    checks += _limits(cfg, reactor, top, keep)
    # data: clamd, spamd (filters/clamd.py, filters/spamd.py), DKIM, DMARC (filters/dkimverify.py,
    #       filters/dmarc.py), the operator's hooks (filters/hooks.py), Authentication-Results last
    checks += _scanners(cfg, reactor)
    if settings.dkim_verify:
        checks.append(DKIMVerify(sync_dns, reactor, pool))
    if settings.dmarc != "off":
        checks.append(DMARCCheck(sync_dns, reactor, pool, settings.dmarc))
    checks += _hooks(cfg, reactor)     # the operator's hooks: after every check (they read their findings)
    # Authentication-Results: last of all (it reports what the checks above found)
    if settings.spf != "off" or settings.dkim_verify or settings.dmarc != "off":
        checks.append(AuthResults(cfg.appliance.hostname))
    return Pipeline(checks)


def _connect_checks(cfg: Config, reactor: Any) -> list[Check]:
    """FCrDNS when its doubt is read (suspicious greylisting or pregreet); DNSBL when lists are set.

    With neither, no DNS query is made for a connection (the iprev entry of
    Authentication-Results is then absent). One Lookups (one cache) for both; a Prefetch first
    starts their queries together, so a silent nameserver holds the banner for dns_timeout
    once, not once per check.
    """
    from appliance.filters.dns import Lookups, Prefetch
    from appliance.filters.dnsbl import DNSBL
    from appliance.filters.fcrdns import FCrDNS
    settings = cfg.checks
    fcrdns = "suspicious" in (settings.greylist, settings.pregreet)
    dnsbl = bool(settings.dnsbl or settings.dnswl)
    if not (fcrdns or dnsbl):
        return []
    lookups = Lookups.from_config(cfg, reactor)
    found: list[Check] = [FCrDNS(lookups)] if fcrdns else []
    if dnsbl:
        found.append(DNSBL(lookups, settings.dnsbl, settings.dnswl, settings.dnsbl_threshold))
    return [Prefetch(found), *found]


def _limits(cfg: Config, reactor: Any, top: Any, keep: Sequence[Check] = ()) -> list[Check]:
    """Rates, then greylisting (a client over its rate is not worth a triplet); their state in state_dir."""
    from appliance.filters import greylist, rates
    settings = cfg.checks
    wanted_rates, wanted_greylist = rates.any_limit(settings), settings.greylist != "off"
    if not (wanted_rates or wanted_greylist):
        return []
    store = _state_store(cfg, top)
    found: list[Check] = []
    if wanted_rates:
        found.append(_kept(keep, rates.Rates) or rates.Rates(settings, reactor, store))
    if wanted_greylist:
        found.append(_kept(keep, greylist.Greylist) or greylist.Greylist(settings, store, reactor))
    return found


def _state_store(cfg: Config, top: Any) -> Any:
    """One state store per process: a reload's pipeline uses the running one (a second writer
    thread on the same sqlite file would only contend with the first)."""
    from appliance.filters import statestore
    if top is not None:
        try:
            return top.getServiceNamed(statestore.StateStore.name)
        except KeyError:
            pass
    store = statestore.StateStore(os.path.join(cfg.appliance.state_dir, statestore.FILENAME))
    if top is not None:
        store.setServiceParent(top)         # started at once when top already runs (a reload)
    return store


def _kept(keep: Sequence[Check], kind: type) -> Check | None:
    return next((check for check in keep if type(check) is kind), None)


def _hooks(cfg: Config, reactor: Any) -> list[Check]:
    """[checks] hooks, imported now (appliance/checks.py has reported any that cannot be)."""
    from appliance.filters import hooks
    return list(hooks.make_hooks(cfg.checks.hooks, reactor))


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
    """filters/dkimsign.py's signer, always: it looks for a domain's key at each message, so a key
    made by `mailappliance dkim keygen` while the daemon runs is used without a restart."""
    from appliance import dkimkeys
    from appliance.filters.dkimsign import DKIMSigner
    folder = dkimkeys.keys_folder(cfg.appliance.state_dir, cfg.dkim.keys)
    return DKIMSigner(folder, cfg.dkim.selector, cfg.dkim.ed25519, reactor, pool)
