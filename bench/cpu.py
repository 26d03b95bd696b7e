"""CPU seconds spent by a set of processes, from ``/proc/<pid>/stat`` (utime + stime).

Throughput on a shared machine is noisy; the CPU a workload burns per task
summed over every process that serves it (the systems' own processes, the
submitter, redis-server and RabbitMQ) is not, so the bench reports both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
SERVICE_PORTS = (6379, 5672)  # the bench's Redis and RabbitMQ


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (every thread), seconds; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _listening_inodes(ports: set[int]) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(f"socket:[{cols[9]}]")
    return inodes


def service_pids(ports: Iterable[int] = SERVICE_PORTS) -> list[int]:
    """Pids of the servers listening on ``ports`` (this run's Redis and RabbitMQ only:
    other test instances on the machine listen elsewhere)."""
    inodes = _listening_inodes(set(ports))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            if any(os.readlink(fd) in inodes for fd in fds):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


class CPUMeter:
    """CPU seconds of ``pids`` (this process always included) between two reads."""

    def __init__(self, pids: Iterable[int], *, services: bool = True) -> None:
        self.pids = sorted({os.getpid(), *pids, *(service_pids() if services else [])})
        self._start = self.read()

    def read(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.pids}

    def elapsed(self) -> float:
        """CPU seconds used by all the processes since the meter was made."""
        now = self.read()
        return sum(now[pid] - self._start[pid] for pid in self.pids)


def settle(
    pids: Iterable[int], *, busy_share: float = 0.1, window: float = 0.25, limit: float = 15.0
) -> float:
    """Wait until ``pids`` and the services use less than ``busy_share`` of a core over
    ``window`` seconds (work a run left queued is done), at most ``limit`` seconds;
    return how long it took. Between turns of two systems, so that one's trailing
    work neither burdens the other's turn nor goes missing from its own CPU count."""
    import time

    pids = list(pids)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        meter = CPUMeter(pids)
        time.sleep(window)
        if meter.elapsed() < busy_share * window:
            break
    return time.monotonic() - start


def with_descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Dramatiq's and Celery's worker children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(parents.get(current, []))
    return out
