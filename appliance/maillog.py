"""One function per mail event, so every log line is grep-friendly and carries the queue id."""
from __future__ import annotations

from collections.abc import Iterable

from twisted.logger import Logger

from appliance import stats

log = Logger(namespace="mail")


def _fmt(event: str, fields: dict[str, object]) -> str:
    parts = [event]
    for key, value in fields.items():
        if value is None or value == "":
            continue
        text = str(value).replace("\n", " ").replace("\r", " ")
        if " " in text or "," in text:
            text = '"' + text.replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def emit(event: str, **fields: object) -> None:
    """Write one `event key=value ...` line; braces are escaped for twisted.logger's format."""
    line = _fmt(event, fields)
    log.info(line.replace("{", "{{").replace("}", "}}"))
    stats.publish(event, fields)     # the counters `mailappliance status` shows


def connect(service: str, peer: str) -> None:
    emit("connect", service=service, peer=peer)


def disconnect(service: str, peer: str) -> None:
    emit("disconnect", service=service, peer=peer)


def tls(service: str, peer: str, version: str, cipher: str) -> None:
    emit("tls", service=service, peer=peer, version=version, cipher=cipher)


def auth(service: str, peer: str, login: str, ok: bool, mechanism: str = "", reason: str = "") -> None:
    """Authentication result; the password or SASL payload is never passed here."""
    emit("auth-ok" if ok else "auth-failed", service=service, peer=peer, login=login, mech=mechanism, reason=reason)


def rejected(service: str, peer: str, stage: str, reply: str, sender: str = "", rcpt: str = "") -> None:
    emit("rejected", service=service, peer=peer, stage=stage, sender=sender, rcpt=rcpt, reply=reply)


def received(qid: str, service: str, peer: str, sender: str, size: int, recipients: Iterable[str], protocol: str,
             login: str = "") -> None:
    emit("received", id=qid, service=service, peer=peer, sender=f"<{sender}>", size=size,
         rcpts=",".join(recipients), proto=protocol, login=login)


def delivered(qid: str, rcpt: str, where: str, delay: float, via: str = "") -> None:
    """via: `local` (a mailbox or program here) or `relay` (handed to another server)."""
    emit("delivered", id=qid, rcpt=rcpt, to=where, delay=f"{delay:.3f}", via=via)


def deferred(qid: str, rcpt: str, reason: str, retry_in: float) -> None:
    emit("deferred", id=qid, rcpt=rcpt, reason=reason, retry_in=f"{retry_in:.0f}")


def bounced(qid: str, rcpt: str, reason: str) -> None:
    emit("bounced", id=qid, rcpt=rcpt, reason=reason)


def removed(qid: str, reason: str) -> None:
    emit("removed", id=qid, reason=reason)


def error(what: str, **fields: object) -> None:
    """An internal failure worth an operator's attention; the traceback goes through log.failure."""
    log.error(_fmt("error " + what, fields).replace("{", "{{").replace("}", "}}"))
