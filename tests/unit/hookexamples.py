"""Operator hooks the hooks tests name in `[checks] hooks` (importable as tests.unit.hookexamples:NAME)."""
from __future__ import annotations

from twisted.internet import defer, task

calls: list[tuple[str, dict]] = []
later = task.Clock()          # the deferred hooks' answers come when a test advances it


def record(stage, facts):
    calls.append((stage, facts))
    facts["peer"] = "changed by the hook"          # a copy: the session must not see this


def reject_at_rcpt(stage, facts):
    if stage == "rcpt" and facts["rcpt"] == "alice@example.test":
        return ("reject", "Alice does not take mail from you")
    return None


def reject_plain(stage, facts):
    return "reject" if stage == "mail" else None


def tempfail_at_mail(stage, facts):
    return ("tempfail", "Come back later\r\n250 smuggled") if stage == "mail" else None


def tag_at_data(stage, facts):
    if stage == "data" and b"Subject: offer" in facts["message"]:
        return ("tag", "looks like an offer", [("X-Offer", "yes")])
    return "accept"


def junk_at_connect(stage, facts):
    return ("junk", "bad neighbourhood", {"X-Neighbourhood": "bad"}) if stage == "connect" else None


def raises(stage, facts):
    raise RuntimeError("the operator's bug")


def exits(stage, facts):
    raise SystemExit(3)


def nonsense(stage, facts):
    return {"verdict": "reject"}


def unknown_action(stage, facts):
    return "discard"


def bad_header(stage, facts):
    return ("tag", "x", [("X-Evil", "a\r\nBcc: everyone@example.test")]) if stage == "data" else None


def deferred_reject(stage, facts):
    d = defer.Deferred()
    if stage == "mail":
        later.callLater(1, d.callback, ("reject", "decided later"))
    else:
        later.callLater(1, d.callback, None)
    return d


async def coroutine_tempfail(stage, facts):
    await defer.succeed(None)
    return ("tempfail", "from a coroutine") if stage == "rcpt" else None


def never_answers(stage, facts):
    return defer.Deferred()


not_callable = 42
