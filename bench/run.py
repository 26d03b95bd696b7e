"""`make bench`: orchestra against Celery and Dramatiq, same machine, same broker, one run.

Prints one table and writes the same figures to ``bench/results/latest.json``.
Each figure is the median of ``--reps`` repetitions after a discarded
warm-up. Throughput is N no-op tasks from first submit to last completion;
latency is submit → completion of ``--latency-n`` sequential tasks; orchestra on
Redis + RabbitMQ and Celery (the same broker and result store) are up together
and measured in turns (throughput: one repetition each per turn; latency: 50
tasks each per turn), so a noisy spell on the shared machine falls on both alike.
Besides: CLI start-up, `task list` / `task get` with 100,000 finished tasks in
state, and the resident memory of an idle agent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import llm_groups
from bench.cpu import CPUMeter, settle, with_descendants
from bench.procs import AMQP_URL, ORCH_THREADS, REDIS_URL, orchestra, stop_procs
from bench.state_probe import query_times, rss_mb, wall_ms

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
POLL = 0.0005
IDLE_SECONDS = 3.0
STATE_TASKS = 100_000
# coder agents (processes) x threads each: on the services 2 x 8, as Dramatiq's; on SQLite
# one (every write takes the one file lock: a second agent only adds contention)
AGENTS = {"services": 2, "embedded": 1}
AGENT_THREADS = 8
BULK = 100  # tasks per bulk submit (as `task submit --batch`)
LATENCY_BLOCK = 50  # latency tasks per turn when systems are measured side by side


@dataclass
class Row:
    system: str
    mode: str
    n: int
    concurrency: str
    persistence: str
    confirms: str
    throughput: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    runs: list[float] = field(default_factory=list)
    idle_agent_rss_mb: float | None = None
    cpu_ms_per_task: float | None = None
    note: str = ""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class System:
    """One system under test, set up: its row, a throughput run, one latency sample."""

    row: Row
    throughput: Callable[[], float]  # N tasks, first submit to last completion: tasks/s
    one: Callable[[int], float]  # one task, submit to completion, waited on: seconds
    pids: Callable[[], list[int]]  # its processes, for CPU per task


def measure_throughput(systems: list[System], reps: int) -> list[tuple[System, str]]:
    """Throughput (median of ``reps`` after a discarded warm-up each) and CPU per task
    over the system's processes + the services. With several systems, in turns: each
    repetition runs every system once, who goes first alternating, so a slow spell of
    the shared machine falls on all of them alike. Returns the systems that failed."""
    failed: dict[int, str] = {}  # id(system) → why
    cpu: dict[int, list[float]] = {id(s): [] for s in systems}

    def run(system: System, measured: bool) -> None:
        if id(system) in failed:
            return
        try:
            meter = CPUMeter(system.pids())
            rate = system.throughput()
            settle(system.pids())  # its trailing work, in its own turn and CPU count
        except Exception as exc:
            print(
                f"bench: {system.row.system} failed: {type(exc).__name__}: {exc}", file=sys.stderr
            )
            failed[id(system)] = f"failed: {type(exc).__name__}: {exc}"
            return
        if measured:
            system.row.runs.append(rate)
            cpu[id(system)].append(meter.elapsed() / system.row.n * 1000)

    for system in systems:
        run(system, measured=False)  # warm-up, discarded
    for rep in range(reps):
        for system in systems if rep % 2 == 0 else systems[::-1]:
            run(system, measured=True)
    for system in systems:
        if system.row.runs:
            system.row.throughput = statistics.median(system.row.runs)
            system.row.cpu_ms_per_task = statistics.median(cpu[id(system)])
    return [(s, failed[id(s)]) for s in systems if id(s) in failed]


def measure_latency(systems: list[System], count: int, block: int = LATENCY_BLOCK) -> None:
    """p50/p99 of ``count`` sequential tasks per system. With several systems, in turns
    of ``block`` tasks (who goes first alternates): a noisy spell on the shared machine
    then falls on all of them alike, instead of on whichever was measured then."""
    samples: list[list[float]] = [[] for _ in systems]
    for system in systems:  # warm-up, discarded
        for k in range(min(block, 50)):
            system.one(k)
    for turn, start in enumerate(range(0, count, block)):
        order = list(range(len(systems)))
        if turn % 2:
            order.reverse()
        for i in order:
            samples[i] += [systems[i].one(k) for k in range(start, min(count, start + block))]
    for i, system in enumerate(systems):
        system.row.p50_ms = percentile(samples[i], 50) * 1000
        system.row.p99_ms = percentile(samples[i], 99) * 1000
        if len(systems) > 1:
            others = [s.row.system for s in systems if s is not system]
            system.row.note = (
                f"throughput and latency in turns with {', '.join(others)} "
                f"(latency: {block} tasks a turn)"
            )


@contextmanager
def orchestra_system(mode: str, n: int) -> Iterator[System]:
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import SubmitRequest, TaskService

    agents, concurrency = AGENTS[mode], AGENT_THREADS
    row = Row(
        "orchestra",
        mode,
        n,
        f"1 orchestrator x {ORCH_THREADS} + {agents} agents x {concurrency} threads",
        "every transition + event persisted"
        + (" (Redis)" if mode == "services" else " (SQLite WAL)"),
        "throughput: `task submit --batch`'s bulk submit (100 creates a round trip), "
        "publisher confirms, windowed, flushed before the clock stops; "
        "latency: `submit --wait`, the task's end instead of a confirm"
        if mode == "services"
        else "committed transaction",
    )
    with orchestra(mode, concurrency, agents) as (backends, procs):
        svc = TaskService(backends, load_roles())  # type: ignore[arg-type]
        state = backends.state  # type: ignore[attr-defined]

        def succeeded() -> int:
            return int(state.status_counts().get("succeeded", 0))

        def throughput() -> float:
            target = succeeded() + n
            start = time.perf_counter()
            # a bulk submitter (`task submit --batch`): 100 creates a round trip,
            # confirms in windows, one flush
            reqs = [SubmitRequest(text=f"noop {i}", capability="code") for i in range(n)]
            last = None
            for i in range(0, n, BULK):
                last = svc.submit_many(reqs[i : i + BULK])[-1][0].id
            svc.flush()
            # One cheap read a poll, like Dramatiq's counter and Celery's GET: the last
            # task's row (the queue is FIFO), then the count once or twice. Counting
            # every poll is not cheap on SQLite: GROUP BY status walks an index of every
            # task (~2 ms at 25,000), which every 2 ms took ~half of a core from the
            # agent on this 2-core machine (session 13).
            while state.get_task(last).status != "succeeded":
                time.sleep(0.002)
            while succeeded() < target:
                time.sleep(0.002)
            return n / (time.perf_counter() - start)

        def one(i: int) -> float:  # `task submit --wait`: only the task's end wakes it
            start = time.perf_counter()
            task, _ = svc.submit(SubmitRequest(text=f"lat {i}", capability="code"), wait=True)
            task = svc.wait(task, 60, counted=True)  # its end, not a publisher confirm
            assert task.status == "succeeded", task.status
            return time.perf_counter() - start

        yield System(row, throughput, one, lambda: [p.pid for p in procs])
        time.sleep(IDLE_SECONDS)  # the agent has handled every task and sits idle
        row.idle_agent_rss_mb = rss_mb(procs[1].pid)


# -- Celery ---------------------------------------------------------------------
@contextmanager
def celery_system(n: int) -> Iterator[System]:
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    done: list[str] = []  # ids whose result keys the run deletes at the end
    env = {**os.environ, "BENCH_QUEUE": queue, "PYTHONPATH": str(REPO)}
    os.environ["BENCH_QUEUE"] = queue
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--pool",
            "threads",
            "-c",
            "2",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "warning",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sys.path.insert(0, str(REPO))
        from bench.celery_app import app, noop

        app.conf.task_default_queue = queue
        first = noop.apply_async((0,), queue=queue)
        first.get(timeout=60)
        done.append(first.id)
        row = Row(
            "celery",
            "rabbitmq+redis",
            n,
            "1 worker x 2 threads (acks_late)",
            "persistent messages; results in Redis",
            "publisher confirms off (default)",
        )

        def throughput() -> float:
            start = time.perf_counter()
            results = [noop.apply_async((i,), queue=queue) for i in range(n)]
            for r in results:
                r.get(timeout=600)
            rate = n / (time.perf_counter() - start)
            done.extend(r.id for r in results)
            return rate

        def one(i: int) -> float:
            start = time.perf_counter()
            result = noop.apply_async((i,), queue=queue)
            result.get(timeout=60, interval=POLL)
            elapsed = time.perf_counter() - start
            done.append(result.id)
            return elapsed

        yield System(row, throughput, one, lambda: with_descendants(worker.pid))
    finally:
        stop_procs([worker])
        _delete_queue(queue)
        _delete_celery_results(done)


def _delete_celery_results(ids: list[str]) -> None:
    """Delete the result keys of exactly the tasks this run sent (no pattern delete:
    the Redis database may hold a user's own Celery results)."""
    import redis

    from bench.celery_app import app

    r = redis.Redis.from_url(REDIS_URL)
    keys = [app.backend.get_key_for_task(task_id) for task_id in ids]
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])
    r.close()


# -- Dramatiq -------------------------------------------------------------------
@contextmanager
def dramatiq_system(n: int) -> Iterator[System]:
    import itertools

    import redis

    queue = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENCH_QUEUE": queue, "PYTHONPATH": str(REPO)}
    os.environ["BENCH_QUEUE"] = queue
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "bench.dramatiq_app", "-p", "2", "-t", "8", "-Q", queue],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    r = redis.Redis.from_url(REDIS_URL)
    try:
        sys.path.insert(0, str(REPO))
        from bench.dramatiq_app import COUNTER, noop

        def wait_count(target: int) -> None:
            while int(r.get(COUNTER) or 0) < target:
                time.sleep(0.002)

        r.delete(COUNTER)
        noop.send(-1)
        wait_count(1)
        row = Row(
            "dramatiq",
            "rabbitmq",
            n,
            "2 processes x 8 threads",
            "persistent messages; completions counted in Redis",
            "publisher confirms off (default)",
        )

        def throughput() -> float:
            base = int(r.get(COUNTER) or 0)
            start = time.perf_counter()
            for i in range(n):
                noop.send(i)
            wait_count(base + n)
            return n / (time.perf_counter() - start)

        ids = itertools.count(1_000_000)  # a fresh item key per sample (warm-up included)

        def one(_: int) -> float:
            item = next(ids)
            key = f"{queue}:item:{item}"
            start = time.perf_counter()
            noop.send(item)
            while not r.exists(key):
                time.sleep(POLL)
            return time.perf_counter() - start

        yield System(row, throughput, one, lambda: with_descendants(worker.pid))
    finally:
        stop_procs([worker])
        _delete_queue(queue)
        keys = list(r.scan_iter(f"{queue}:*"))
        if keys:
            r.delete(*keys)


def _delete_queue(queue: str) -> None:
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        ch = conn.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            ch.queue_delete(name)
        ch.exchange_delete(queue)  # Celery declares a direct exchange named after its queue
        conn.close()
    except Exception as exc:  # cleanup is best effort
        print(f"bench: could not delete queue {queue}: {exc}", file=sys.stderr)


# -- CLI start-up ---------------------------------------------------------------
def startup_times(runs: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="orchestra-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    env["ORCHESTRA_HOME"] = str(home)
    orchestra_bin = str(Path(sys.executable).parent / "orchestra")
    commands = {
        "orchestra --help": [orchestra_bin, "--help"],
        "orchestra task submit -q (embedded)": [orchestra_bin, "task", "submit", "-q", "noop"],
        "python -c 'import typer, rich' (floor)": [sys.executable, "-c", "import typer, rich"],
    }
    out = {}
    try:
        for label, cmd in commands.items():
            out[label] = wall_ms(cmd, env, runs)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row], startup: dict[str, float], queries: dict[str, float]) -> None:
    print()
    header = (
        f"{'system':<10} {'mode':<15} {'N':>6} {'tasks/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms/task':>11}"
    )
    print(header + "  concurrency; persistence; confirms")
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.system:<10} {r.mode:<15} {r.n:>6} {_fmt(r.throughput, '9.0f')} "
            f"{_fmt(r.p50_ms, '8.2f')} {_fmt(r.p99_ms, '8.2f')} "
            f"{_fmt(r.cpu_ms_per_task, '11.2f')}  "
            f"{r.concurrency}; {r.persistence}; {r.confirms}{' — ' + r.note if r.note else ''}"
        )
    base = {r.system + "/" + r.mode: r for r in rows}
    orch = base.get("orchestra/services")
    for other in ("celery/rabbitmq+redis", "dramatiq/rabbitmq"):
        them = base.get(other)
        if orch and them and orch.throughput and them.throughput:
            ratio = f"throughput {orch.throughput / them.throughput:.2f}x"
            if orch.p50_ms and them.p50_ms:
                ratio += f", latency p50 {orch.p50_ms / them.p50_ms:.2f}x"
            print(f"ratio orchestra(services) / {other.split('/')[0]}: {ratio}")
    print()
    for label, ms in startup.items():
        print(f"start-up  {label:<42} {ms:7.0f} ms (median)")
    for label, ms in queries.items():
        print(f"query     {label:<42} {ms:7.0f} ms (median)")
    for r in rows:
        if r.idle_agent_rss_mb is not None:
            label = f"idle agent RSS ({r.mode}, after the run)"
            print(f"memory    {label:<42} {r.idle_agent_rss_mb:7.1f} MB")


def run_group(
    names: list[str],
    factories: dict[str, Callable[[], AbstractContextManager[System]]],
    n: int,
    reps: int,
    latency_n: int,
) -> list[Row]:
    """Set the systems up together, measure their throughput, then their latency (each
    in turns when there are several)."""
    systems: list[System] = []
    failed: list[Row] = []
    with ExitStack() as stack:
        for name in names:
            print(f"bench: starting {name}…", flush=True)
            try:
                systems.append(stack.enter_context(factories[name]()))
            except Exception as exc:
                print(f"bench: {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                note = f"failed: {type(exc).__name__}: {exc}"
                failed.append(
                    Row(name.split("-")[0], name.split("-")[-1], n, "-", "-", "-", note=note)
                )
        if systems:
            together = " and ".join(s.row.system for s in systems)
            turns = ", in turns" if len(systems) > 1 else ""
            print(
                f"bench: throughput of {together} (N={n}, {reps} reps + warm-up{turns})…",
                flush=True,
            )
            for system, note in measure_throughput(systems, reps):
                system.row.note = note
                systems.remove(system)
                failed.append(system.row)
        if systems:
            together = " and ".join(s.row.system for s in systems)
            print(f"bench: latency of {together} over {latency_n} tasks each…", flush=True)
            try:
                measure_latency(systems, latency_n)
            except Exception as exc:
                print(f"bench: latency failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return [s.row for s in systems] + failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--latency-n", type=int, default=500, help="sequential latency tasks")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument(
        "--systems",
        default="orchestra-embedded,orchestra-services,celery,dramatiq,startup,state",
        help="comma-separated subset",
    )
    parser.add_argument(
        "--state-tasks", type=int, default=STATE_TASKS, help="finished tasks for the query probe"
    )
    llm_groups.add_arguments(parser)
    args = parser.parse_args()
    only = llm_groups.groups(args)
    wanted = set(args.systems.split(",")) if "noop" in only else set()
    factories: dict[str, Callable[[], AbstractContextManager[System]]] = {
        "orchestra-services": lambda: orchestra_system("services", args.n),
        "celery": lambda: celery_system(args.n),
        "orchestra-embedded": lambda: orchestra_system("embedded", args.n),
        "dramatiq": lambda: dramatiq_system(args.n),
    }
    # orchestra on the services and Celery share the broker and the result store: they
    # are up together and their latency is measured in turns (measure_latency)
    groups = [["orchestra-services", "celery"], ["orchestra-embedded"], ["dramatiq"]]
    rows: list[Row] = []
    for group in groups:
        names = [name for name in group if name in wanted]
        if names:
            rows += run_group(names, factories, args.n, args.reps, args.latency_n)
    startup = startup_times(10) if "startup" in wanted else {}
    queries: dict[str, float] = {}
    if "state" in wanted:
        print(f"bench: task list / task get over {args.state_tasks:,} finished tasks…", flush=True)
        for mode in ("embedded", "services"):
            try:
                queries.update(query_times(mode, args.state_tasks, 5, REDIS_URL, AMQP_URL))
            except Exception as exc:
                print(f"bench: state probe ({mode}) failed: {exc!r}", file=sys.stderr)
    if rows or startup or queries:
        print_table(rows, startup, queries)
    issue20 = llm_groups.run(args, only)  # the LLM-bound and tool-loop rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "args": vars(args),
                "rows": [asdict(r) for r in rows],
                "startup_ms": startup,
                "query_ms": queries,
                **issue20,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
