"""DNS block and allow lists (RFC 5782), weighted as postscreen does.

At connect every zone of `[checks] dnsbl` and `dnswl` is asked at once for the client's
address (its octets or nibbles reversed, under the zone). A zone lists the client when it
answers an A record in 127.0.0.0/8 (RFC 5782 2.1); 127.255.255.x is a list saying it will not
answer us (Spamhaus's codes for public resolvers and over-quota users), which must never count
as a listing, or one misconfigured resolver would refuse every client. Any other answer is a
broken or hijacked zone (some resolvers answer NXDOMAIN with an advertising address): ignored.

The weights of the zones that list the client add up to `facts.scores["dnsbl"]`: at or above
`dnsbl_threshold` the client is refused 554 5.7.1 naming the lists (answered at MAIL, so the
log shows whom it wrote to), above 0 it is doubtful, below 0 it is allow-listed (greylisting
skips it). A zone that does not answer within dns_timeout counts as not listing.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet import defer

from appliance import maillog, replies
from appliance.filters.base import Check, Facts, Verdict
from appliance.filters.dns import DNSUnsure, Lookups
from appliance.filters.fcrdns import unmapped

PENDING = "dnsbl.pending"        # facts.notes: the queries started by start(), awaited at connect

LISTED = "listed"
REFUSED = "refused"              # 127.255.255.x: the list refuses to answer us
IGNORED = "ignored"              # outside 127/8: not a DNSBL answer

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_REFUSALS = ipaddress.ip_network("127.255.255.0/24")


def query_name(ip: str, zone: str) -> str:
    """The name to ask `zone` about `ip`: 2.0.0.127.zone, or the 32 nibbles reversed for IPv6 (RFC 5782 2.1, 2.4)."""
    address = ipaddress.ip_address(unmapped(ip))
    if address.version == 4:
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join([*reversed(labels), zone.strip(".")])


def classify(answer: str) -> str:
    """What one A record of a list's answer means: LISTED, REFUSED or IGNORED."""
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return IGNORED
    if address.version != 4 or address not in _LOOPBACK:
        return IGNORED
    if address in _REFUSALS:
        return REFUSED
    return LISTED


@dataclass(frozen=True)
class ZoneAnswer:
    zone: str
    weight: float
    listed: bool
    problem: str = ""            # why the answer did not count, for the log ("" when it did or was NXDOMAIN)


class DNSBL(Check):
    """Weighted block and allow lists; one log line per verdict and one per list that misbehaved."""

    name = "dnsbl"

    def __init__(self, lookups: Lookups, blocklists: Sequence[tuple[str, float]],
                 allowlists: Sequence[tuple[str, float]] = (), threshold: float = 2.0) -> None:
        self.lookups = lookups
        # an allow list only ever allows: `list.dnswl.org` (weight 1 by default) means -1
        self.zones = [(zone, weight) for zone, weight in blocklists] + [(zone, -abs(w)) for zone, w in allowlists]
        self.threshold = threshold

    def start(self, facts: Facts) -> defer.Deferred:
        """Send every query (once per session); connect awaits them."""
        pending = facts.notes.get(PENDING)
        if pending is None:
            pending = facts.notes[PENDING] = defer.gatherResults(
                [defer.ensureDeferred(self._ask(facts.peer, zone, weight)) for zone, weight in self.zones])
        return pending

    async def connect(self, facts: Facts) -> Verdict | None:
        answers: list[ZoneAnswer] = await self.start(facts)
        for answer in answers:
            if answer.problem:
                maillog.emit("check-warning", session=facts.session, check=self.name, zone=answer.zone,
                             peer=facts.peer, reason=answer.problem)
        hits = [answer for answer in answers if answer.listed]
        if not hits:
            return None
        score = sum(answer.weight for answer in hits)
        facts.scores[self.name] = score
        blocking = [answer.zone for answer in hits if answer.weight > 0]
        allowing = [answer.zone for answer in hits if answer.weight < 0]
        summary = _summary(blocking, allowing, score)
        if score > 0 and score >= self.threshold:
            text = f"Service unavailable; client [{unmapped(facts.peer)}] blocked using {', '.join(blocking)}"
            explanation = await self._explanation(facts.peer, blocking[0])
            if explanation:
                text += f"; {explanation}"
            return Verdict.reject(replies.DNSBL_LISTED.with_text(text), summary)
        if score > 0:
            facts.doubts.append(f"listed on {', '.join(blocking)}")
            return Verdict.tag(summary)
        if score < 0:
            facts.notes["allowlisted"] = True
        return Verdict.accept(summary)

    async def _ask(self, peer: str, zone: str, weight: float) -> ZoneAnswer:
        try:
            found = await self.lookups.a(query_name(peer, zone))
        except DNSUnsure as problem:
            return ZoneAnswer(zone, weight, False, f"no answer: {problem}")
        kinds = {answer: classify(answer) for answer in found}
        if LISTED in kinds.values():
            return ZoneAnswer(zone, weight, True)
        if REFUSED in kinds.values():
            return ZoneAnswer(zone, weight, False, f"the list refused to answer ({', '.join(kinds)}); ignored")
        if kinds:
            return ZoneAnswer(zone, weight, False, f"answer outside 127.0.0.0/8 ({', '.join(kinds)}); ignored")
        return ZoneAnswer(zone, weight, False)

    async def _explanation(self, peer: str, zone: str) -> str:
        """The list's TXT record for the client (usually a delisting URL), for the refused sender to read; "" if none.

        Asked only for a client being refused, so it costs nothing for the others.
        """
        try:
            texts = await self.lookups.txt(query_name(peer, zone))
        except DNSUnsure:
            return ""
        return reply_safe(texts[0]) if texts else ""


def reply_safe(text: str, limit: int = 200) -> str:
    """A list's text made fit for an SMTP reply line: printable ASCII, one line, at most `limit` characters."""
    printable = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(printable.split())[:limit].strip()


def _summary(blocking: list[str], allowing: list[str], score: float) -> str:
    parts = []
    if blocking:
        parts.append(f"listed on {', '.join(blocking)}")
    if allowing:
        parts.append(f"allow-listed by {', '.join(allowing)}")
    return f"{'; '.join(parts)}; score {score:g}"

