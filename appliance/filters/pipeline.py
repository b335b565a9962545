"""Runs the checks of one stage in order and turns their verdicts into replies and log lines.

One line per verdict (`check session=... check=dnsbl stage=rcpt verdict=reject reason=...`).
A refusal (reject, tempfail) stops the stage and fails the returned Deferred with
SMTPReplyError, which the session answers while the client is connected: reject, never bounce.
A check that crashes is logged and passed over (fail open): a bug in one check must not stop
all mail; a check that must fail closed returns a tempfail itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from twisted.internet import defer

from appliance import maillog
from appliance.filters.base import JUNK, Check, Facts, Stage, Verdict
from appliance.message import prepend
from appliance.replies import SMTPReplyError


class Pipeline:
    """The configured checks, in order (build.py decides the order: cheap and early first)."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)

    def __bool__(self) -> bool:
        return bool(self.checks)

    def names(self) -> list[str]:
        return [check.name for check in self.checks]

    def find(self, name: str) -> Check | None:
        return next((check for check in self.checks if check.name == name), None)

    def run(self, stage: Stage, facts: Facts) -> defer.Deferred:
        """Deferred[None]; fails with SMTPReplyError at the first refusal."""
        return defer.ensureDeferred(self._run(stage, facts))

    async def _run(self, stage: Stage, facts: Facts) -> None:
        for check in self.checks:
            if check.inbound and not facts.inbound:
                continue
            verdict = await self._ask(check, stage, facts)
            if verdict is None:
                continue
            self.record(check, stage, facts, verdict)
            if verdict.refuses:
                assert verdict.reply is not None
                raise SMTPReplyError(verdict.reply)

    @staticmethod
    async def _ask(check: Check, stage: Stage, facts: Facts) -> Verdict | None:
        method = getattr(check, stage.value)
        try:
            return await defer.maybeDeferred(method, facts)
        except defer.CancelledError:
            raise
        except Exception:
            maillog.log.failure("check {name} failed at {stage}; passed over", name=check.name, stage=stage.value)
            maillog.error("check-failed", session=facts.session, check=check.name, stage=stage.value)
            return None

    @staticmethod
    def record(check: Check, stage: Stage, facts: Facts, verdict: Verdict) -> None:
        """Log the verdict and keep what it adds to the message (header fields, the Junk folder)."""
        txn = facts.txn
        txn.headers.extend(verdict.headers)
        if verdict.action == JUNK:
            txn.junk = True
        reply = verdict.reply.line().decode() if verdict.reply is not None else ""
        maillog.emit("check", session=facts.session, check=check.name, stage=stage.value, verdict=verdict.action,
                     peer=facts.peer or "local", sender=f"<{txn.sender}>" if stage != Stage.CONNECT else "",
                     rcpt=txn.rcpt if stage == Stage.RCPT else "", reason=verdict.reason, reply=reply)



class DataStage:
    """The intake check (intake.Intake.checks) that runs the pipeline's data stage on an SMTP arrival.

    What the checks decided goes into the message and the envelope here: their header fields on
    top (Authentication-Results, X-Spam-*), a changed message (a forged Authentication-Results
    removed), and the Junk folder for every local recipient of a message judged spam. The pickup
    (no facts) is our own users' mail: nothing inbound applies.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, arrival: Any) -> None:
        facts = arrival.facts
        if facts is None:
            return
        txn = facts.txn
        txn.message = arrival.message
        txn.recipients = txn.recipients or [r.original or r.address for r in arrival.recipients]
        await self.pipeline.run(Stage.DATA, facts)
        message = txn.message
        if txn.headers:
            message = prepend(message, *txn.headers)
        arrival.message = message
        if txn.junk:
            for rcpt in arrival.recipients:
                if rcpt.local:
                    rcpt.folder = "Junk"
