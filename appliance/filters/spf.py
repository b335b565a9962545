"""SPF (RFC 7208) of the HELO name and the MAIL FROM address, at MAIL, with pyspf in the checks pool.

Why both identities (RFC 7208 2.3, 2.4): the HELO check is cheap and conclusive for bounces,
whose MAIL FROM is empty and whose identity then *is* postmaster@<HELO name>. The MAIL FROM
result is what DMARC aligns (RFC 7489 4.2), so it goes to `facts.txn.notes["spf"]`.

What each result does, by `[checks] spf` and `spf_temperror`:
- fail: refused `550 5.7.23` with the domain's explanation (RFC 7372), or tagged;
- softfail, neutral, none of the sender: tagged and a doubt (suspicious greylisting reads it);
- temperror (DNS trouble): `451 4.7.24`, the client tries again; or tagged;
- permerror (a broken record): tagged only: the domain's mistake is not the mail's.
Every result becomes an Authentication-Results entry (authresults.py writes it at DATA).

pyspf blocks on DNS (syncdns.py), so an evaluation is one job in the checks pool, bounded twice:
each DNS query by `dns_timeout`, the whole evaluation by pyspf's `querytime` (RFC 7208 4.6.4),
and the reactor's wait by a timeout a little longer than that.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, threads

from appliance import replies
from appliance.filters.base import AuthResult, Check, Facts, Verdict
from appliance.filters.syncdns import SyncDNS, install_pyspf_hook, pyspf_lookup

DOUBTFUL = ("softfail", "neutral", "none")       # a sender result that makes the client doubtful
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{1,63}\.?$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
EXPLANATION_MAX = 200                            # characters of a domain's explanation put in our reply


@dataclass(frozen=True)
class SPFResult:
    """One check_host() outcome: the result, the domain's explanation, the domain evaluated."""

    result: str        # pass | fail | softfail | neutral | none | temperror | permerror
    explanation: str
    domain: str


def evaluate(dns: SyncDNS, ip: str, sender: str, helo: str, receiver: str, querytime: float,
             deadline: float = math.inf) -> SPFResult:
    """check_host() for `sender` (or, when it is "", postmaster@helo): blocking, for the pool only.

    A job that waited in the pool past `deadline` (the session gave up on it) does no lookups.
    """
    import spf
    if time.monotonic() > deadline:
        return SPFResult("temperror", "SPF evaluation waited too long", "")
    query = spf.query(i=ip, s=sender, h=helo, receiver=receiver, timeout=dns.timeout, querytime=querytime)
    with pyspf_lookup(dns):
        result, _code, explanation = query.check()
    if result == "ambiguous":                    # only in pyspf's harsh mode, which we do not use
        result = "permerror"
    return SPFResult(result, clean_explanation(explanation), query.d or "")


def clean_explanation(text: str) -> str:
    """An explanation fit for our reply line: it comes from the domain's DNS (exp=, RFC 7208 6.2)."""
    return _UNPRINTABLE.sub(" ", str(text)).strip()[:EXPLANATION_MAX]


def is_domain(name: str) -> bool:
    """A HELO name SPF can check: a domain name, not an address literal (RFC 7208 2.3)."""
    return bool(_DOMAIN.match(name)) and not name.rstrip(".").replace(".", "").isdigit()


def _doubt(facts: Facts, why: str) -> None:
    """Once per session: doubts are the client's, and a session may hold many transactions."""
    if why not in facts.doubts:
        facts.doubts.append(why)


class SPFCheck(Check):
    """The "spf" check at stage mail."""

    name = "spf"

    def __init__(self, dns: SyncDNS, reactor: Any, pool: Any, receiver: str, on_fail: str = "reject",
                 on_temperror: str = "tempfail") -> None:
        self.dns, self.reactor, self.pool = dns, reactor, pool
        self.receiver = receiver                 # our host name: the %{r} macro
        self.on_fail, self.on_temperror = on_fail, on_temperror
        self.querytime = 4 * dns.timeout         # the whole evaluation (20 s by default, RFC 7208 4.6.4)
        install_pyspf_hook()                     # once, at build: see syncdns.py for why a hook

    def mail(self, facts: Facts) -> defer.Deferred:
        return defer.ensureDeferred(self._mail(facts))

    async def _mail(self, facts: Facts) -> Verdict | None:
        txn, helo = facts.txn, facts.helo
        helo_result = await self._helo(facts) if is_domain(helo) else None
        if helo_result is not None and helo_result.result == "fail" and self.on_fail == "reject":
            txn.results.append(AuthResult("spf", "fail", (("smtp.helo", helo),)))
            return self._fail("HELO", helo, helo_result)
        if txn.sender:
            sender_result = await self._run(facts.peer, txn.sender, helo)
            txn.results.append(AuthResult("spf", sender_result.result, (("smtp.mailfrom", txn.sender),)))
            if helo_result is not None:
                txn.results.append(AuthResult("spf", helo_result.result, (("smtp.helo", helo),)))
        elif helo_result is not None:            # a bounce: its identity is postmaster@HELO (RFC 7208 2.4)
            sender_result = helo_result
            txn.results.append(AuthResult("spf", helo_result.result,
                                          (("smtp.mailfrom", f"postmaster@{helo}"), ("smtp.helo", helo))))
        else:
            sender_result = SPFResult("none", "no domain to check", "")
            txn.results.append(AuthResult("spf", "none", (("smtp.helo", helo),), reason="no domain to check"))
        txn.notes["spf"] = sender_result
        return self._verdict(facts, helo_result, sender_result)

    async def _helo(self, facts: Facts) -> SPFResult:
        """The HELO result, evaluated once per HELO name in a session (each MAIL would ask again)."""
        cached = facts.notes.get("spf-helo")
        if cached is not None and cached[0] == facts.helo:
            return cached[1]
        result = await self._run(facts.peer, "", facts.helo)
        if result.result != "temperror":
            facts.notes["spf-helo"] = (facts.helo, result)
        return result

    async def _run(self, ip: str, sender: str, helo: str) -> SPFResult:
        limit = self.querytime + self.dns.timeout
        d = threads.deferToThreadPool(self.reactor, self.pool, evaluate, self.dns, ip, sender, helo,
                                      self.receiver, self.querytime, time.monotonic() + limit)
        d.addTimeout(limit, self.reactor)
        try:
            return await d
        except defer.TimeoutError:
            return SPFResult("temperror", "SPF evaluation took too long", "")

    def _verdict(self, facts: Facts, helo: SPFResult | None, sender: SPFResult) -> Verdict | None:
        results = [r for r in (sender, helo) if r is not None]
        failed = next((r for r in results if r.result == "fail"), None)
        if failed is not None:
            identity = "MAIL FROM" if failed is sender else "HELO"
            if self.on_fail == "reject":
                return self._fail(identity, facts.txn.sender if failed is sender else facts.helo, failed)
            _doubt(facts, "SPF fail")
            return Verdict.tag(f"spf=fail {identity} {failed.domain}")
        if any(r.result == "temperror" for r in results):
            if self.on_temperror == "tempfail":
                return Verdict.tempfail(replies.SPF_TEMPERROR, "spf=temperror")
            return Verdict.tag("spf=temperror")
        if sender.result in DOUBTFUL:
            _doubt(facts, f"SPF {sender.result}")
            return Verdict.tag(f"spf={sender.result} {sender.domain}")
        if sender.result == "permerror":
            return Verdict.tag(f"spf=permerror {sender.domain}: {sender.explanation}")
        return None

    @staticmethod
    def _fail(identity: str, name: str, result: SPFResult) -> Verdict:
        text = f"{replies.SPF_FAIL.text}: {result.explanation}" if result.explanation else replies.SPF_FAIL.text
        return Verdict.reject(replies.SPF_FAIL.with_text(text), f"spf=fail {identity} {name}")
