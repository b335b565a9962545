"""DKIM verification (RFC 6376) at the end of DATA, with dkimpy in the checks pool.

Every DKIM-Signature field (up to MAX_SIGNATURES, so a message cannot make us hash and query
without end) gets one Authentication-Results entry (RFC 8601 2.7.1) with header.d, header.s and
the first characters of header.b (RFC 6008, to tell two signatures of one domain apart). The
domains of the passing signatures go to `facts.txn.notes["dkim"]` for DMARC. The check never
refuses: a broken signature is only as bad as no signature (RFC 6376 6.1), and DMARC decides.

dkimpy answers True/False or raises; the RFC 8601 result is read from how it failed:
- the key lookup timed out (our dnsfunc saw it) -> temperror;
- no key record, a key dkimpy cannot use, or one under 1024 bits (RFC 8301 3.2) -> permerror;
- rsa-sha1, which verifiers must not accept (RFC 8301 3.1) -> policy;
- a signature that cannot be parsed or is expired -> neutral;
- a body hash or signature that does not match -> fail.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, threads

from appliance import message as msg
from appliance.filters.base import AuthResult, Check, Facts, Verdict
from appliance.filters.syncdns import SyncDNS

MAX_SIGNATURES = 5
B_CHARS = 8            # characters of b= in header.b (RFC 6008 suggests at least 8)

# dkimpy logs every failed verification at ERROR; our result and log line say it already.
_QUIET = logging.getLogger("mailappliance.dkimpy")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass
class _KeyLookups:
    """What the dnsfunc saw for one signature: tells a DNS failure from a verification failure."""

    dns: SyncDNS
    timed_out: bool = False
    found: list[bytes] = field(default_factory=list)

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        import dkim
        try:
            record = self.dns.dkim_txt(name, timeout)
        except dkim.DnsTimeoutError:
            self.timed_out = True
            raise
        if record is not None:
            self.found.append(record)
        return record


def signature_tags(value: bytes) -> dict[bytes, bytes]:
    """The tags of one DKIM-Signature value ({} when it is not a tag-list), for the A-R properties."""
    from dkim.util import InvalidTagValueList, parse_tag_value
    try:
        return parse_tag_value(value)
    except (InvalidTagValueList, ValueError, IndexError):
        return {}


def verify_one(message: bytes, index: int, dns: SyncDNS) -> AuthResult:
    """The RFC 8601 result of signature `index` (0 = topmost): blocking, for the pool only."""
    import dkim
    signatures = msg.get_all(message, "DKIM-Signature")
    tags = signature_tags(signatures[index]) if index < len(signatures) else {}
    properties = _properties(tags)
    if tags.get(b"a", b"").strip().lower() == b"rsa-sha1":
        return AuthResult("dkim", "policy", properties, reason="rsa-sha1 is not accepted (RFC 8301)")
    lookups = _KeyLookups(dns)
    try:
        verifier = dkim.DKIM(message, logger=_QUIET, timeout=dns.timeout, minkey=1024)
        ok = verifier.verify(idx=index, dnsfunc=lookups)
    except (dkim.KeyFormatError, dkim.UnknownKeyTypeError) as exc:
        return AuthResult("dkim", "permerror", properties, reason=_reason(exc))
    except dkim.ValidationError as exc:
        result = "fail" if "hash mismatch" in str(exc) else "neutral"
        return AuthResult("dkim", result, properties, reason=_reason(exc))
    except dkim.DKIMException as exc:
        return AuthResult("dkim", "neutral", properties, reason=_reason(exc))
    if ok:
        return AuthResult("dkim", "pass", properties)
    if lookups.timed_out:
        return AuthResult("dkim", "temperror", properties, reason="key lookup timed out")
    if not lookups.found:
        return AuthResult("dkim", "permerror", properties, reason="no key record")
    if not _usable_key(lookups.found[-1]):
        return AuthResult("dkim", "permerror", properties, reason="unusable key record")
    return AuthResult("dkim", "fail", properties, reason="signature did not verify")


def _usable_key(record: bytes) -> bool:
    import dkim
    try:
        dkim.evaluate_pk(b"key", record)
    except Exception:       # dkimpy raises several kinds (KeyFormatError, binascii.Error, ...)
        return False
    return True


def _properties(tags: dict[bytes, bytes]) -> tuple[tuple[str, str], ...]:
    found = []
    for tag, name, size in ((b"d", "header.d", 253), (b"s", "header.s", 63), (b"b", "header.b", B_CHARS)):
        value = b"".join(tags.get(tag, b"").split()).decode("ascii", "replace")[:size]
        if value:
            found.append((name, value.lower() if tag == b"d" else value))
    return tuple(found)


def _reason(exc: Exception) -> str:
    """dkimpy's message without its details: "body hash mismatch (got ..., expected ...)" -> the first part."""
    return " ".join(str(exc).split(" (")[0].split())[:80]


def verify_all(message: bytes, count: int, dns: SyncDNS) -> list[AuthResult]:
    return [verify_one(message, index, dns) for index in range(count)]


class DKIMVerify(Check):
    """The "dkim" check at stage data."""

    name = "dkim"

    def __init__(self, dns: SyncDNS, reactor: Any, pool: Any, max_signatures: int = MAX_SIGNATURES) -> None:
        self.dns, self.reactor, self.pool = dns, reactor, pool
        self.max_signatures = max_signatures

    def data(self, facts: Facts) -> defer.Deferred:
        return defer.ensureDeferred(self._data(facts))

    async def _data(self, facts: Facts) -> Verdict | None:
        txn = facts.txn
        count = min(len(msg.get_all(txn.message, "DKIM-Signature")), self.max_signatures)
        txn.notes["dkim"] = []
        if count == 0:
            txn.results.append(AuthResult("dkim", "none"))
            return None
        d = threads.deferToThreadPool(self.reactor, self.pool, verify_all, txn.message, count, self.dns)
        d.addTimeout(count * 2 * self.dns.timeout + 5, self.reactor)     # a key lookup may retry once
        try:
            results = await d
        except defer.TimeoutError:
            results = [AuthResult("dkim", "temperror", reason="verification took too long")] * count
        txn.results.extend(results)
        txn.notes["dkim"] = [dict(r.properties)["header.d"] for r in results
                             if r.result == "pass" and "header.d" in dict(r.properties)]
        failed = [f"{r.result} {dict(r.properties).get('header.d', '?')}" for r in results if r.result != "pass"]
        return Verdict.tag("dkim=" + ", ".join(failed)) if failed else None
