"""What the ingest benchmarks share: a server under load, smtp-source runs, CPU from /proc."""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from tests.integration.harness import DOMAIN, Appliance

USER = "alice"
SENDER = "bench@outside.example"
CLIENT = "client.bench.test"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    appliance: Appliance

    @property
    def port(self) -> int:
        return self.appliance.ports["smtp"]

    def stored(self) -> int:
        path = self.appliance.mailbox_path(USER)
        return sum(len(os.listdir(os.path.join(path, sub))) for sub in ("new", "cur")
                   if os.path.isdir(os.path.join(path, sub)))


def cpu_seconds(pid: int) -> float:
    """CPU of a process and its children: its own utime + stime + cutime + cstime (children it
    reaped, e.g. spamd's recycled workers) plus utime + stime of its live descendants."""
    total, children = 0.0, {pid}
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                    own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
                    stats[int(entry)] = (int(fields[1]), own + (reaped if int(entry) == pid else 0))
                except (OSError, IndexError, ValueError):
                    continue
        changed = True
        while changed:
            changed = False
            for child, (parent, _) in stats.items():
                if parent in children and child not in children:
                    children.add(child)
                    changed = True
        total = sum(stats[p][1] for p in children if p in stats)
    except OSError:
        pass
    return total / TICKS


def smtp_source(port: int, sessions: int, size: int, count: int, timeout: float) -> None:
    command = ["smtp-source", "-d", "-s", str(sessions), "-l", str(size), "-m", str(count), "-M", CLIENT,
               "-f", SENDER, "-t", f"{USER}@{DOMAIN}", f"127.0.0.1:{port}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")


def measure(server: Server, scanners: list[int], sessions: int, size: int, count: int,
            timeout: float) -> tuple[float, float, float]:
    """(messages/s until all are stored, appliance CPU ms/message, scanners' CPU ms/message)."""
    pid = server.appliance.process.pid
    before, cpu, scan = server.stored(), cpu_seconds(pid), sum(cpu_seconds(p) for p in scanners)
    started = time.monotonic()
    smtp_source(server.port, sessions, size, count, timeout)
    while server.stored() - before < count:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{server.name}: only {server.stored() - before} of {count} stored in {timeout:.0f} s")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    used = cpu_seconds(pid) - cpu
    scanned = sum(cpu_seconds(p) for p in scanners) - scan
    return count / seconds, used * 1000 / count, scanned * 1000 / count
