"""Large-state probes: CLI query times with 100,000 finished tasks, idle agent memory.

The tasks are written straight into the store in bulk (as finished tasks
with their ``created`` and ``succeeded`` events), because pushing 100,000
tasks through the pipeline would only measure the pipeline again.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BATCH = 5_000


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _finished_tasks(count: int) -> Iterator[list[Any]]:
    from orchestra_cli.models import Task
    from orchestra_cli.status import Status
    from orchestra_cli.util import now

    start = now() - count * 0.001
    batch = []
    for i in range(count):
        ts = start + i * 0.001
        batch.append(
            Task(
                title=f"finished {i}",
                input=f"finished task {i}",
                capability="code",
                status=Status.SUCCEEDED,
                agent="bench-agent",
                attempts=1,
                result=f"[offline] done {i}",
                created_at=ts,
                updated_at=ts,
                queued_at=ts,
                started_at=ts,
                finished_at=ts,
                version=3,
            )
        )
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_sqlite(state: Any, count: int) -> str:
    """``count`` finished tasks in the embedded store; returns one task id."""
    last = ""
    for batch in _finished_tasks(count):
        with state.db.write() as conn:
            for task in batch:
                state._insert(conn, task)
                state._event(conn, task.id, task.root_id, "succeeded", {"from": "running"})
        last = batch[len(batch) // 2].id
    return last


def fill_redis(state: Any, count: int) -> str:
    """``count`` finished tasks in the Redis store (pipelined create scripts)."""
    from orchestra_cli.util import dumps, new_id, now

    script = state._scripts["create"]
    last = ""
    for batch in _finished_tasks(count):
        pipe = state.r.pipeline(transaction=False)
        for task in batch:
            body = {"p": state.prefix, "max": state.maxlen, "tok": new_id(), "ttl": state._op_ttl}
            body |= {"task": state._task_spec(task), "time": now()}
            script(args=[dumps(body)], client=pipe)
        pipe.execute()
        last = batch[len(batch) // 2].id
    return last


def wall_ms(cmd: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``cmd`` (after one that warms the caches), ms."""
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm the caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def query_times(
    mode: str, count: int, runs: int, redis_url: str, amqp_url: str
) -> dict[str, float]:
    """Median wall ms of `task list --limit 50` and `task get` over ``count`` finished tasks."""
    from orchestra_cli.backends import open_backends
    from orchestra_cli.settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="orchestra-bench-state-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    env["ORCHESTRA_HOME"] = str(home)
    if mode == "services":
        run_id = uuid.uuid4().hex[:8]
        env["ORCHESTRA_STATE_URL"] = redis_url
        env["ORCHESTRA_BROKER_URL"] = amqp_url
        env["ORCHESTRA_REDIS__KEY_PREFIX"] = f"bench-{run_id}"
        env["ORCHESTRA_RABBITMQ__QUEUE_PREFIX"] = f"bench-{run_id}"
    backends = open_backends(load_settings(env=env).settings)
    orchestra = str(Path(sys.executable).parent / "orchestra")
    try:
        fill = fill_redis if mode == "services" else fill_sqlite
        task_id = fill(backends.state, count)
        return {
            f"task list --limit 50 ({mode}, {count:,} tasks)": wall_ms(
                [orchestra, "task", "list", "--limit", "50"], env, runs
            ),
            f"task get ({mode}, {count:,} tasks)": wall_ms(
                [orchestra, "task", "get", task_id], env, runs
            ),
        }
    finally:
        if mode == "services":
            backends.state.purge_namespace()  # type: ignore[attr-defined]
        backends.close()
        shutil.rmtree(home, ignore_errors=True)
