"""The recovery sweep on the embedded backend: what it finds and what it does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.engine.recovery import Recovery
from orchestra_cli.models import Q_INTAKE, Q_RESULTS, AgentRecord, Task
from orchestra_cli.settings import AgentSettings, Settings
from orchestra_cli.status import Status
from tests.conftest import CliRunner


@pytest.fixture
def fast(home: Path) -> Iterator[Backends]:
    settings = Settings(
        home=home,
        agents=AgentSettings(heartbeat_seconds=0.1, ttl_seconds=0.2),
    )
    b = open_backends(settings)
    yield b
    b.close()


def _running(b: Backends, agent: str) -> Task:
    task, _ = b.state.create_task(Task(title="t", input="i", capability="code"))
    b.state.transition(task.id, Status.QUEUED)
    return b.state.transition(task.id, Status.RUNNING, agent=agent, attempts=1)


def test_task_of_a_vanished_agent_is_requeued_with_a_new_message(fast: Backends) -> None:
    task = _running(fast, "ghost")
    assert Recovery(fast).scan() == []  # too fresh to judge
    time.sleep(0.4)
    findings = Recovery(fast).sweep()
    assert [(f.task_id, f.action, f.done) for f in findings] == [(task.id, "requeue", True)]
    assert "ghost is gone" in findings[0].reason
    assert fast.state.get_task(task.id).status == Status.QUEUED
    assert fast.broker.depths().get("work.code") == 1
    event = fast.state.events(root_id=task.id)[-1]
    assert event.data["reason"] == "recovered" and event.data["previous_agent"] == "ghost"


def test_task_a_live_agent_is_not_working_on_is_requeued(fast: Backends) -> None:
    task = _running(fast, "zombie")
    fast.state.save_agent(
        AgentRecord(name="zombie", role="coder", capabilities=["code"], status="running")
    )
    time.sleep(1.5)
    fast.state.save_agent(
        AgentRecord(name="zombie", role="coder", capabilities=["code"], status="running")
    )
    findings = Recovery(fast).scan()
    assert findings and "alive but not working on it" in findings[0].reason
    fast.state.save_agent(
        AgentRecord(
            name="zombie", role="coder", capabilities=["code"], status="running", current=[task.id]
        )
    )
    assert Recovery(fast).scan() == []  # it says it is working on it: leave it alone


def test_stale_pending_task_is_resubmitted_and_dry_run_changes_nothing(fast: Backends) -> None:
    task, _ = fast.state.create_task(Task(title="t", input="i"))
    assert [f.action for f in Recovery(fast, stale_seconds=0).sweep(dry_run=True)] == ["resubmit"]
    assert fast.broker.depths().get(Q_INTAKE) is None
    Recovery(fast, stale_seconds=0).sweep()
    assert fast.broker.depths().get(Q_INTAKE) == 1
    assert fast.state.get_task(task.id).status == Status.PENDING


def test_a_subtask_waiting_for_its_dependency_is_not_stuck(fast: Backends) -> None:
    parent, _ = fast.state.create_task(Task(title="p", input="i"))
    first = Task(title="a", input="i", parent_id=parent.id, root_id=parent.id, capability="code")
    then = Task(title="b", input="i", parent_id=parent.id, root_id=parent.id, depends_on=[first.id])
    fast.state.create_subtasks(parent.id, [first, then], "two steps")
    fast.state.transition(first.id, Status.QUEUED)
    fast.state.transition(first.id, Status.RUNNING, agent="a1", attempts=1)
    fast.state.save_agent(
        AgentRecord(name="a1", role="coder", capabilities=["code"], current=[first.id])
    )
    assert Recovery(fast, stale_seconds=0).scan() == []  # b waits for a, which runs
    fast.state.transition(first.id, Status.SUCCEEDED, result="done")
    findings = Recovery(fast, stale_seconds=0).scan()  # a ended and b was never dispatched
    assert [(f.task_id, f.action) for f in findings] == [(then.id, "resubmit")]


def test_parent_whose_subtasks_all_ended_is_reaggregated(fast: Backends) -> None:
    parent, _ = fast.state.create_task(Task(title="p", input="i"))
    child = Task(title="c", input="i", parent_id=parent.id, root_id=parent.id, capability="code")
    fast.state.create_subtasks(parent.id, [child], "one step")
    fast.state.transition(child.id, Status.CANCELLED)
    findings = Recovery(fast, stale_seconds=0).sweep()
    assert [f.action for f in findings] == ["reaggregate"]
    assert fast.broker.depths().get(Q_RESULTS) == 1


def test_recover_command_reports_findings_as_json(cli: CliRunner) -> None:
    tid = cli("task", "submit", "-q", "x").out.strip()
    data = json.loads(cli("--json", "recover", "--dry-run", "--stale", "0").out)
    assert data["dry_run"] is True
    assert [(f["task_id"], f["action"]) for f in data["findings"]] == [(tid, "resubmit")]
    assert "nothing stuck" in cli("recover").err


def test_queued_task_whose_message_was_lost_is_republished_once(fast: Backends) -> None:
    from orchestra_cli.models import MSG_RUN, Envelope

    lost, _ = fast.state.create_task(Task(title="lost", input="i", capability="code"))
    fast.state.transition(lost.id, Status.QUEUED)
    kept, _ = fast.state.create_task(Task(title="kept", input="i", capability="code"))
    fast.state.transition(kept.id, Status.QUEUED)
    fast.broker.publish("work.code", Envelope(type=MSG_RUN, task_id=kept.id))
    findings = Recovery(fast, stale_seconds=0).sweep()
    assert [(f.action, f.done) for f in findings] == [("republish", True)]
    assert fast.broker.depths()["work.code"] == 2  # the deficit is filled, nothing more
    assert Recovery(fast, stale_seconds=0).scan() == []  # and not again next sweep


def test_long_silent_agents_are_pruned_from_the_registry(home: Path) -> None:
    from orchestra_cli.engine.recovery import locked_sweep

    settings = Settings(home=home, agents=AgentSettings(prune_after_seconds=0.2))
    b = open_backends(settings)
    try:
        b.state.save_agent(AgentRecord(name="old", role="coder", capabilities=["code"]))
        time.sleep(0.3)
        b.state.save_agent(AgentRecord(name="fresh", role="coder", capabilities=["code"]))
        assert locked_sweep(b, ttl=5) == []
        assert [a.name for a in b.state.list_agents()] == ["fresh"]
    finally:
        b.close()


def test_a_subtask_retried_while_its_parent_was_failing_leaves_the_parent_waiting(
    fast: Backends,
) -> None:
    """The orchestrator read the children (one failed), then the operator retried
    that child, then the orchestrator failed the parent: the parent waits again."""
    from orchestra_cli.engine.orchestrator import Orchestrator
    from orchestra_cli.engine.planner import RuleBasedPlanner
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import TaskService

    parent, _ = fast.state.create_task(Task(title="p", input="i"))
    child = Task(title="c", input="i", parent_id=parent.id, root_id=parent.id, capability="code")
    fast.state.create_subtasks(parent.id, [child], "one step")
    fast.state.transition(child.id, Status.FAILED, error="boom")
    orchestrator = Orchestrator(fast, load_roles(), RuleBasedPlanner())
    seen = fast.state.children(parent.id)  # the orchestrator's read: all ended
    TaskService(fast, load_roles()).retry(child.id)  # parent still waiting: left alone
    orchestrator._aggregate(fast.state.get_task(parent.id), seen)
    assert fast.state.get_task(parent.id).status == Status.WAITING
    assert fast.state.get_task(child.id).status == Status.PENDING
