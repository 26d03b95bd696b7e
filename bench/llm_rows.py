"""LLM-bound rows: single-call tasks against the bench endpoint, many in flight in one agent.

Each row starts an orchestrator and one agent with ``--concurrency`` = the
slots in flight, pointed at ``bench/endpoint.py`` (a separate process that
answers every call after ``delay`` seconds), and keeps the agent's queue fed
(a submitter thread holds the backlog at two rounds). Throughput is measured
in the steady state: from the first ``slots`` completions to the last, so the
ramp (connections opening, the first round in flight) is not in it. The ideal
is slots / delay; the agent's CPU per task says where the machine's CPU
becomes the limit (one process, one GIL: 1,000 / agent CPU ms per task).

The soak row runs ``soak_n`` tasks at one concurrency and samples the agent's
RSS every 1,000 completions: growth after the first thousand is a leak.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CPUMeter, cpu_seconds
from bench.endpoint import Running
from bench.procs import last_json_line, orchestra
from bench.state_probe import rss_mb
from bench.table import fmt, print_rows

API_KEY = "sk-ant-bench-000000"
POLL = 0.02
SAMPLE_EVERY = 1000


@dataclass
class LLMRow:
    system: str
    kind: str  # "single call" or "soak"
    in_flight: int
    n: int
    delay_s: float
    tasks_per_s: float | None = None
    ideal_per_s: float = 0.0
    agent_cpu_ms_per_task: float | None = None
    cpu_ms_per_task: float | None = None  # agent, orchestrator, submitter, Redis, RabbitMQ
    endpoint_cpu_ms_per_call: float | None = None
    rss_mb: float | None = None  # the agent's, at the end of the run
    peak_rss_mb: float | None = None
    rss_samples: list[tuple[int, float]] = field(default_factory=list)  # (done, MB)
    note: str = ""

    @property
    def pct_ideal(self) -> float | None:
        return None if self.tasks_per_s is None else 100 * self.tasks_per_s / self.ideal_per_s

    @property
    def cpu_ceiling(self) -> float | None:
        """Tasks/s at which the agent's process would use one core (its GIL's limit)."""
        cpu = self.agent_cpu_ms_per_task
        return None if not cpu else 1000 / cpu


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a process's resident memory, MB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def profile(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=DIR: py-spy samples ``pid`` (the GIL's holder) into DIR/NAME.txt
    (collapsed stacks, for flame graphs or a grep) until it is sent SIGINT."""
    out = os.environ.get("BENCH_PYSPY")
    if not out:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    # --gil: only the thread holding the GIL, i.e. where the process's Python CPU goes;
    # --nonblocking: sampling must not stop 1,024 threads 100 times a second
    cmd = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "100"]
    cmd += ["--nonblocking", "--gil"]
    cmd += ["--output", str(Path(out) / f"{name}.txt")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def llm_env(url: str) -> dict[str, str]:
    """The agent calls the bench endpoint through the real SDK (the anthropic provider)."""
    return {
        "ORCHESTRA_LLM__PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": API_KEY,
        "ORCHESTRA_LLM__BASE_URL": url,
        "ORCHESTRA_TASKS__DEFAULT_TIMEOUT": "600",
    }


class Feeder(threading.Thread):
    """Submits ``n`` tasks, keeping at most ``backlog`` submitted and not yet done.

    The first ``spread`` tasks go ``ramp / spread`` seconds apart: calls that all take
    the bench endpoint's one delay would otherwise come back together, round after
    round, and queue behind one another for the agent's CPU (real calls' latencies
    vary, which spreads them); the slots keep the phases they start with."""

    def __init__(
        self,
        svc: Any,
        capability: str,
        n: int,
        backlog: int,
        done: Any,
        *,
        spread: int = 0,
        ramp: float = 0.0,
    ) -> None:
        super().__init__(name="bench-feeder", daemon=True)
        self.svc, self.capability, self.n, self.backlog, self.done = (
            svc,
            capability,
            n,
            backlog,
            done,
        )
        self.spread, self.ramp = min(spread, n), ramp
        self.submitted = 0
        self.error: BaseException | None = None

    def _submit(self) -> None:
        from orchestra_cli.engine.service import SubmitRequest

        req = SubmitRequest(text=f"bench call {self.submitted}", capability=self.capability)
        self.svc.submit(req, confirm=False)
        self.submitted += 1

    def run(self) -> None:
        try:
            start = time.monotonic()
            while self.submitted < self.spread:
                due = start + self.ramp * self.submitted / self.spread
                time.sleep(max(0.0, due - time.monotonic()))
                self._submit()
            while self.submitted < self.n:
                room = min(self.backlog - (self.submitted - self.done()), self.n - self.submitted)
                if room <= 0:
                    time.sleep(POLL)
                    continue
                for _ in range(room):
                    self._submit()
                self.svc.flush()
        except BaseException as exc:  # reported by the run
            self.error = exc


def run_orchestra(
    row: LLMRow,
    endpoint: Running,
    *,
    mode: str,
    role: str = "coder",
    capability: str = "code",
    sample: bool = False,
) -> LLMRow:
    """One row: ``row.n`` tasks with ``row.in_flight`` slots; fills in the figures."""
    from bench.procs import ROLES
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import TaskService

    slots = row.in_flight
    with orchestra(
        mode, slots, role=role, capability=capability, extra_env=llm_env(endpoint.url)
    ) as (backends, procs):
        svc = TaskService(backends, load_roles(ROLES))
        state = backends.state
        agent = procs[1].pid

        def done() -> int:
            return int(state.status_counts().get("succeeded", 0))

        feeder = Feeder(svc, capability, row.n, 2 * slots, done, spread=slots, ramp=row.delay_s)
        feeder.start()
        meter: CPUMeter | None = None
        profiler: subprocess.Popen[bytes] | None = None
        start = start_done = 0
        agent_cpu = endpoint_cpu = 0.0
        # CPU-bound rows go at what the machine allows: give them at least 20 tasks/s
        deadline = time.monotonic() + 120 + max(20 * row.n * row.delay_s / slots, row.n / 20)
        next_sample = SAMPLE_EVERY
        while (finished := done()) < row.n:
            if feeder.error is not None:
                raise feeder.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"{finished} of {row.n} tasks done in time")
            if meter is None and finished >= min(slots, row.n // 2):
                meter = CPUMeter([p.pid for p in procs])
                start, start_done = time.perf_counter(), finished
                agent_cpu, endpoint_cpu = cpu_seconds(agent), cpu_seconds(endpoint.pid)
                profiler = profile(agent, f"{row.kind.replace(' ', '-')}-{slots}")
            if sample and finished >= next_sample:
                row.rss_samples.append((finished, round(rss_mb(agent), 1)))
                next_sample += SAMPLE_EVERY
            time.sleep(POLL)
        assert meter is not None
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(timeout=60)
        elapsed, tasks = time.perf_counter() - start, row.n - start_done
        row.tasks_per_s = tasks / elapsed
        row.cpu_ms_per_task = meter.elapsed() / tasks * 1000
        row.agent_cpu_ms_per_task = (cpu_seconds(agent) - agent_cpu) / tasks * 1000
        row.endpoint_cpu_ms_per_call = (cpu_seconds(endpoint.pid) - endpoint_cpu) / tasks * 1000
        row.rss_mb = rss_mb(agent)
        row.peak_rss_mb = peak_rss_mb(agent)
        if sample:
            row.rss_samples.append((row.n, round(row.rss_mb, 1)))
        feeder.join()
    return row


def llm_rows(
    slots: list[int], rounds: int, delay: float, mode: str, soak_n: int, soak_slots: int
) -> list[LLMRow]:
    """The single-call rows at each of ``slots`` in flight, then the soak row."""
    rows: list[LLMRow] = []
    with Running(delay) as endpoint:
        for count in slots:
            what = f"{count} in flight, {rounds} rounds of {delay:g}s"
            print(f"bench: llm-bound, {what}…", flush=True)
            row = LLMRow("orchestra", "single call", count, count * rounds, delay)
            row.ideal_per_s = count / delay
            rows.append(_guarded(row, lambda r: run_orchestra(r, endpoint, mode=mode)))
            floor = LLMRow("raw SDK", "single call", count, count * rounds, delay)
            floor.ideal_per_s = row.ideal_per_s
            rows.append(_guarded(floor, lambda r: run_raw(r, endpoint)))
        if soak_n:
            print(f"bench: llm-bound soak, {soak_n:,} tasks at {soak_slots} in flight…", flush=True)
            row = LLMRow("orchestra", "soak", soak_slots, soak_n, delay)
            row.ideal_per_s = soak_slots / delay
            rows.append(_guarded(row, lambda r: run_orchestra(r, endpoint, mode=mode, sample=True)))
    for row in rows:
        if row.system == "orchestra":
            row.note = row.note or f"{mode}; every transition + event persisted; streamed calls"
    return rows


def run_raw(row: LLMRow, endpoint: Running) -> LLMRow:
    """The floor: the same calls on the raw SDK in one asyncio process (bench/frameworks.py)."""
    cmd = [sys.executable, "-W", "ignore", "-m", "bench.frameworks", "raw-single"]
    cmd += ["--url", endpoint.url, "--n", str(row.n), "--slots", str(row.in_flight)]
    cmd += ["--delay", str(row.delay_s)]
    ep = cpu_seconds(endpoint.pid)
    result = last_json_line(cmd, timeout=600)
    row.tasks_per_s = result["tasks_per_s"]
    row.agent_cpu_ms_per_task = row.cpu_ms_per_task = result["cpu_ms_per_task"]
    row.endpoint_cpu_ms_per_call = (cpu_seconds(endpoint.pid) - ep) / (row.n + 1) * 1000
    row.peak_rss_mb = row.rss_mb = result["peak_rss_mb"]
    row.note = "the floor: the same streamed calls, one asyncio process, nothing persisted"
    return row


def _guarded(row: LLMRow, run: Any) -> LLMRow:
    try:
        return run(row)  # type: ignore[no-any-return]
    except Exception as exc:  # a failed row is reported and the others go on
        print(f"bench: {row.kind} at {row.in_flight} failed: {exc!r}", file=sys.stderr)
        row.note = f"failed: {type(exc).__name__}: {exc}"
        return row


def print_llm_rows(rows: list[LLMRow]) -> None:
    if not rows:
        return
    header = (
        f"{'llm-bound':<12} {'system':<9} {'in flight':>9} {'N':>6} {'tasks/s':>8}"
        f" {'ideal':>6} {'%':>5}"
        f" {'agent CPU ms':>12} {'all CPU ms':>10} {'endpoint ms':>11} {'CPU cap/s':>9}"
        f" {'RSS MB':>7} {'peak MB':>7}"
    )
    print_rows(header, "notes", map(_line, rows))


def _line(r: LLMRow) -> str:
    growth = ""
    if len(r.rss_samples) > 1:
        growth = " RSS " + " → ".join(f"{mb:.0f}" for _, mb in r.rss_samples) + " MB"
    return (
        f"{r.kind:<12} {r.system:<9} {r.in_flight:>9} {r.n:>6} {fmt(r.tasks_per_s, '8.1f')} "
        f"{r.ideal_per_s:>6.0f} {fmt(r.pct_ideal, '5.0f')} "
        f"{fmt(r.agent_cpu_ms_per_task, '12.2f')} {fmt(r.cpu_ms_per_task, '10.2f')} "
        f"{fmt(r.endpoint_cpu_ms_per_call, '11.2f')} {fmt(r.cpu_ceiling, '9.0f')} "
        f"{fmt(r.rss_mb, '7.0f')} {fmt(r.peak_rss_mb, '7.0f')}  {r.note}{growth}"
    )
