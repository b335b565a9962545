"""Blocking DNS for the libraries that cannot take an asynchronous resolver: pyspf and dkimpy.

pyspf and dkimpy call DNS synchronously from deep inside their evaluation, so they run in the
checks thread pool (never on the reactor) and ask this module: dnspython with `[delivery]
nameservers` when set (ONLY those, so a test zone or a split-horizon resolver is the one asked),
else the system's resolver. Every query is bounded by `[checks] dns_timeout`, so a silent
nameserver costs a pool thread at most that long per query and yields a temporary error.

Three faces of the same resolver:
- `SyncDNS.txt()` for DMARC (our own code),
- `SyncDNS.dkim_txt` is dkimpy's `dnsfunc` (a TXT record as bytes, or None),
- `pyspf_lookup(dns)` binds pyspf's lookup to this resolver for one evaluation (see there).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

CACHE_ENTRIES = 4096      # answers kept by TTL (dnspython's LRU cache is thread-safe)


class DNSTemporaryError(Exception):
    """A lookup that may succeed later: a timeout, SERVFAIL, no server answering (RFC 7208 temperror)."""


class SyncDNS:
    """A dnspython resolver for the checks pool; not to be called on the reactor thread."""

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), timeout: float = 5.0) -> None:
        self.timeout = float(timeout)
        self.resolver = _resolver(nameservers)
        self.resolver.timeout = self.timeout          # each server asked
        self.resolver.lifetime = self.timeout         # the whole query, retries included
        self.resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)

    def query(self, name: str, rdtype: str, timeout: float | None = None) -> list[Any]:
        """The records of `rdtype` at `name` (CNAMEs followed); [] for NXDOMAIN or no data.

        Raises DNSTemporaryError when no answer came in time or the servers failed.
        """
        lifetime = self.timeout if timeout is None else max(0.1, min(self.timeout, timeout))
        try:
            answer = self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False,
                                           lifetime=lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.SyntaxError, dns.exception.FormError, dns.name.IDNAException):
            return []                                 # not a name DNS can hold: nothing there
        except dns.exception.DNSException as exc:     # a timeout, SERVFAIL or REFUSED from every server
            raise DNSTemporaryError(f"{name}/{rdtype}: {exc}") from exc
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str, timeout: float | None = None) -> list[bytes]:
        """Each TXT record at `name`, its character-strings joined (RFC 7208 3.3, RFC 7489 6.6.3)."""
        return [b"".join(record.strings) for record in self.query(name, "TXT", timeout)]

    def dkim_txt(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc`: the first TXT record at `name` (the key record), None when there is none.

        A temporary failure becomes dkimpy's DnsTimeoutError, which it reports as a failed
        verification; DKIMVerify tells it apart from a real failure (see dkimverify.py).
        """
        import dkim
        try:
            records = self.txt(name.decode("ascii").rstrip("."), timeout)
        except UnicodeDecodeError:
            return None
        except DNSTemporaryError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        return records[0] if records else None


def _resolver(nameservers: Sequence[tuple[str, int]]) -> dns.resolver.Resolver:
    """Ours only when configured (no /etc/resolv.conf servers mixed in), else the system's."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
        return resolver
    try:
        return dns.resolver.Resolver()
    except dns.resolver.NoResolverConfiguration:
        resolver = dns.resolver.Resolver(configure=False)   # no resolv.conf: every lookup is a temperror
        resolver.nameservers = []
        return resolver


# ---- pyspf ------------------------------------------------------------------------------------------
#
# pyspf has no per-query resolver parameter: `spf.query.dns()` calls the module-level function
# `spf.DNSLookup(name, qtype, strict, timeout)`. So one hook is installed in that module, once
# (when the SPF check is built; pyspf_lookup makes sure of it too), and it dispatches to the SyncDNS bound to the *current thread* by `pyspf_lookup(dns)`: each
# evaluation (one pool job) uses its own resolver, concurrent evaluations in other threads are
# not affected, and any other pyspf user in the process (none today) keeps pyspf's own lookup.

_bound = threading.local()
_install_lock = threading.Lock()


@contextlib.contextmanager
def pyspf_lookup(resolver: SyncDNS) -> Iterator[None]:
    """While inside, pyspf's DNS lookups in this thread go to `resolver`."""
    install_pyspf_hook()
    previous = getattr(_bound, "dns", None)
    _bound.dns = resolver
    try:
        yield
    finally:
        _bound.dns = previous


def install_pyspf_hook() -> None:
    """Put our dispatching lookup in pyspf's module; idempotent, thread-safe."""
    import spf
    with _install_lock:
        if getattr(spf.DNSLookup, "_mailappliance", False):
            return
        original = spf.DNSLookup

        def lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list:
            resolver = getattr(_bound, "dns", None)
            if resolver is None:
                return original(name, qtype, strict, timeout)
            return _spf_records(resolver, name, qtype, timeout)

        lookup._mailappliance = True     # type: ignore[attr-defined]
        spf.DNSLookup = lookup


def _spf_records(resolver: SyncDNS, name: str, qtype: str, timeout: float) -> list:
    """pyspf's lookup contract: [((name, qtype), value)], TXT values as lists of bytes strings.

    CNAMEs are followed by dnspython, so every answer is keyed by the name asked (as pyspf's
    own dnspython lookup does); a temporary failure is pyspf's TempError (RFC 7208 temperror).
    """
    import spf
    if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
        return []              # type SPF (99) is obsolete (RFC 7208 3.1) and never asked for here
    try:
        records = resolver.query(name, qtype, timeout)
    except DNSTemporaryError as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    key = (name, qtype)
    if qtype in ("A", "AAAA"):
        return [(key, record.address) for record in records]
    if qtype == "MX":
        return [(key, (record.preference, record.exchange.to_text(True))) for record in records]
    if qtype == "PTR":
        return [(key, record.target.to_text(True)) for record in records]
    return [(key, list(record.strings)) for record in records]
