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


# --- the crash loop: kill -9 at random points of SMTP, pickup, local and remote delivery ----------

import glob  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

from tests.integration.test_delivery_e2e import MX1, Net, dns, net  # noqa: E402,F401  (fixtures)

KILLS = 20
LOOP_DEADLINE = 90.0          # the whole loop; the kills stop early rather than run longer
DRAIN_TIMEOUT = 45.0
REMOTE = "dave@example.org"
QUEUE_ID = re.compile(r"\(mailappliance\) with \S+ id (\w+)")


class Stream:
    """SMTP sessions (local and remote recipients) and sendmail runs, numbered; records what was acknowledged."""

    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        self.lock = threading.Lock()
        self.numbers = iter(range(1_000_000))
        self.acked: dict[str, set[int]] = {"smtp-local": set(), "smtp-remote": set(), "pickup": set()}
        self.stop = threading.Event()

    def number(self) -> int:
        with self.lock:
            return next(self.numbers)

    def smtp(self, kind: str, rcpt: str) -> None:
        while not self.stop.is_set():
            try:
                with self.appliance.smtp(timeout=5) as client:
                    while not self.stop.is_set():
                        n = self.number()
                        client.sendmail("load@outside.example", [rcpt], crash_message(kind, n))
                        with self.lock:
                            self.acked[kind].add(n)       # 250 for DATA: a promise
            except (smtplib.SMTPException, OSError):
                time.sleep(0.05)                          # the daemon is down: try again

    def pickup(self) -> None:
        sendmail = self.appliance.program("mailappliance")
        while not self.stop.is_set():
            n = self.number()
            done = subprocess.run([sendmail, "--config", self.appliance.config_path, "sendmail", "-f",
                                   f"alice@{DOMAIN}", ALICE], input=crash_message("pickup", n),
                                  capture_output=True, cwd=self.appliance.root, timeout=30)
            if done.returncode == 0:                      # exit 0: safely queued (or in the pickup folder)
                with self.lock:
                    self.acked["pickup"].add(n)


def crash_message(kind: str, number: int) -> bytes:
    return make_message(f"crash-{kind}-{number}", sender="load@outside.example",
                        extra_headers=f"Message-ID: <crash-{kind}-{number}@client.example.test>\r\n")


def deliveries(appliance: Appliance, sink) -> dict[tuple[str, int], list[str]]:
    """(kind, number) -> the queue ids of every delivered copy (local mailbox and the remote sink)."""
    copies = [raw.decode("utf-8", "replace") for raw in appliance.messages(ALICE)] + sink.transactions()
    found: dict[tuple[str, int], list[str]] = {}
    for text in copies:
        subject = re.search(r"^Subject: crash-([a-z-]+)-(\d+)\r?$", text, re.M)
        if subject:
            ids = QUEUE_ID.findall(text)
            found.setdefault((subject[1], int(subject[2])), []).append(ids[-1] if ids else "")
    return found


def whole_log(appliance: Appliance) -> str:
    """twistd's log with the files it rotated away (at 1 MB each)."""
    rotated = sorted(glob.glob(appliance.log_path + ".*"), key=lambda p: -int(p.rsplit(".", 1)[1]))
    texts = []
    for path in rotated:
        with open(path, encoding="utf-8", errors="replace") as handle:
            texts.append(handle.read())
    return "".join(texts) + appliance.log()


def kill_unreaped(appliance: Appliance) -> None:
    """kill -9 and wait until the process is dead but not reaped (a zombie), as a supervisor may leave it."""
    pid = appliance.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.005)
    appliance.zombies = getattr(appliance, "zombies", []) + [appliance.process]


def test_a_crash_loop_loses_nothing_acknowledged_and_logs_what_it_redelivers(make_appliance, net):
    sink = net.sink(MX1)
    appliance = make_appliance(services=("smtp",), delivery=net.delivery(),
                               relay={"trusted_networks": "127.0.0.1/32"},
                               queue={"retry_initial": "1", "retry_max": "2"})
    stream = Stream(appliance)
    workers = [threading.Thread(target=stream.smtp, args=("smtp-local", ALICE), daemon=True),
               threading.Thread(target=stream.smtp, args=("smtp-remote", REMOTE), daemon=True),
               threading.Thread(target=stream.pickup, daemon=True)]
    for worker in workers:
        worker.start()
    rng = random.Random()
    started, kills = time.monotonic(), 0
    try:
        while kills < KILLS and time.monotonic() - started < LOOP_DEADLINE:
            time.sleep(rng.uniform(0.1, 1.0))        # a random point of the stream
            kill_unreaped(appliance)
            kills += 1
            appliance.start()                        # at once: the killed process is not even reaped yet
    finally:
        stream.stop.set()
        for worker in workers:
            worker.join(40)
        for zombie in getattr(appliance, "zombies", []):
            zombie.wait(5)

    acked = {(kind, n) for kind, numbers in stream.acked.items() for n in numbers}
    assert kills >= KILLS // 2, f"only {kills} kills in {LOOP_DEADLINE} s"
    assert all(stream.acked.values()), {kind: len(numbers) for kind, numbers in stream.acked.items()}
    try:
        wait_for(lambda: acked <= deliveries(appliance, sink).keys(), timeout=DRAIN_TIMEOUT, interval=0.5)
    except AssertionError:
        missing = sorted(acked - deliveries(appliance, sink).keys())
        raise AssertionError(f"{len(missing)} of {len(acked)} acknowledged messages lost after {kills} kills: "
                             f"{missing[:20]}") from None
    # Each copy delivered again under the same queue id was redelivered after a restart: the log says so.
    log = whole_log(appliance)
    recovered = set(re.findall(r"recovered id=(\w+)", log))
    again = {qid for ids in deliveries(appliance, sink).values() for qid in ids if ids.count(qid) > 1}
    assert again <= recovered, f"redelivered without a 'recovered' log line: {sorted(again - recovered)[:10]}"
    print(f"crash loop: {kills} kills, acknowledged {({k: len(v) for k, v in stream.acked.items()})}, "
          f"{log.count('recovered id=')} recovered lines, {len(again)} redelivered copies")
