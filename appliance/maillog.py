"""One function per mail event, so every log line is grep-friendly and carries the queue id."""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from appliance import stats
from appliance.logwriter import timestamp

log = Logger(namespace="mail")
_writer: Any = None     # a logwriter.TurnBufferedLog under twistd (see write_to), else None


def write_to(writer: Any) -> None:
    """Write our lines straight to `writer` (logwriter.TurnBufferedLog), formatted here.

    twistdlog installs it when twistd logs to one file at info level or below; the line is the
    one twistd's file observer wrote (`<time> [mail#info] <event> key=value ...`), without
    twisted.logger's event dict, its format-string parsing and its per-event time formatting.
    None goes back to twisted.logger (unit tests, syslog, several observers).
    """
    global _writer
    _writer = writer


def flush_pending() -> None:
    """Write the lines kept for the end of this reactor turn now (before a reply sent at once)."""
    if _writer is not None:
        _writer.flush()


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
    if _writer is not None:
        _writer.write(f"{timestamp(time.time())} [mail#info] {line}\n")
    else:
        log.info(line.replace("{", "{{").replace("}", "}}"))
    stats.publish(event, fields)     # the counters `mailappliance status` shows


def session_id() -> str:
    """A new session's id: ten hex digits, on every line that session writes (`grep session=ID`)."""
    return secrets.token_hex(5)


def connect(service: str, peer: str, session: str = "") -> None:
    emit("connect", service=service, peer=peer, session=session)


def disconnect(service: str, peer: str, session: str = "") -> None:
    emit("disconnect", service=service, peer=peer, session=session)


def tls(service: str, peer: str, version: str, cipher: str, session: str = "") -> None:
    emit("tls", service=service, peer=peer, version=version, cipher=cipher, session=session)


def tls_failed(service: str, peer: str, reason: str, session: str = "") -> None:
    """The TLS handshake failed (the client refused our certificate, no shared cipher, plaintext
    on a TLS port): OpenSSL's reason, since the client's own error message never reaches us."""
    emit("tls-failed", service=service, peer=peer, reason=reason, session=session)


def auth(service: str, peer: str, login: str, ok: bool, mechanism: str = "", reason: str = "",
         session: str = "", cached: bool = False) -> None:
    """Authentication result; the password or SASL payload is never passed here. `cached`: the
    password was matched by the credential cache ([logins] credential_cache_ttl), not hashed."""
    emit("auth-ok" if ok else "auth-failed", service=service, peer=peer, login=login,
         mech=mechanism, reason=reason, cached="yes" if cached else "", session=session)


def rejected(service: str, peer: str, stage: str, reply: str, sender: str = "", rcpt: str = "",
             session: str = "") -> None:
    emit("rejected", service=service, peer=peer, stage=stage, sender=sender, rcpt=rcpt, reply=reply, session=session)


def received(qid: str, service: str, peer: str, sender: str, size: int, recipients: Iterable[str], protocol: str,
             login: str = "", session: str = "", given: Iterable[str] = (), parent: str = "") -> None:
    """A message is queued. `recipients` are the final ones (aliases expanded); `given` the
    addresses the client named, shown as orig_rcpts when they differ; `parent` the message a
    bounce is about."""
    final, named = ",".join(recipients), ",".join(_unique(given))
    emit("received", id=qid, service=service, peer=peer, sender=f"<{sender}>", size=size, rcpts=final,
         orig_rcpts=named if named != final else "", proto=protocol, login=login, parent=parent, session=session)


def delivered(qid: str, rcpt: str, where: str, delay: float, original: str = "", parent: str = "",
              via: str = "") -> None:
    """via: `local` (a mailbox or program here) or `relay` (handed to another server)."""
    emit("delivered", id=qid, rcpt=rcpt, orig_rcpt=original, to=where, delay=f"{delay:.3f}", via=via, parent=parent)


def deferred(qid: str, rcpt: str, reason: str, retry_in: float, original: str = "", parent: str = "") -> None:
    emit("deferred", id=qid, rcpt=rcpt, orig_rcpt=original, reason=reason, retry_in=f"{retry_in:.0f}",
         parent=parent)


def bounced(qid: str, rcpt: str, reason: str, original: str = "", parent: str = "") -> None:
    emit("bounced", id=qid, rcpt=rcpt, orig_rcpt=original, reason=reason, parent=parent)


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


def removed(qid: str, reason: str) -> None:
    emit("removed", id=qid, reason=reason)


def error(what: str, **fields: object) -> None:
    """An internal failure worth an operator's attention; the traceback goes through log.failure."""
    line = _fmt("error " + what, fields)
    if _writer is not None:
        _writer.write(f"{timestamp(time.time())} [mail#error] {line}\n", urgent=True)
    else:
        log.error(line.replace("{", "{{").replace("}", "}}"))


def web_refused(peer: str, path: str, status: int, reason: str, login: str = "") -> None:
    """A request to the status page or /metrics answered 401/403 (appliance/web): who, what, why.

    The path is the client's text: cut short, so a huge URL cannot make a huge log line."""
    emit("web-refused", service="web", peer=peer, path=path[:200], status=status, login=login[:200], reason=reason)
