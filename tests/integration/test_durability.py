"""250 means stored: kill -9 the appliance under load, restart it, and find every acknowledged message."""
from __future__ import annotations

import email
import smtplib
import threading
import time

from tests.integration.harness import DOMAIN, Appliance, make_message, wait_for

ALICE = f"alice@{DOMAIN}"
MESSAGES = 300
SESSIONS = 6
SEND_DEADLINE = 60.0


class Load:
    """Several SMTP sessions sending numbered messages; records which ones got 250 for DATA."""

    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        self.lock = threading.Lock()
        self.next_number = 0
        self.acked: set[int] = set()
        self.killed = threading.Event()
        self.errors_before_kill: list[str] = []

    def take(self) -> int | None:
        with self.lock:
            if self.next_number >= MESSAGES:
                return None
            self.next_number += 1
            return self.next_number - 1

    def session(self) -> None:
        deadline = time.monotonic() + SEND_DEADLINE
        while not self.killed.is_set() and time.monotonic() < deadline:
            try:
                with self.appliance.smtp(timeout=10) as client:
                    while (number := self.take()) is not None:
                        client.sendmail("load@outside.example", [ALICE], message(number))
                        with self.lock:
                            self.acked.add(number)
                    return
            except (smtplib.SMTPException, OSError) as problem:
                if not self.killed.is_set():
                    self.errors_before_kill.append(repr(problem))

    def kill_partway(self) -> None:
        wait_for(lambda: len(self.acked) >= MESSAGES // 3, timeout=SEND_DEADLINE, interval=0.001)
        self.killed.set()
        self.appliance.kill9()


def message(number: int) -> bytes:
    return make_message(f"durable-{number}", extra_headers=f"Message-ID: <durable-{number}@client.example.test>\r\n")


def stored_numbers(appliance: Appliance) -> set[int]:
    found = set()
    for raw in appliance.messages(ALICE):
        subject = email.message_from_bytes(raw)["Subject"] or ""
        if subject.startswith("durable-") and subject[8:].isdigit():
            found.add(int(subject[8:]))
    return found


def test_every_acknowledged_message_survives_kill_9(make_appliance, storage):
    appliance = make_appliance(storage=storage)
    load = Load(appliance)
    threads = [threading.Thread(target=load.session, daemon=True) for _ in range(SESSIONS)]
    killer = threading.Thread(target=load.kill_partway, daemon=True)
    for thread in threads + [killer]:
        thread.start()
    for thread in threads + [killer]:
        thread.join(SEND_DEADLINE + 10)

    assert load.killed.is_set(), "the appliance was never killed"
    assert not load.errors_before_kill, load.errors_before_kill[:5]
    acked = set(load.acked)
    assert MESSAGES // 3 <= len(acked) < MESSAGES, f"{len(acked)} acknowledged: the kill was not partway"

    appliance.start()
    try:
        wait_for(lambda: acked <= stored_numbers(appliance), timeout=60, interval=0.5)
    except AssertionError:
        missing = sorted(acked - stored_numbers(appliance))
        raise AssertionError(f"{len(missing)} of {len(acked)} acknowledged messages lost: {missing[:20]}") from None
