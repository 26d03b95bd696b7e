"""orchestra as real processes for the bench: an orchestrator and agents, then cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ORCH_THREADS = 4
ROLES = REPO / "bench" / "roles"  # a coder without tools, a looker with one (Glob)


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _log(home: Path) -> IO[bytes] | int:
    """Where the processes' output goes: nowhere, or a file with BENCH_KEEP_LOGS set."""
    keep = os.environ.get("BENCH_KEEP_LOGS")
    if not keep:
        return subprocess.DEVNULL
    return open(Path(keep) / f"{home.name}.log", "ab")  # closed with the run


@contextmanager
def orchestra(
    mode: str,
    agent_concurrency: int,
    agents: int = 1,
    *,
    role: str = "coder",
    capability: str = "code",
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Any, list[subprocess.Popen[bytes]]]]:
    """An orchestrator and ``agents`` agents of ``role`` as real processes; yields
    (backends, [orchestrator, agent, …]) once an agent of ``capability`` runs."""
    from orchestra_cli.backends import open_backends
    from orchestra_cli.settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="orchestra-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRA_", "ANTHROPIC_"))}
    env["ORCHESTRA_HOME"] = str(home)
    env["ORCHESTRA_LOG__LEVEL"] = "WARNING"
    env["ORCHESTRA_AGENTS__DEFINITIONS_DIR"] = str(ROLES)
    env.update(extra_env or {})
    run_id = uuid.uuid4().hex[:8]
    if mode == "services":
        env["ORCHESTRA_STATE_URL"] = REDIS_URL
        env["ORCHESTRA_BROKER_URL"] = AMQP_URL
        env["ORCHESTRA_REDIS__KEY_PREFIX"] = f"bench-{run_id}"
        env["ORCHESTRA_RABBITMQ__QUEUE_PREFIX"] = f"bench-{run_id}"
    cmd = [sys.executable, "-m", "orchestra_cli"]
    out = _log(home)
    procs = [
        subprocess.Popen([*cmd, "run", "-n", str(ORCH_THREADS)], env=env, stdout=out, stderr=out),
        *(
            subprocess.Popen(
                [*cmd, "agent", "start", role, "-n", str(agent_concurrency)],
                env=env,
                stdout=out,
                stderr=out,
            )
            for _ in range(agents)
        ),
    ]
    backends = open_backends(load_settings(env=env).settings)
    try:
        deadline = time.monotonic() + 120  # a loaded machine imports slowly
        # the agent itself (the orchestrator registers as running too, sooner)
        while not [
            a
            for a in backends.state.list_agents()
            if a.status == "running" and capability in a.capabilities
        ]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"orchestra agent {role} did not start")
            time.sleep(0.1)
        yield backends, procs
    finally:
        stop_procs(procs)
        if mode == "services":  # leave nothing behind in the shared Redis and RabbitMQ
            try:
                backends.state.purge_namespace()
                backends.broker.delete_topology()
            except Exception as exc:  # cleanup is best effort; say what was left
                print(
                    f"bench: cleanup of {env['ORCHESTRA_REDIS__KEY_PREFIX']} failed: {exc}",
                    file=sys.stderr,
                )
        backends.close()
        if not isinstance(out, int):
            out.close()
        shutil.rmtree(home, ignore_errors=True)


def last_json_line(
    cmd: list[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``cmd`` (a bench/frameworks.py row) and parse the last line of its output that
    is a JSON object; a failed run raises with the last line of its stderr."""
    import json

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {out.returncode}: {tail[:300]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]
