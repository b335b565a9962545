"""The operator's policy hooks: `[checks] hooks = package.module:function, ...`.

The way to add a site's own rule without a fork. Each callable is a check named
`hook:package.module:function`, asked at every stage as `function(stage, facts)`:

- `stage`: "connect", "helo", "mail", "rcpt" or "data";
- `facts`: a plain dict, a fresh copy each call (changing it changes nothing): session,
  service, peer, helo, ptr, login, trusted, doubts, scores, sender (None before MAIL), rcpt
  (at rcpt), recipients, message (the bytes, at data; b"" before).

Hooks see every session, our own users' too (`facts["trusted"]` is True for them and for
[relay] trusted_networks; trusted sessions have no connect stage). The answer is None or
"accept" (nothing to say), "tag", "junk", "reject", "tempfail", or a tuple (action, text) or
(action, text, headers) where headers are (name, value) pairs or a dict added to the message
(tag, junk). reject answers `550 5.7.1 <text>`, tempfail `451 4.7.1 <text>`. A tag or junk
before MAIL holds for every message of the session.

A hook may return a Deferred or a coroutine (awaited, at most HOOK_TIMEOUT seconds); one that
does I/O must, since a plain function runs on the reactor thread. A hook that raises, times
out or answers something else is logged and passed over: an operator's bug must not stop mail.
An import error is a start-up problem (appliance/checks.py), never a surprise mid-session.
"""
from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer

from appliance import maillog, replies
from appliance.filters.base import ACCEPT, JUNK, REJECT, TAG, TEMPFAIL, Check, Facts, Stage, Verdict

HOOK_TIMEOUT = 10.0
MAX_TEXT = 200
_FIELD_NAME = re.compile(r"[!-9;-~]{1,76}")          # RFC 5322 3.6.8 ftext
_PRINTABLE = re.compile(r"[^ -~]")


class HookError(Exception):
    """A hook that cannot be imported; its text is the reason."""


def load(spec: str) -> Callable[..., Any]:
    """The callable `package.module:function` names (the function may be `Class.method`)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise HookError("not package.module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:          # the operator's module may fail in any way while importing
        raise HookError(f"{type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookError(f"{module_name} has no {attribute}") from None
    if not callable(target):
        raise HookError(f"{attribute} is not callable")
    return target


def problems(specs: Iterable[str]) -> list[str]:
    """`cannot import x.y:z: reason` for each hook that cannot be loaded (for appliance/checks.py)."""
    found = []
    for spec in specs:
        try:
            load(spec)
        except HookError as exc:
            found.append(f"cannot import {spec}: {exc}")
    return found


def make_hooks(specs: Iterable[str], clock: Any) -> list["Hook"]:
    """One check per hook, in the configured order; HookError for one that cannot be loaded."""
    return [Hook(spec, load(spec), clock) for spec in specs]


class Hook(Check):
    inbound = False

    def __init__(self, spec: str, function: Callable[..., Any], clock: Any, timeout: float = HOOK_TIMEOUT) -> None:
        self.name = f"hook:{spec}"
        self.function = function
        self.clock = clock
        self.timeout = timeout

    def connect(self, facts: Facts) -> Any:
        return self.ask(Stage.CONNECT, facts)

    def helo(self, facts: Facts) -> Any:
        return self.ask(Stage.HELO, facts)

    def mail(self, facts: Facts) -> Any:
        self._carry_session_tags(facts)
        return self.ask(Stage.MAIL, facts)

    def rcpt(self, facts: Facts) -> Any:
        return self.ask(Stage.RCPT, facts)

    def data(self, facts: Facts) -> Any:
        return self.ask(Stage.DATA, facts)

    def ask(self, stage: Stage, facts: Facts) -> defer.Deferred:
        """Deferred[Verdict | None]; never fails (but for the session going away)."""
        return defer.ensureDeferred(self._ask(stage, facts))

    async def _ask(self, stage: Stage, facts: Facts) -> Verdict | None:
        try:
            answer = self.function(stage.value, snapshot(stage, facts))
            if inspect.isawaitable(answer) or isinstance(answer, defer.Deferred):
                waiting = defer.ensureDeferred(answer) if not isinstance(answer, defer.Deferred) else answer
                answer = await waiting.addTimeout(self.timeout, self.clock)
        except defer.CancelledError:
            raise
        except (Exception, SystemExit) as exc:     # sys.exit() in a hook must not end the session's checks
            maillog.log.failure("hook {name} failed at {stage}; passed over", name=self.name, stage=stage.value)
            maillog.error("hook-failed", session=facts.session, check=self.name, stage=stage.value,
                          reason=f"{type(exc).__name__}: {exc}"[:MAX_TEXT])
            return None
        try:
            verdict = interpret(answer)
        except ValueError as exc:
            maillog.error("hook-nonsense", session=facts.session, check=self.name, stage=stage.value, reason=str(exc))
            return None
        if verdict is not None and stage in (Stage.CONNECT, Stage.HELO) and verdict.action in (TAG, JUNK):
            facts.notes.setdefault("hook-session-tags", []).append(verdict)
        return verdict

    @staticmethod
    def _carry_session_tags(facts: Facts) -> None:
        """A tag or junk said before MAIL belongs to every transaction of the session."""
        for verdict in facts.notes.get("hook-session-tags", ()):
            facts.txn.headers.extend(verdict.headers)
            facts.txn.junk = facts.txn.junk or verdict.action == JUNK


def snapshot(stage: Stage, facts: Facts) -> dict[str, Any]:
    """What a hook sees: copies, so nothing it does reaches the session."""
    txn = facts.txn
    in_transaction = stage in (Stage.MAIL, Stage.RCPT, Stage.DATA)
    return {
        "session": facts.session, "service": facts.service, "peer": facts.peer, "helo": facts.helo,
        "ptr": facts.ptr, "login": facts.login, "trusted": facts.trusted,
        "doubts": list(facts.doubts), "scores": dict(facts.scores),
        "sender": txn.sender if in_transaction else None,
        "rcpt": txn.rcpt if stage == Stage.RCPT else "",
        "recipients": list(txn.recipients) if in_transaction else [],
        "message": txn.message if stage == Stage.DATA else b"",
    }


def interpret(answer: Any) -> Verdict | None:
    """The hook's answer as a verdict; ValueError for anything else."""
    if answer is None:
        return None
    if isinstance(answer, str):
        action, rest = answer, ()
    elif isinstance(answer, tuple) and 1 <= len(answer) <= 3 and isinstance(answer[0], str):
        action, rest = answer[0], answer[1:]
    else:
        raise ValueError(f"not an answer: {_short(answer)}")
    text, headers = "", ()
    for item in rest:
        if isinstance(item, str):
            text = _clean_text(item)
        elif item is not None:
            headers = _clean_headers(item)
    return _verdict(action.strip().lower(), text, headers)


def _verdict(action: str, text: str, headers: tuple[tuple[str, str], ...]) -> Verdict | None:
    reason = text or f"hook said {action}"
    if action == ACCEPT:
        return Verdict.accept(text) if text else None
    if action == TAG:
        return Verdict.tag(reason, *headers)
    if action == JUNK:
        return Verdict.junk(reason, *headers)
    if action == REJECT:
        return Verdict.reject(replies.HOOK_REJECT.with_text(text) if text else replies.HOOK_REJECT, reason)
    if action == TEMPFAIL:
        return Verdict.tempfail(replies.HOOK_TEMPFAIL.with_text(text) if text else replies.HOOK_TEMPFAIL, reason)
    raise ValueError(f"unknown action {_short(action)}")


def _clean_text(text: str) -> str:
    """One printable ASCII line: the text goes into an SMTP reply (no CR LF smuggled in)."""
    return _PRINTABLE.sub("?", text.strip())[:MAX_TEXT]


def _clean_headers(headers: Any) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs that are one header field each; ValueError for anything else."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    clean = []
    for pair in pairs[:20]:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"not a (name, value) header pair: {_short(pair)}")
        name, value = pair[0], pair[1]
        if not _FIELD_NAME.fullmatch(name) or "\r" in value or "\n" in value or len(value) > 900:
            raise ValueError(f"not a header field: {_short(pair)}")
        clean.append((name, value))
    return tuple(clean)


def _short(value: Any) -> str:
    return repr(value)[:80]
