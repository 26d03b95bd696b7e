"""A hung agent's running task is taken over within its TTL and a second, not at the
next recovery sweep (SIGSTOP keeps its connection and its message: no redelivery)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from orchestra_cli.backends import Backends
from orchestra_cli.status import Status
from tests.e2e.test_services_e2e import Env, _start
from tests.e2e.test_services_e2e import svc_env as svc_env
from tests.support import processes, run_orchestra, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL = 2.0  # svc_env's ORCHESTRA_AGENTS__TTL_SECONDS
LOAD_SLACK = 1.0  # a shared 2-core CI machine: scheduling, process start-up, polling


def test_a_hung_agents_task_is_taken_over_within_its_ttl_plus_a_second(svc_env: Env) -> None:
    assert svc_env.vars["ORCHESTRA_AGENTS__TTL_SECONDS"] == str(int(TTL))
    b = svc_env.backends()
    with processes() as procs:
        _start(svc_env, procs, ["run"], "orchestrator")
        hung = _start(
            svc_env,
            procs,
            ["agent", "start", "coder", "--name", "coder-a"],
            "coder-a",
            ORCHESTRA_LLM__OFFLINE__LATENCY_MS="60000",
        )
        submitted = run_orchestra(
            ["task", "submit", "-q", "--capability", "code", "slow work"],
            svc_env.vars,
            svc_env.cwd,
        )
        assert submitted.code == 0, str(submitted)
        task_id = submitted.out.strip()
        wait_until(
            lambda: b.state.get_task(task_id).agent == "coder-a", timeout=60, what="coder-a on it"
        )
        _start(svc_env, procs, ["agent", "start", "coder", "--name", "coder-b"], "coder-b")
        wait_until(
            lambda: any(
                a.name == "coder-b" and a.status == "running" for a in b.state.list_agents()
            ),
            timeout=60,
            what="coder-b registered",
        )
        os.kill(hung.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_until(
                lambda: b.state.get_task(task_id).agent == "coder-b",
                timeout=30,
                interval=0.05,
                what="coder-b to take the task over",
            )
            took = time.monotonic() - stopped
            task = wait_until(
                lambda: (t := b.state.get_task(task_id)).status == Status.SUCCEEDED and t,
                timeout=60,
                what="the task to succeed",
            )
        finally:
            os.kill(hung.pid, signal.SIGCONT)
        assert took <= TTL + 1.0 + LOAD_SLACK, f"took {took:.1f}s"
        assert task.agent == "coder-b" and b.state.count_events(task_id, "succeeded") == 1
    b.close()


def _running_on(backends: Backends, agent: str) -> str:
    from orchestra_cli.models import AgentRecord, Task

    state = backends.state
    task, _ = state.create_task(Task(title="t", input="x", capability="code"))
    state.transition(task.id, Status.QUEUED, expect_version=task.version)
    _, claimed = state.claim(task.id, agent)
    assert claimed
    record = AgentRecord(name=agent, role="coder", capabilities=["code"], status="running")
    record.concurrency, record.current = 2, [task.id]
    state.save_agent(record)
    return task.id


def _age(backends: Backends, agent: str, seconds: float) -> None:
    record = backends.state.get_agent(agent)
    record.heartbeat_at -= seconds
    backends.state.save_agent(record)


def test_the_watch_takes_over_an_agent_it_saw_alive_once_its_heartbeat_expires(
    backends: Backends,
) -> None:
    from orchestra_cli.engine.recovery import DeadAgentWatch

    task_id = _running_on(backends, "coder-x")
    watch = DeadAgentWatch(backends)
    assert watch.poll() == []  # alive: seen
    _age(backends, "coder-x", backends.settings.agents.ttl_seconds + 1)
    taken = watch.poll()
    assert [f.task_id for f in taken] == [task_id]
    assert backends.state.get_task(task_id).status == Status.QUEUED
    # its message once, plus once per free slot of the hung consumer (2 - 1)
    assert backends.broker.depths().get("work.code") == 2


def test_heartbeats_gone_stale_in_a_state_outage_take_no_agents_work(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.engine.recovery import DeadAgentWatch

    task_id = _running_on(backends, "coder-y")
    watch = DeadAgentWatch(backends)
    watch.poll()
    _outage_seen_by(watch, backends, monkeypatch)
    _age(backends, "coder-y", backends.settings.agents.ttl_seconds + 1)  # the outage's gap
    assert watch.poll() == []  # not seen alive since the outage: its next beat decides
    assert backends.state.get_task(task_id).status == Status.RUNNING


def test_the_sweep_leaves_running_tasks_alone_until_heartbeats_can_be_believed_again(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.engine import recovery
    from orchestra_cli.util import now

    task_id = _running_on(backends, "coder-z")
    watch = recovery.DeadAgentWatch(backends)
    _outage_seen_by(watch, backends, monkeypatch)
    _age(backends, "coder-z", backends.settings.agents.ttl_seconds + 1)  # the outage's gap
    monkeypatch.setattr(recovery, "now", lambda: now() + 100)  # running long enough to sweep
    assert not watch.settled()
    assert recovery.locked_sweep(backends, ttl=5, orphans=watch.settled()) == []
    assert backends.state.get_task(task_id).status == Status.RUNNING
    watch._failed_at = time.monotonic() - watch.settle_seconds - 1  # the agents beat since
    assert watch.settled()
    swept = recovery.locked_sweep(backends, ttl=5, orphans=watch.settled())
    assert swept is not None and [f.task_id for f in swept] == [task_id]


def _outage_seen_by(watch: Any, backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    """One poll of ``watch`` while the state store is unreachable."""
    from orchestra_cli.errors import StateUnavailable

    def down(*args: object, **kwargs: object) -> object:
        raise StateUnavailable("cannot reach Redis")

    with monkeypatch.context() as patch:
        patch.setattr(backends.state, "list_agents", down)
        with pytest.raises(StateUnavailable):
            watch.poll()
