"""End to end on Redis + RabbitMQ: real `orchestra` processes, faults included.

Each test runs under its own key prefix and queue prefix, and deletes its
keys and queues afterwards. Agents heartbeat fast with a short TTL so a
killed agent's task is taken over within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.models import MSG_RUN, Envelope
from orchestra_cli.settings import load_settings
from orchestra_cli.state.redis import RedisStateStore
from orchestra_cli.status import Status
from tests.contract.conftest import AMQP_URL, REDIS_URL
from tests.services.conftest import close_connections_named, delete_queues_with_prefix
from tests.support import Proc, clean_env, processes, require_service, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBMITTER = """
import sys
from orchestra_cli.backends import open_backends
from orchestra_cli.engine.roles import load_roles
from orchestra_cli.engine.service import SubmitRequest, TaskService
from orchestra_cli.settings import load_settings

settings = load_settings().settings
backends = open_backends(settings)
service = TaskService(backends, load_roles(settings.agents.definitions_dir))
capability = sys.argv[3] or None  # none: the orchestrator plans and routes it
for i in range(int(sys.argv[1])):
    service.submit(SubmitRequest(text=f"{sys.argv[2]} task {i}", capability=capability))
backends.close()
"""


@dataclass
class Env:
    vars: dict[str, str]
    cwd: Path
    prefix: str

    def with_(self, **extra: str) -> dict[str, str]:
        return {**self.vars, **extra}

    def backends(self) -> Backends:
        """In-process clients on the same namespace, to inspect state."""
        return open_backends(load_settings(env=self.vars, cwd=self.cwd).settings)


@pytest.fixture
def svc_env(tmp_path: Path) -> Iterator[Env]:
    require_service("Redis", "127.0.0.1", 6379)
    require_service("RabbitMQ", "127.0.0.1", 5672)
    prefix = f"orchestra-e2e-{uuid.uuid4().hex[:10]}"
    env = Env(
        clean_env(
            {
                "ORCHESTRA_HOME": str(tmp_path / "home"),
                "ORCHESTRA_STATE_URL": REDIS_URL,
                "ORCHESTRA_BROKER_URL": AMQP_URL,
                "ORCHESTRA_REDIS__KEY_PREFIX": prefix,
                "ORCHESTRA_RABBITMQ__QUEUE_PREFIX": prefix,
                "ORCHESTRA_LLM__PROVIDER": "offline",
                "ORCHESTRA_AGENTS__HEARTBEAT_SECONDS": "0.5",
                "ORCHESTRA_AGENTS__TTL_SECONDS": "2",
            }
        ),
        tmp_path,
        prefix,
    )
    yield env
    try:
        b = env.backends()
        try:
            if isinstance(b.state, RedisStateStore):
                b.state.purge_namespace()
        finally:
            b.close()
    finally:
        delete_queues_with_prefix(prefix, AMQP_URL)


def _start(env: Env, procs: list[Proc], args: list[str], log: str, **extra: str) -> Proc:
    proc = Proc(args, env.with_(**extra), env.cwd, env.cwd / f"{log}.log")
    procs.append(proc)
    return proc


def _submit(
    env: Env, count: int, tag: str, capability: str = "code", **extra: str
) -> subprocess.Popen[bytes]:
    """``count`` tasks from a submitter process; ``capability=""`` leaves routing to the planner."""
    return subprocess.Popen(
        [sys.executable, "-c", SUBMITTER, str(count), tag, capability],
        env=env.with_(**extra),
        cwd=env.cwd,
    )


def _succeeded(b: Backends) -> int:
    store = b.state
    assert isinstance(store, RedisStateStore)
    return int(store.r.zcard(store.key("by", "status", "succeeded")))


def _assert_each_succeeded_once(b: Backends, expected: int) -> None:
    tasks = b.state.list_tasks(limit=expected + 100)
    assert len(tasks) == expected
    assert all(t.status == Status.SUCCEEDED for t in tasks)
    assert all(b.state.count_events(t.id, "succeeded") == 1 for t in tasks)


def test_five_hundred_tasks_from_four_submitters_all_succeed_exactly_once(svc_env: Env) -> None:
    with processes() as procs:
        _start(svc_env, procs, ["run", "--concurrency", "4"], "orchestrator")
        for i in range(1, 4):
            _start(
                svc_env,
                procs,
                ["agent", "start", "coder", "--name", f"coder-{i}", "--concurrency", "4"],
                f"coder-{i}",
            )
        started = time.monotonic()
        # half routed at submit, half planned and routed by the orchestrator
        submitters = [_submit(svc_env, 125, f"s{i}", "code" if i % 2 else "") for i in range(4)]
        assert [p.wait(timeout=120) for p in submitters] == [0, 0, 0, 0]
        b = svc_env.backends()
        try:
            wait_until(lambda: _succeeded(b) == 500, timeout=120, interval=0.5, what="500 done")
            elapsed = time.monotonic() - started
            _assert_each_succeeded_once(b, 500)
        finally:
            b.close()
    print(f"500 tasks on Redis + RabbitMQ in {elapsed:.1f}s ({500 / elapsed:.0f} tasks/s)")


def test_killed_agent_task_is_redelivered_and_completes_once(svc_env: Env) -> None:
    slow = {"ORCHESTRA_LLM__OFFLINE__LATENCY_MS": "2500"}
    with processes() as procs:
        _start(svc_env, procs, ["run"], "orchestrator")
        victim = _start(
            svc_env,
            procs,
            ["agent", "start", "coder", "--name", "victim", "--concurrency", "1"],
            "victim",
            **slow,
        )
        res = run_orchestra(
            ["task", "submit", "-q", "--capability", "code", "slow work"], svc_env.vars, svc_env.cwd
        )
        assert res.code == 0, res
        task_id = res.out.strip()
        b = svc_env.backends()
        try:
            wait_until(lambda: b.state.get_task(task_id).status == Status.RUNNING, timeout=20)
            victim.kill9()
            _start(svc_env, procs, ["agent", "start", "coder", "--name", "heir"], "heir", **slow)
            done = wait_until(
                lambda: (t := b.state.get_task(task_id)).status == Status.SUCCEEDED and t,
                timeout=40,
                interval=0.2,
                what="the redelivered task to succeed",
            )
            assert done.agent == "heir"
            assert b.state.count_events(task_id, "succeeded") == 1
            assert b.state.count_events(task_id, "running") == 2
        finally:
            b.close()


def test_killed_orchestrator_restarts_and_nothing_is_lost(svc_env: Env) -> None:
    with processes() as procs:
        orch = _start(svc_env, procs, ["run"], "orchestrator-1")
        _start(
            svc_env,
            procs,
            ["agent", "start", "coder", "--name", "coder-1", "--concurrency", "4"],
            "coder-1",
            ORCHESTRA_LLM__OFFLINE__LATENCY_MS="200",
        )
        assert _submit(svc_env, 80, "o", capability="").wait(timeout=60) == 0  # all planned
        b = svc_env.backends()
        try:
            wait_until(lambda: _succeeded(b) >= 10, timeout=30, what="some progress")
            orch.kill9()
            assert _succeeded(b) < 80  # killed mid-run
            _start(svc_env, procs, ["run"], "orchestrator-2")
            wait_until(lambda: _succeeded(b) == 80, timeout=60, interval=0.3, what="all 80")
            _assert_each_succeeded_once(b, 80)
        finally:
            b.close()


def test_a_task_with_a_capability_needs_no_orchestrator_and_one_without_waits_for_it(
    svc_env: Env,
) -> None:
    with processes() as procs:
        _start(svc_env, procs, ["agent", "start", "coder", "--name", "coder-1"], "coder-1")
        b = svc_env.backends()
        wait_until(lambda: b.state.list_agents(), timeout=20, what="the agent to register")
        pinned = run_orchestra(
            ["task", "submit", "-q", "--capability", "code", "pinned"], svc_env.vars, svc_env.cwd
        )
        planned = run_orchestra(["task", "submit", "-q", "planned"], svc_env.vars, svc_env.cwd)
        assert pinned.code == 0 and planned.code == 0, (pinned, planned)
        try:
            pinned_id, planned_id = pinned.out.strip(), planned.out.strip()
            wait_until(
                lambda: b.state.get_task(pinned_id).status == Status.SUCCEEDED,
                timeout=20,
                what="the pinned task to succeed with no orchestrator",
            )
            events = b.state.events(root_id=pinned_id)
            transitions = [e.type for e in events if e.type != "step"]  # the loop logs steps
            assert transitions == ["created", "queued", "running", "succeeded"]
            assert events[1].data["planner"] == "submit" and events[1].data["live_agents"] == 1
            time.sleep(0.5)
            assert b.state.get_task(planned_id).status == Status.PENDING  # the planner's job
            _start(svc_env, procs, ["run"], "orchestrator")
            wait_until(
                lambda: b.state.get_task(planned_id).status == Status.SUCCEEDED,
                timeout=20,
                what="the planned task to succeed once an orchestrator runs",
            )
            planned_events = b.state.events(root_id=planned_id)
            assert planned_events[1].type == "queued"
            assert planned_events[1].data["planner"] != "submit"
        finally:
            b.close()


def test_a_batch_of_300_from_the_cli_runs_each_task_exactly_once(svc_env: Env) -> None:
    batch = svc_env.cwd / "batch.txt"
    batch.write_text("".join(f"batch task {i}\n" for i in range(300)))
    with processes() as procs:
        _start(svc_env, procs, ["agent", "start", "coder", "--name", "coder-1", "-n", "4"], "c1")
        res = run_orchestra(
            ["task", "submit", "--batch", str(batch), "-c", "code"], svc_env.vars, svc_env.cwd
        )
        assert res.code == 0, res
        assert len(res.out.split()) == 300 and "submitted 300 tasks" in res.err
        b = svc_env.backends()
        try:
            wait_until(lambda: _succeeded(b) == 300, timeout=60, interval=0.3, what="all 300")
            _assert_each_succeeded_once(b, 300)
        finally:
            b.close()


def test_consumers_reconnect_after_the_server_closes_connections(svc_env: Env) -> None:
    with processes() as procs:
        _start(svc_env, procs, ["run"], "orchestrator")
        for i in (1, 2):
            _start(
                svc_env,
                procs,
                ["agent", "start", "coder", "--name", f"coder-{i}"],
                f"coder-{i}",
                ORCHESTRA_LLM__OFFLINE__LATENCY_MS="30",
            )
        assert _submit(svc_env, 100, "c").wait(timeout=60) == 0
        b = svc_env.backends()
        try:
            wait_until(lambda: _succeeded(b) >= 5, timeout=30, what="some progress")
            assert close_connections_named(svc_env.prefix) >= 3
            wait_until(lambda: _succeeded(b) == 100, timeout=90, interval=0.3, what="all 100")
            _assert_each_succeeded_once(b, 100)
        finally:
            b.close()
        logs = "".join(p.output() for p in procs)
        assert "reconnect" in logs


def test_malformed_and_unknown_type_messages_are_dead_lettered_and_consumers_go_on(
    svc_env: Env,
) -> None:
    b = svc_env.backends()
    try:
        b.broker.publish_raw("intake", b"{not json")
        bogus = Envelope(type=MSG_RUN, task_id="x").model_dump_json().replace(MSG_RUN, "task.bogus")
        b.broker.publish_raw("work.code", bogus.encode())
        with processes() as procs:
            _start(svc_env, procs, ["run"], "orchestrator")
            _start(svc_env, procs, ["agent", "start", "coder", "--name", "coder-1"], "coder-1")
            assert _submit(svc_env, 5, "m").wait(timeout=60) == 0
            wait_until(lambda: _succeeded(b) == 5, timeout=60, what="5 tasks")

            def both_dead() -> dict[str, str] | None:
                found = {d["queue"]: d["reason"] for d in b.broker.dead_letters()}
                return found if {"intake", "work.code"} <= set(found) else None

            reasons = wait_until(both_dead, timeout=15, interval=0.3, what="2 dead letters")
        assert "invalid envelope" in reasons["intake"]
        assert "unknown message type" in reasons["work.code"]
    finally:
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_operations_retry_and_resume_while_redis_is_briefly_unreachable(svc_env: Env) -> None:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _reachable(port), timeout=10, what="private redis-server")
        env = Env(
            svc_env.with_(
                ORCHESTRA_STATE_URL=f"redis://127.0.0.1:{port}/0",
                ORCHESTRA_REDIS__SOCKET_TIMEOUT="0.5",
                ORCHESTRA_REDIS__CONNECT_TIMEOUT="0.5",
            ),
            svc_env.cwd,
            svc_env.prefix,
        )
        with processes() as procs:
            _start(env, procs, ["run"], "orchestrator")
            _start(
                env,
                procs,
                ["agent", "start", "coder", "--name", "coder-1"],
                "coder-1",
                ORCHESTRA_LLM__OFFLINE__LATENCY_MS="100",
            )
            assert _submit(env, 40, "r").wait(timeout=60) == 0
            b = env.backends()
            try:
                wait_until(lambda: _succeeded(b) >= 3, timeout=30, what="some progress")
                os.kill(server.pid, signal.SIGSTOP)
                started = time.monotonic()
                down = run_orchestra(
                    ["--json", "health", "--check", "state"], env.vars, env.cwd, timeout=30
                )
                assert down.code == 3, str(down)  # health reports it meanwhile
                assert json.loads(down.out)["checks"][0]["level"] == "fail"
                time.sleep(max(0.0, 3 - (time.monotonic() - started)))
                os.kill(server.pid, signal.SIGCONT)
                up = run_orchestra(["health", "--check", "state"], env.vars, env.cwd, timeout=30)
                assert up.code == 0, str(up)
                wait_until(lambda: _succeeded(b) == 40, timeout=60, interval=0.3, what="all 40")
                _assert_each_succeeded_once(b, 40)
            finally:
                b.close()
            logs = "".join(p.output() for p in procs)
            assert "attempts left" in logs  # the retries were logged
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(timeout=10)


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_task_submit_on_services_imports_neither_anthropic_nor_hvac(svc_env: Env) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "orchestra_cli",
            "task",
            "submit",
            "-q",
            "--capability",
            "code",
            "an import check",
        ],
        env=svc_env.vars,
        cwd=svc_env.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()}
    assert "pika" in imported and "redis" in imported  # the check can see imports
    assert "anthropic" not in imported and "hvac" not in imported


def test_submit_wait_returns_with_the_outcome_as_the_task_ends(svc_env: Env) -> None:
    """`task submit --wait`: woken by the task's end (not its other events), with the
    outcome as exit code, also for a task the orchestrator routes."""
    with processes() as procs:
        _start(svc_env, procs, ["run"], "orchestrator")
        _start(
            svc_env,
            procs,
            ["agent", "start", "coder", "--name", "waited"],
            "waited",
            ORCHESTRA_LLM__OFFLINE__LATENCY_MS="300",
        )
        args = ["--json", "task", "submit", "--wait", "--capability", "code", "hello"]
        started = time.monotonic()
        done = run_orchestra(args, svc_env.vars, svc_env.cwd)
        assert done.code == 0, done
        task = json.loads(done.out)["task"]
        assert task["status"] == "succeeded" and task["result"]
        assert 0.3 <= time.monotonic() - started < 30
        planned = run_orchestra(  # no capability: through the orchestrator's intake
            ["--json", "task", "submit", "--wait", "write a parser"], svc_env.vars, svc_env.cwd
        )
        assert planned.code == 0, planned
        assert json.loads(planned.out)["task"]["status"] == "succeeded"
        failing = run_orchestra(
            [
                "task",
                "submit",
                "--wait",
                "-c",
                "code",
                "--timeout",
                "0.1",
                "--max-attempts",
                "1",
                "x",
            ],
            svc_env.vars,
            svc_env.cwd,
        )
        assert failing.code == 1, failing
        assert "timed out" in failing.out + failing.err
