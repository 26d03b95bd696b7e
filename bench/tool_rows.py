"""Tool-loop rows: tasks of 5 tool calls and 6 model turns (``delay`` s each), many at once.

orchestra runs them as real processes (an orchestrator and one agent of the
bench's ``looker`` role, ``--concurrency`` = the tasks at once, its tool a real
built-in: Glob in the task's empty workspace) and persists every step; the
others run in one process each (bench/frameworks.py): a hand-written loop on
the raw ``AsyncAnthropic`` SDK (the floor), LangGraph's ReAct agent without and
with a durable checkpointer, and CrewAI (in a virtualenv of its own: its
dependencies pin versions orchestra's cannot take, e.g. mcp < 2).

Wall time is the first submit (or the first task started) to the last
answer, all tasks at once; CPU per task is the system's processes only (for
orchestra: agent, orchestrator and submitter, plus Redis and RabbitMQ in
``all``), the endpoint's own CPU per call beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import CPUMeter, cpu_seconds
from bench.endpoint import Running
from bench.llm_rows import llm_env, peak_rss_mb, profile
from bench.procs import REPO, last_json_line, orchestra
from bench.table import fmt, print_rows

TURNS = 6
CREWAI_VENV = REPO / ".venv-crewai"
CREWAI_SPEC = "crewai[anthropic]>=1.0,<2"
# no telemetry or tracing leaves the machine (the frameworks' own switches)
QUIET = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "OTEL_SDK_DISABLED": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}
PERSISTS = {
    "orchestra": "every step (prompt, 6 model turns, 5 tool starts + results) in Redis",
    "orchestra-2": "the same, two agent processes sharing the tasks",
    "raw": "nothing (the floor)",
    "langgraph": "nothing (no checkpointer)",
    "langgraph-sqlite": "every super-step's checkpoint (AsyncSqliteSaver, a local file)",
    "crewai": "nothing (no memory, no flow persistence)",
}


@dataclass
class ToolRow:
    system: str
    at_once: int
    delay_s: float
    wall_s: float | None = None
    tasks_per_s: float | None = None
    cpu_ms_per_task: float | None = None  # the system's own processes
    all_cpu_ms_per_task: float | None = None  # and the services it needs
    peak_rss_mb: float | None = None
    endpoint_cpu_ms_per_call: float | None = None
    persists: str = ""
    note: str = ""

    @property
    def ideal_s(self) -> float:
        return TURNS * self.delay_s


def orchestra_row(row: ToolRow, endpoint: Running, mode: str, agents: int = 1) -> ToolRow:
    from bench.procs import ROLES
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import SubmitRequest, TaskService

    slots = -(-row.at_once // agents)  # each agent's share of the tasks at once
    with orchestra(
        mode,
        slots,
        agents,
        role="looker",
        capability="lookup",
        extra_env=llm_env(endpoint.url),
    ) as (backends, procs):
        svc = TaskService(backends, load_roles(ROLES))
        state = backends.state

        def done() -> int:
            counts = state.status_counts()
            if counts.get("failed"):
                raise RuntimeError(f"{counts['failed']} tool-loop task(s) failed")
            return int(counts.get("succeeded", 0))

        def wait(count: int) -> None:
            deadline = time.monotonic() + 120 + 4 * row.ideal_s
            while done() < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{done()} of {count} tool-loop tasks done in time")
                time.sleep(0.01)

        warm, _ = svc.submit(SubmitRequest(text="warm-up", capability="lookup"))
        wait(1)  # the first connection, the toolbox, lazy imports
        steps = len(state.steps(warm.id))
        agent = procs[1].pid
        meter = CPUMeter([p.pid for p in procs])
        own = CPUMeter([p.pid for p in procs], services=False)
        profiler = profile(agent, f"tools-{row.at_once}")
        ep, start = cpu_seconds(endpoint.pid), time.perf_counter()
        for i in range(row.at_once):
            svc.submit(SubmitRequest(text=f"look up {i}", capability="lookup"), confirm=False)
        svc.flush()
        wait(1 + row.at_once)
        row.wall_s = time.perf_counter() - start
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(timeout=30)
        row.cpu_ms_per_task = own.elapsed() / row.at_once * 1000
        row.all_cpu_ms_per_task = meter.elapsed() / row.at_once * 1000
        row.endpoint_cpu_ms_per_call = (cpu_seconds(endpoint.pid) - ep) / row.at_once / TURNS * 1e3
        row.peak_rss_mb = sum(peak_rss_mb(p.pid) for p in procs[1:])  # the agents together
        row.note = f"{mode}; {agents} agent{'s' if agents > 1 else ''} x {slots} slots"
        row.note += f"; {steps} steps a task" + ("; peak MB: the agents' sum" if agents > 1 else "")
    return row


def crewai_python() -> Path:
    """CrewAI's own virtualenv, made on first use (its pins conflict with orchestra's)."""
    python = CREWAI_VENV / "bin" / "python"
    if not python.exists():
        print(f"bench: installing {CREWAI_SPEC} into {CREWAI_VENV.name}…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CREWAI_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", CREWAI_SPEC], check=True, timeout=1200
        )
    return python


def framework_row(row: ToolRow, endpoint: Running) -> ToolRow:
    python = crewai_python() if row.system == "crewai" else Path(sys.executable)
    cmd = [str(python), "-W", "ignore", "-m", "bench.frameworks", row.system]
    cmd += ["--url", endpoint.url, "--n", str(row.at_once)]
    ep = cpu_seconds(endpoint.pid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")} | QUIET
    result = last_json_line(cmd, env=env, timeout=300 + 10 * row.ideal_s)
    calls_cpu = cpu_seconds(endpoint.pid) - ep
    if result["done"] < row.at_once:
        raise RuntimeError(f"{row.at_once - result['done']} tasks failed: {result['error']}")
    row.wall_s = result["wall_s"]
    row.cpu_ms_per_task = row.all_cpu_ms_per_task = result["cpu_s"] / row.at_once * 1000
    row.peak_rss_mb = result["peak_rss_mb"]
    # the warm-up task's calls are in the endpoint's CPU too
    row.endpoint_cpu_ms_per_call = calls_cpu / (row.at_once + 1) / TURNS * 1000
    row.note = "one process, asyncio"
    if row.system == "crewai":
        row.note += f"; its own virtualenv {CREWAI_VENV.name}"

    return row


def tool_rows(sizes: list[int], delay: float, systems: list[str], mode: str) -> list[ToolRow]:
    """Every system at each size, against one endpoint."""
    rows: list[ToolRow] = []
    with Running(delay, TURNS) as endpoint:
        for size in sizes:
            for system in systems:
                print(f"bench: tool loop, {system}, {size} at once…", flush=True)
                row = ToolRow(system, size, delay, persists=PERSISTS.get(system, ""))
                try:
                    if system == "orchestra":
                        orchestra_row(row, endpoint, mode)
                    elif system == "orchestra-2":  # a second agent process: both cores
                        orchestra_row(row, endpoint, mode, agents=2)
                    else:
                        framework_row(row, endpoint)
                    assert row.wall_s is not None
                    row.tasks_per_s = size / row.wall_s
                except Exception as exc:  # reported; the other systems go on
                    print(f"bench: {system} at {size} failed: {exc!r}", file=sys.stderr)
                    row.note = f"failed: {type(exc).__name__}: {exc}"
                rows.append(row)
    return rows


def print_tool_rows(rows: list[ToolRow]) -> None:
    if not rows:
        return
    header = (
        f"{'tool loop':<17} {'at once':>7} {'wall s':>7} {'ideal':>5} {'tasks/s':>8}"
        f" {'CPU ms/task':>11} {'+services':>9} {'peak MB':>7} {'endpoint ms':>11}"
    )
    print_rows(header, "persists; notes", map(_line, rows))
    _ratios(rows)


def _line(r: ToolRow) -> str:
    return (
        f"{r.system:<17} {r.at_once:>7} {fmt(r.wall_s, '7.2f')} {r.ideal_s:>5.1f} "
        f"{fmt(r.tasks_per_s, '8.1f')} {fmt(r.cpu_ms_per_task, '11.1f')} "
        f"{fmt(r.all_cpu_ms_per_task, '9.1f')} {fmt(r.peak_rss_mb, '7.0f')} "
        f"{fmt(r.endpoint_cpu_ms_per_call, '11.2f')}  {r.persists}; {r.note}"
    )


def _ratios(rows: list[ToolRow]) -> None:
    by = {(r.system, r.at_once): r for r in rows}
    for (system, size), r in by.items():
        floor = by.get(("raw", size))
        if system == "raw" or floor is None or not (r.wall_s and floor.wall_s):
            continue
        if floor.cpu_ms_per_task and r.cpu_ms_per_task:
            print(
                f"ratio {system} / raw SDK at {size}: wall {r.wall_s / floor.wall_s:.2f}x, "
                f"CPU per task {r.cpu_ms_per_task / floor.cpu_ms_per_task:.2f}x"
            )
