"""The Authentication-Results header field (RFC 8601): what iprev, SPF, DKIM and DMARC found, in one field.

Readers (mail clients, filters, the user's sieve) trust an Authentication-Results field whose
authserv-id is ours, so one that arrives already claiming our host name is a forgery and is
removed (RFC 8601 5), whatever the session: an outside sender, or one of our own users, could
otherwise show a forged "dkim=pass" to a local reader. Fields of other authserv-ids stay.

Then, for inbound mail, ONE field is added (RFC 8601 2.2):
    Authentication-Results: mail.example.test;
        iprev=pass policy.iprev=192.0.2.9;
        spf=pass smtp.mailfrom=a@b.example;
        dkim=pass header.d=b.example header.s=sel header.b=AbCdEf12;
        dmarc=pass header.from=b.example
from facts.notes["iprev"] (fcrdns.py) and then facts.txn.results in the order the checks ran;
`none` when no method ran. This check runs last at DATA (build.py), after everything it reports.
"""
from __future__ import annotations

import re

from appliance import message as msg
from appliance.filters.base import AuthResult, Check, Facts, Verdict

FIELD = "Authentication-Results"
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")                # RFC 2045 token
_ADDRESS = re.compile(r"^[!#$%&'*+\-/=?^_`{|}~.0-9A-Za-z]*@[A-Za-z0-9][A-Za-z0-9.\-]*$")  # [local-part] "@" domain
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_TSPECIALS = b'()<>@,;:\\"/[]?= \t'


def authserv_id(value: bytes) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2), lowercased; "" if none.

    It is a `value` (RFC 2045: a token or a quoted-string), possibly preceded by comments and
    folding whitespace (CFWS), and followed by CFWS, a version, or ";".
    """
    at = _skip_cfws(value, 0)
    if at < len(value) and value[at:at + 1] == b'"':
        return _quoted_string(value, at + 1).lower()
    end = at
    while end < len(value) and value[end] > 0x20 and value[end] != 0x7f and value[end] not in _TSPECIALS:
        end += 1
    return value[at:end].decode("utf-8", "replace").lower()


def _skip_cfws(value: bytes, at: int) -> int:
    """The index after any blanks and (nested, quoted-pair escaped) comments from `at`."""
    depth = 0
    while at < len(value):
        byte = value[at:at + 1]
        if depth and byte == b"\\":
            at += 2
            continue
        if byte == b"(":
            depth += 1
        elif byte == b")" and depth:
            depth -= 1
        elif not depth and byte not in (b" ", b"\t", b"\r", b"\n"):
            break
        at += 1
    return min(at, len(value))


def _quoted_string(value: bytes, at: int) -> str:
    out = bytearray()
    while at < len(value) and value[at:at + 1] != b'"':
        if value[at:at + 1] == b"\\" and at + 1 < len(value):
            at += 1
        out += value[at:at + 1]
        at += 1
    return out.decode("utf-8", "replace")


def pvalue(text: str) -> str:
    """A property or reason value (RFC 8601 2.2 pvalue): as is when a token or an address, else quoted.

    The values come from outside (a HELO name, a sender, a signature's d=), so control characters go.
    """
    text = _CONTROL.sub("", text)
    if _TOKEN.match(text) or _ADDRESS.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resinfo(result: AuthResult) -> str:
    """`method=result [reason="..."] ptype.property=value ...` (RFC 8601 2.2)."""
    parts = [f"{result.method}={result.result}"]
    if result.reason:
        parts.append(f"reason={pvalue(result.reason)}")
    parts += [f"{name}={pvalue(value)}" for name, value in result.properties]
    return " ".join(parts)


def field_value(hostname: str, results: list[AuthResult]) -> str:
    """The whole value, folded one result a line: `hostname; a=b ...;\\r\\n\\tc=d ...`, or `hostname; none`."""
    if not results:
        return f"{hostname}; none"
    return f"{hostname};\r\n\t" + ";\r\n\t".join(resinfo(result) for result in results)


class AuthResults(Check):
    """The "authresults" check: the last one at DATA."""

    name = "authresults"
    inbound = False           # forged fields go from every session; our field is added to inbound mail

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.ours = hostname.lower().rstrip(".")

    def data(self, facts: Facts) -> Verdict | None:
        txn = facts.txn
        before = txn.message
        txn.message = msg.remove_matching(before, FIELD, lambda value: authserv_id(value).rstrip(".") == self.ours)
        if facts.inbound:
            iprev = facts.notes.get("iprev")
            results = ([iprev] if isinstance(iprev, AuthResult) else []) + list(txn.results)
            txn.headers.append((FIELD, field_value(self.hostname, results)))
        if txn.message is not before:
            removed = len(msg.get_all(before, FIELD)) - len(msg.get_all(txn.message, FIELD))
            return Verdict.tag(f"removed {removed} forged {FIELD} claiming {self.hostname}")
        return None
