"""DMARC (RFC 7489) at the end of DATA: does the From: domain stand behind this message?

The From: domain (the one a reader sees) passes when SPF passed for an aligned MAIL FROM domain
or a DKIM signature passed for an aligned d= (RFC 7489 3.1, 4.2); SPF and DKIM ran before us and
left their findings in `facts.txn.notes`. Alignment is relaxed (same organizational domain,
from the Public Suffix List of the `publicsuffixlist` package, which ships a current list) or
strict (the same name), as the domain's record asks.

The domain's policy applies to a failure: p=reject is refused `550 5.7.1` at the end of DATA
(or, by `[checks] dmarc`, delivered to Junk or only tagged), p=quarantine goes to the
recipients' Junk folders, p=none is only recorded. A message whose From: cannot be read gets
dmarc=permerror (or none without a From:) and no refusal: that is not the domain's policy.

pct (RFC 7489 6.6.4): the policy applies to that percentage of failing messages, chosen at random;
the others get the next milder policy (reject -> quarantine, quarantine -> none), as the RFC says.
The DNS lookups are blocking (syncdns.py) and run in the checks pool.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from twisted.internet import defer, threads

from appliance import message as msg
from appliance import replies
from appliance.filters.base import AuthResult, Check, Facts, Verdict
from appliance.filters.syncdns import DNSTemporaryError, SyncDNS

POLICIES = ("none", "quarantine", "reject")
MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


# ---- the record (RFC 7489 6.3, 6.4) -----------------------------------------------------------------

@dataclass(frozen=True)
class DMARCRecord:
    p: str                     # the domain's policy
    sp: str | None = None      # for its subdomains; None = p
    adkim: str = "r"           # r(elaxed) | s(trict)
    aspf: str = "r"
    pct: int = 100


def parse_tags(text: str) -> dict[str, str] | None:
    """A tag-list (RFC 7489 6.4, the DKIM syntax of RFC 6376 3.2), tag names lowercased.

    An entry that is not `name=value` with a valid name is a syntax error, ignored (RFC 7489
    6.3); a tag given twice makes the whole list invalid (RFC 6376 3.2): None.
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or not _TAG.match(name):
            continue
        if name in tags:
            return None
        tags[name] = value.strip()
    return tags


def parse_record(text: str) -> DMARCRecord | None:
    """The policy record of a TXT string, or None when it is not a usable DMARC record.

    v=DMARC1 must come first (6.4). Unknown tags are ignored and a bad adkim, aspf or pct falls
    back to its default (6.3). Without a valid p (or with a bad sp), the record counts as p=none
    when it names a report address (rua), else it is not used at all (6.6.3 step 6).
    """
    if not is_dmarc(text):
        return None
    tags = parse_tags(text)
    if tags is None:
        return None
    p, sp = tags.get("p", "").lower(), tags.get("sp")
    sp = sp.lower() if sp is not None else None
    if p not in POLICIES or (sp is not None and sp not in POLICIES):
        if not _has_report_uri(tags.get("rua", "")):
            return None
        p, sp = "none", None
    return DMARCRecord(p=p, sp=sp, adkim=_mode(tags.get("adkim")), aspf=_mode(tags.get("aspf")),
                       pct=_percent(tags.get("pct")))


def is_dmarc(text: str) -> bool:
    """The record starts with the version tag, exactly `v=DMARC1` (blanks allowed around "=", 6.4)."""
    return re.sub(r"[ \t]", "", text.split(";", 1)[0]) == "v=DMARC1"


def _mode(value: str | None) -> str:
    return value.lower() if value is not None and value.lower() in ("r", "s") else "r"


def _percent(value: str | None) -> int:
    if value is None or not value.isdigit() or len(value) > 3 or int(value) > 100:
        return 100
    return int(value)


def _has_report_uri(value: str) -> bool:
    return any(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", uri.strip()) for uri in value.split(","))


# ---- domains ----------------------------------------------------------------------------------------

_psl: Any = None


def organizational_domain(domain: str) -> str:
    """The registered domain (RFC 7489 3.2): public suffix plus one label; the name itself at a suffix."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList
        _psl = PublicSuffixList()
    return _psl.privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """RFC 7489 3.1: strict = the same name; relaxed = the same organizational domain."""
    identifier, from_domain = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not identifier:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def from_domain(message: bytes) -> tuple[str, str]:
    """(the RFC5322.From domain, "") or ("", the result and why): exactly one From: with one address."""
    values = msg.get_all(message, "From")
    if not values:
        return "", "none: no From field"
    if len(values) > 1:
        return "", "permerror: more than one From field"
    addresses = [a for _, a in getaddresses([values[0].decode("utf-8", "replace")]) if a]
    if len(addresses) != 1:
        return "", "permerror: not one address in From"
    domain = addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
    if "@" not in addresses[0] or not _DOMAIN.match(domain):
        return "", "permerror: no domain in From"
    return domain, ""


def discover(dns: SyncDNS, domain: str) -> tuple[DMARCRecord | None, str]:
    """(the record, the domain it was found at) by RFC 7489 6.6.3; blocking, for the pool only.

    Raises DNSTemporaryError. More than one DMARC record at a name means no policy (step 4).
    """
    org = organizational_domain(domain)
    for name in dict.fromkeys((domain, org)):
        texts = [t.decode("utf-8", "replace") for t in dns.txt(f"_dmarc.{name}")]
        candidates = [t for t in texts if is_dmarc(t)]
        if len(candidates) > 1:
            return None, name
        if candidates:
            return parse_record(candidates[0]), name
    return None, ""


# ---- the check --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    result: str                # pass | fail | none | temperror | permerror
    domain: str                # the From: domain ("" when unreadable)
    policy: str = "none"       # what the domain asks for this message (pct applied)
    reason: str = ""


def evaluate(message: bytes, dns: SyncDNS, spf: Any, dkim_domains: list[str],
             sample: Callable[[], float]) -> Evaluation:
    """The DMARC result of one message; blocking (DNS), for the pool only."""
    domain, problem = from_domain(message)
    if not domain:
        result, _, why = problem.partition(": ")
        return Evaluation(result, "", reason=why)
    try:
        record, found_at = discover(dns, domain)
    except DNSTemporaryError:          # accepted: no policy is known (the header tells, not which server)
        return Evaluation("temperror", domain, reason="DMARC record lookup failed")
    if record is None:
        return Evaluation("none", domain, reason="no DMARC record")
    spf_ok = spf is not None and spf.result == "pass" and aligned(spf.domain, domain, record.aspf)
    dkim_ok = any(aligned(d, domain, record.adkim) for d in dkim_domains)
    if spf_ok or dkim_ok:
        return Evaluation("pass", domain, reason="aligned " + ("dkim" if dkim_ok else "spf"))
    policy = record.sp if found_at != domain and record.sp is not None else record.p
    if record.pct < 100 and sample() * 100 >= record.pct:
        policy = MILDER[policy]
    return Evaluation("fail", domain, policy, reason=f"p={policy}")


class DMARCCheck(Check):
    """The "dmarc" check at stage data (after "dkim"); `mode` is `[checks] dmarc` for p=reject."""

    name = "dmarc"

    def __init__(self, dns: SyncDNS, reactor: Any, pool: Any, mode: str = "reject",
                 sample: Callable[[], float] = random.random) -> None:
        self.dns, self.reactor, self.pool = dns, reactor, pool
        self.mode, self.sample = mode, sample

    def data(self, facts: Facts) -> defer.Deferred:
        return defer.ensureDeferred(self._data(facts))

    async def _data(self, facts: Facts) -> Verdict | None:
        txn = facts.txn
        d = threads.deferToThreadPool(self.reactor, self.pool, evaluate, txn.message, self.dns,
                                      txn.notes.get("spf"), list(txn.notes.get("dkim", [])), self.sample)
        d.addTimeout(2 * 2 * self.dns.timeout + 5, self.reactor)    # two names, each may retry once
        try:
            found = await d
        except defer.TimeoutError:
            found = Evaluation("temperror", "", reason="DMARC lookup took too long")
        properties = (("header.from", found.domain),) if found.domain else ()
        txn.results.append(AuthResult("dmarc", found.result, properties, reason=found.reason))
        txn.notes["dmarc"] = found
        return self._verdict(found)

    def _verdict(self, found: Evaluation) -> Verdict | None:
        if found.result != "fail":
            return None
        why = f"dmarc=fail p={found.policy} header.from={found.domain}"
        if found.policy == "reject":
            if self.mode == "reject":
                text = f"{replies.DMARC_REJECT.text} ({found.domain})"
                return Verdict.reject(replies.DMARC_REJECT.with_text(text), why)
            if self.mode == "quarantine":
                return Verdict.junk(why)
            return Verdict.tag(why)
        if found.policy == "quarantine":
            return Verdict.junk(why)
        return Verdict.tag(why)
