"""The whole pipeline with real processes on one SQLite file: faults included."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from orchestra_cli.models import MSG_RUN, Q_INTAKE, Envelope
from tests.e2e.conftest import Deployment
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_multi_step_task_runs_through_different_agents_and_watch_exits_zero(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "200"
    d.start("run", "--agents", "all")
    task_id = d.submit("Design, implement and deploy a todo API, then review it")
    watch = d.cli("task", "watch", task_id, "--timeout", "60")
    assert "succeeded" in watch.out and "running" in watch.out
    data = d.get_json(task_id)
    assert data["status"] == "succeeded"
    subtasks = data["subtasks"]
    assert isinstance(subtasks, list) and len(subtasks) == 4
    assert len({s["agent"] for s in subtasks}) == 4
    assert all(s["status"] == "succeeded" for s in subtasks)
    lines = d.cli("--json", "task", "watch", task_id).out.splitlines()
    assert json.loads(lines[0])["type"] == "created"
    decisions = (d.tmp / "home" / "decisions.jsonl").read_text().splitlines()
    assert any(json.loads(line)["decision"] == "decompose" for line in decisions)


def test_killed_agent_task_is_redelivered_and_completes_once(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "2500"
    d.start("run")
    agents = {name: d.start("agent", "start", "coder", "--name", name) for name in ("c-a", "c-b")}
    task_id = d.submit("--capability", "code", "long running job")
    running = d.wait_status(task_id, "running")
    victim = running.agent
    assert victim in agents
    agents[victim].kill9()
    done = d.wait_status(task_id, "succeeded", "failed", timeout=60)
    assert done.status == "succeeded"
    assert done.agent != victim and done.attempts == 2
    assert d.backends.state.count_events(task_id, "succeeded") == 1
    # Put back once, by whichever notices first: the broker's redelivery to the other
    # agent ("redelivered") or the orchestrator's sweep of a dead agent's task ("recovered")
    requeued = [
        e
        for e in d.backends.state.events(root_id=task_id)
        if e.data.get("reason") in ("redelivered", "recovered")
    ]
    assert len(requeued) == 1 and requeued[0].data["previous_agent"] == victim


def test_task_with_a_capability_runs_on_an_agent_alone_and_says_when_none_is_live(
    deployment: Deployment,
) -> None:
    d = deployment
    early = d.submit("--capability", "code", "submitted before any agent runs")
    assert d.task(early).status == "queued"
    types = [e.type for e in d.backends.state.events(root_id=early)]
    assert types == ["created", "queued", "no_agent"]
    d.start("agent", "start", "coder")  # no orchestrator at all
    wait_until(lambda: d.backends.state.list_agents(), timeout=20, what="the agent to register")
    late = d.submit("--capability", "code", "submitted to a live agent")
    for task_id in (early, late):
        assert d.wait_status(task_id, "succeeded", "failed").status == "succeeded"
    queued = [e for e in d.backends.state.events(root_id=late) if e.type == "queued"]
    assert queued[0].data["planner"] == "submit" and queued[0].data["live_agents"] == 1
    decisions = (d.tmp / "home" / "decisions.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["decision"] == "route" for line in decisions) == 2


def test_200_tasks_from_4_concurrent_submitters_all_succeed_once(deployment: Deployment) -> None:
    d = deployment
    d.start("run")
    d.start("agent", "start", "coder", "--concurrency", "4")
    d.start("agent", "start", "coder", "--concurrency", "4")
    ids: list[str] = []
    lock = threading.Lock()

    def submitter(n: int) -> None:
        for i in range(50):
            tid = d.submit("--capability", "code", f"job {n}-{i}")
            with lock:
                ids.append(tid)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 200
    state = d.backends.state
    wait_until(
        lambda: len(state.list_tasks(status=["succeeded"], limit=1000)) == 200,
        timeout=120,
        what="200 tasks to succeed",
    )
    for tid in ids:
        assert state.count_events(tid, "succeeded") == 1
        assert state.count_events(tid, "running") == 1


def test_cancelled_queued_task_never_runs(deployment: Deployment) -> None:
    d = deployment
    d.start("run")
    task_id = d.submit("--capability", "review", "review the release")
    d.wait_status(task_id, "queued")
    events = d.backends.state.events(root_id=task_id)
    assert any(e.type == "no_agent" for e in events)  # nobody can take it: it waits
    d.cli("task", "cancel", task_id)
    d.start("agent", "start", "reviewer")
    later = d.submit("--capability", "review", "another review")
    d.wait_status(later, "succeeded")
    assert d.task(task_id).status == "cancelled"
    assert d.backends.state.count_events(task_id, "running") == 0
    assert d.cli("task", "watch", task_id, expect=1).code == 1


def test_cancelled_running_task_is_stopped_at_once_through_the_control_channel(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "20000"
    d.env["ORCHESTRA_AGENTS__HEARTBEAT_SECONDS"] = "5"  # far slower than the control channel
    d.env["ORCHESTRA_AGENTS__TTL_SECONDS"] = "15"
    d.start("run")
    d.start("agent", "start", "coder", "--name", "busy", "--concurrency", "1")
    task_id = d.submit("--capability", "code", "a very long job")
    d.wait_status(task_id, "running")
    waiting = d.submit("--capability", "code", "the next job")
    d.cli("task", "cancel", task_id)
    cancelled_at = time.monotonic()
    d.wait_status(waiting, "running", timeout=20)  # the one slot was freed
    assert time.monotonic() - cancelled_at < 4
    assert d.task(task_id).status == "cancelled"
    assert d.backends.state.count_events(task_id, "succeeded") == 0


def test_malformed_messages_are_dead_lettered_and_consumers_keep_going(
    deployment: Deployment,
) -> None:
    d = deployment
    d.start("run")
    d.start("agent", "start", "coder")
    broker = d.backends.broker
    broker.publish_raw(Q_INTAKE, b"this is not json")
    broker.publish_raw("work.code", b'{"v": 1, "type": "task.explode", "task_id": "x"}')
    # older than the grace an agent gives a task whose create may still be on its way
    broker.publish("work.code", Envelope(type=MSG_RUN, task_id="no-such-task", time=1.0))
    task_id = d.submit("--capability", "code", "after the garbage")
    d.wait_status(task_id, "succeeded")
    reasons = [
        m["reason"]
        for m in wait_until(
            lambda: len(broker.dead_letters()) >= 3 and broker.dead_letters(), what="3 dead letters"
        )
    ]
    assert any("invalid envelope" in r for r in reasons)
    assert any("unknown message type" in r for r in reasons)
    assert any("does not exist" in r for r in reasons)


def test_failing_task_is_retried_then_fails_and_is_dead_lettered(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "1000"
    d.start("run")
    d.start("agent", "start", "coder")
    task_id = d.submit("--capability", "code", "--timeout", "0.2", "--max-attempts", "2", "slow")
    result = d.cli("task", "watch", task_id, "--timeout", "60", expect=1)
    assert "timed out" in result.out + result.err
    task = d.task(task_id)
    assert (
        task.status == "failed" and task.attempts == 2 and "after 2 attempts" in (task.error or "")
    )
    dead = d.backends.broker.dead_letters()
    assert any(task_id in m["body"] and "exhausted retries" in m["reason"] for m in dead)


def test_sigterm_drains_the_agent_which_finishes_its_task(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "1500"
    d.start("run")
    agent = d.start("agent", "start", "coder", "--name", "drainer")
    task_id = d.submit("--capability", "code", "finish me")
    d.wait_status(task_id, "running")
    assert agent.stop(signal.SIGTERM, timeout=20) == 0
    assert d.task(task_id).status == "succeeded"
    assert "stopped" in agent.output()
    assert d.backends.state.get_agent("drainer").status == "stopped"


def test_ctrl_c_drains_run_with_its_agents_and_a_clean_drain_exits_0(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "1000"
    run = d.start("run", "--agents", "coder")
    task_id = d.submit("--capability", "code", "finish me")
    d.wait_status(task_id, "running")
    assert run.stop(signal.SIGINT, timeout=20) == 0, run.output()  # was 130
    assert d.task(task_id).status == "succeeded"
    assert "orchestrator stopped" in run.output()
    agent = d.start("agent", "start", "coder")
    wait_until(lambda: "consuming" in agent.output(), what="the agent to start")
    assert agent.stop(signal.SIGINT, timeout=20) == 0, agent.output()


def test_agent_stop_command_drains_a_running_agent(deployment: Deployment) -> None:
    d = deployment
    agent = d.start("agent", "start", "coder", "--name", "stoppable")
    wait_until(
        lambda: d.cli("agent", "status", "stoppable", expect=None).code == 0,
        timeout=20,
        what="agent to register",
    )
    listed = json.loads(d.cli("--json", "agent", "list").out)
    assert listed[0]["name"] == "stoppable" and listed[0]["state"] == "running"
    d.cli("agent", "stop", "stoppable", "--wait", "--timeout", "20")
    assert agent.popen.wait(timeout=20) == 0
    assert d.cli("agent", "status", "stoppable", expect=1).code == 1
    # started again under the same name (a supervisor's restart): the old stop is done
    again = d.start("agent", "start", "coder", "--name", "stoppable")
    wait_until(
        lambda: d.cli("agent", "status", "stoppable", expect=None).code == 0,
        timeout=20,
        what="agent to register again",
    )
    time.sleep(1.0)  # several heartbeats: it would have read the old stop by now
    assert again.popen.poll() is None
    assert not d.backends.state.get_agent("stoppable").stop_requested
    d.cli("agent", "stop", "stoppable", "--wait", "--timeout", "20")
    assert again.popen.wait(timeout=20) == 0


def test_task_whose_message_was_lost_is_recovered_by_the_orchestrator_sweep(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "3000"
    d.env["ORCHESTRA_TASKS__RECOVERY_INTERVAL_SECONDS"] = "0.5"
    d.start("run")
    first = d.start("agent", "start", "coder", "--name", "doomed")
    task_id = d.submit("--capability", "code", "survive a lost message")
    d.wait_status(task_id, "running")
    first.kill9()
    assert d.backends.broker.purge("work.code") == 1  # the message is gone as well
    d.start("agent", "start", "coder", "--name", "rescuer")
    done = d.wait_status(task_id, "succeeded", "failed", timeout=60)
    assert done.status == "succeeded" and done.agent == "rescuer"
    assert any(
        e.data.get("reason") == "recovered" for e in d.backends.state.events(root_id=task_id)
    )
    assert d.backends.state.count_events(task_id, "succeeded") == 1


def test_retrying_a_failed_step_reopens_the_steps_it_blocked_and_the_parent(
    deployment: Deployment,
) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "8000"
    d.start("run")
    d.start("agent", "start", "architect")
    # each step may take 5 s: the design's first turn alone takes 8 s; the coder's tool loop
    # (write, run the test with Bash, answer) takes well under 5 s once the latency is gone
    root = d.submit("--timeout", "5", "--max-attempts", "1", "Design and implement a cache")
    d.wait_status(root, "failed", timeout=60)  # the design step timed out; the rest was cancelled
    children = d.backends.state.children(root)
    design = next(c for c in children if c.capability == "architecture")
    blocked = [c for c in children if c.id != design.id]
    assert design.status == "failed"
    assert blocked and all(c.status == "cancelled" for c in blocked)
    slow = next(a.name for a in d.backends.state.list_agents() if a.role == "architect")
    d.cli("agent", "stop", slow, "--wait", "--timeout", "20")  # so it cannot take the retry
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "0"
    for role in ("architect", "coder", "reviewer"):
        d.start("agent", "start", role)
    d.cli("task", "retry", design.id)
    done = d.wait_status(root, "succeeded", "failed", timeout=60)
    assert done.status == "succeeded", done.error
    assert all(c.status == "succeeded" for c in d.backends.state.children(root))


def test_a_running_orchestrator_is_in_the_registry_and_stops_when_asked(
    deployment: Deployment,
) -> None:
    d = deployment
    run = d.start("run")

    def orchestrator_name() -> str | None:
        names = [a.name for a in d.backends.state.list_agents() if a.role == "orchestrator"]
        return names[0] if names else None

    name = wait_until(orchestrator_name, timeout=20, what="the orchestrator's registry record")
    assert d.cli("health", "--check", "orchestrator").code == 0
    d.cli("agent", "stop", name, "--wait", "--timeout", "20")
    assert run.popen.wait(timeout=20) == 0
    assert d.backends.state.get_agent(name).status == "stopped"
    assert d.cli("health", "--check", "orchestrator", expect=0).code == 0  # idle: a warning


def test_submit_wait_prints_the_result_and_exits_with_the_outcome(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "200"
    d.start("agent", "start", "coder")
    done = d.cli("--json", "task", "submit", "--wait", "-c", "code", "embedded and waited")
    task = json.loads(done.out)["task"]  # one document: the outcome
    assert task["status"] == "succeeded" and task["result"]
    plain = d.cli("task", "submit", "--wait", "-c", "code", "print the result")
    assert plain.out.startswith("[offline] coder execute result")  # the result, not the id
    assert "waiting for its outcome" in plain.err and "follow it with" not in plain.err
    assert "warning" not in plain.err  # the coder agent serves code
    failed = d.cli(
        "task",
        "submit",
        "--wait",
        "-c",
        "code",
        "--timeout",
        "0.05",
        "--max-attempts",
        "1",
        "x",
        expect=1,
    )
    assert "timed out" in failed.out + failed.err
