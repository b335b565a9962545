"""Many messages to several users over parallel SMTP sessions: each one stored once, none lost.

Local deliveries of one reactor turn are written by several disk threads at once (store/base.py
FileStore._jobs); this checks, with a real twistd and both formats, that the spreading neither
drops a message nor stores one twice, and that the queue is empty afterwards.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.integration.harness import DOMAIN, Appliance, make_message, wait_for

USERS = {f"user{i}": f"user{i}-secret-{i}" for i in range(5)}
SESSIONS = 6
PER_SESSION = 20


def send_session(app: Appliance, session: int, errors: list[str]) -> None:
    """One SMTP session: PER_SESSION messages, each to two users chosen by its number."""
    try:
        with app.smtp(timeout=30) as client:
            for n in range(PER_SESSION):
                first, second = recipients(session, n)
                subject = f"s{session}-m{n}"
                client.sendmail("someone@outside.example", [f"{first}@{DOMAIN}", f"{second}@{DOMAIN}"],
                                make_message(subject, to=f"{first}@{DOMAIN}"))
    except Exception as exc:         # reported by the test, not lost in the thread
        errors.append(f"session {session}: {exc!r}")


def recipients(session: int, n: int) -> tuple[str, str]:
    first = (session + n) % len(USERS)
    return f"user{first}", f"user{(first + 1 + n % 3) % len(USERS)}"


def expected() -> dict[str, list[str]]:
    wanted: dict[str, list[str]] = {user: [] for user in USERS}
    for session in range(SESSIONS):
        for n in range(PER_SESSION):
            for user in recipients(session, n):
                wanted[user].append(f"s{session}-m{n}")
    return {user: sorted(subjects) for user, subjects in wanted.items()}


def subjects(app: Appliance, user: str) -> list[str]:
    found = []
    for message in app.messages(user):
        for line in message.splitlines():
            if line.startswith(b"Subject: "):
                found.append(line[len(b"Subject: "):].decode().strip())
                break
    return sorted(found)


@pytest.fixture
def app(tmp_path, storage: str) -> Iterator[Appliance]:
    """An appliance with five users (make_appliance has only alice and bob)."""
    appliance = Appliance(str(tmp_path / "appliance"), storage=storage, services=("smtp",), users=USERS)
    try:
        appliance.setup()
        appliance.start()
        yield appliance
    finally:
        appliance.stop()


def test_parallel_sessions_to_several_users_store_each_message_exactly_once(app: Appliance):
    errors: list[str] = []
    threads = [threading.Thread(target=send_session, args=(app, s, errors)) for s in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    wanted = expected()
    total = sum(len(v) for v in wanted.values())
    wait_for(lambda: sum(len(app.messages(user)) for user in USERS) >= total, timeout=60, interval=0.2)
    wait_for(lambda: app.cli("queue", "list").stdout == "the queue is empty\n", timeout=30, interval=0.5)
    assert {user: subjects(app, user) for user in USERS} == wanted
