"""Agents that act, end to end: `orchestra run` and agent processes, the fake endpoint
scripting multi-turn tool use, the real sandbox and MCP servers, kill -9 mid-loop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.llm.deployment import Deployment
from tests.llm.fake_anthropic import FakeAnthropic, Reply, refusal, text, tool_use
from tests.support import processes, run_orchestra, wait_until
from tests.tools.conftest import require_bwrap

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "def add(a, b):\n    return a + b\n"
TEST = "from app import add\nassert add(2, 3) == 5\nprint('ok: add works')\n"


def calls(*pairs: tuple[str, dict[str, Any]]) -> Reply:
    blocks = [
        {
            "type": "tool_use",
            "id": f"toolu_e2e_{name}_{i}_{time.monotonic_ns()}",
            "name": name,
            "input": data,
        }
        for i, (name, data) in enumerate(pairs)
    ]
    return Reply(content=blocks, stop_reason="tool_use")


def results_of(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results the last user message of a request carried."""
    content = request["body"]["messages"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


@pytest.fixture
def deployment(fake: FakeAnthropic, tmp_path: Path) -> Iterator[Deployment]:
    require_bwrap()
    with processes() as procs:
        yield Deployment(fake, tmp_path, procs)


def test_a_coder_writes_a_module_and_its_test_runs_it_in_the_sandbox_and_exports_it(
    fake: FakeAnthropic, deployment: Deployment, tmp_path: Path
) -> None:
    fake.script(
        calls(
            ("Read", {"file_path": "/etc/passwd"}),
            ("Write", {"file_path": "app.py", "content": APP}),
            ("Write", {"file_path": "test_app.py", "content": TEST}),
        ),
        tool_use(
            "Bash",
            {"command": f"python3 test_app.py && ls -a {deployment.home}; touch /usr/escaped"},
        ),
        text("app.py and its test are written and pass"),
    )
    task_id = deployment.submit("write add() with a test", "--capability", "code")
    task = deployment.finished(task_id)
    assert task["status"] == "succeeded", task
    assert task["result"] == "app.py and its test are written and pass"
    assert task["usage"]["calls"] == 3 == len(fake.billed)  # each turn charged, once
    refused, wrote_app, wrote_test = results_of(fake.requests[1])
    assert refused["is_error"] is True and "outside" in refused["content"]
    assert not wrote_app.get("is_error") and not wrote_test.get("is_error")
    (ran,) = results_of(fake.requests[2])
    assert "ok: add works" in ran["content"]  # the test ran, in the workspace
    assert "orchestra.db" not in ran["content"]  # orchestra's home is empty in the sandbox
    assert "Read-only file system" in ran["content"] or "Permission denied" in ran["content"]
    assert not Path("/usr/escaped").exists()
    # the files are the task's artifacts: listed, exported, and in the transcript
    listed = deployment.cli("task", "files", task_id)
    assert sorted(f["path"] for f in listed["files"]) == ["app.py", "test_app.py"]
    out = tmp_path / "exported"
    got = run_orchestra(["task", "export", task_id, str(out)], deployment.env, deployment.cwd)
    assert got.code == 0, got
    assert (out / "app.py").read_text() == APP and (out / "test_app.py").read_text() == TEST
    steps = deployment.cli("task", "transcript", task_id)["steps"]
    assert [s["kind"] for s in steps].count("model") == 3
    plain = run_orchestra(["task", "transcript", task_id], deployment.env, deployment.cwd)
    assert "── Bash → error" in plain.out and "ok: add works" in plain.out  # touch failed
    assert fake.api_key not in plain.out


def test_a_refusal_mid_loop_fails_the_task_with_every_call_charged(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    """The refused turn records no step: its charge comes with the task's end instead."""
    fake.script(tool_use("Glob", {"pattern": "*"}), refusal())
    task_id = deployment.submit("look around", "--capability", "code")
    task = deployment.finished(task_id)
    assert task["status"] == "failed", task
    assert task["usage"]["calls"] == 2 == len(fake.billed)
    assert task["usage"]["input_tokens"] == sum(b["input_tokens"] for b in fake.billed)


def test_an_mcp_servers_tool_is_called_and_its_result_reaches_the_next_turn(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    server = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
    assert server, "mcp-server-time is in the dev extra"
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "clock.yaml").write_text(
        "name: clock\ncapabilities: [time]\nprompt: execute-coder\n"
        f"mcp_servers:\n  time:\n    command: {server}\n    args: [--local-timezone, UTC]\n"
    )
    env = {"ORCHESTRA_AGENTS__DEFINITIONS_DIR": str(roles)}
    fake.script(
        tool_use("mcp__time__get_current_time", {"timezone": "UTC"}),
        text("it is now"),
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=env, role="clock")
        task = deployment.finished(deployment.submit("what time is it", "--capability", "time"))
    assert task["status"] == "succeeded", task
    offered = [t["name"] for t in fake.requests[0]["body"]["tools"]]
    assert "mcp__time__get_current_time" in offered
    (result,) = results_of(fake.requests[1])
    assert not result.get("is_error") and "UTC" in result["content"]


def test_kill_9_mid_loop_resumes_without_asking_a_turn_or_running_a_call_again(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    require_bwrap()
    env = {
        "ORCHESTRA_AGENTS__TTL_SECONDS": "2",
        "ORCHESTRA_BROKER__LEASE_SECONDS": "2",
    }
    fake.script(
        tool_use("Bash", {"command": "echo ran >> runs.txt && cat runs.txt"}),
        text("never seen: the agent dies during this call", delay=30),
        text("resumed and finished"),
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=env)
        task_id = deployment.submit("run it once", "--capability", "code")
        wait_until(lambda: len(fake.requests) == 2, timeout=30, what="the second turn's call")
        deployment.agent.kill9()  # mid-loop: one turn and one tool call on record
        deployment.start_agent("2")
        task = deployment.finished(task_id, timeout=60)
    assert task["status"] == "succeeded", task
    assert task["result"] == "resumed and finished"
    assert len(fake.requests) == 3  # turn 1 was not asked again; turn 2 asked once more
    resumed = fake.requests[2]["body"]["messages"]
    assert [m["role"] for m in resumed] == ["user", "assistant", "user"]
    (ran,) = results_of(fake.requests[2])
    assert ran["content"].strip() == "ran"  # the recorded call's result, not a second run
    files = deployment.cli("task", "files", task_id)["files"]
    out = tmp_path / "out"
    run_orchestra(["task", "export", task_id, str(out)], deployment.env, deployment.cwd)
    assert (out / "runs.txt").read_text() == "ran\n", files  # the command ran once


def test_cancel_kills_a_running_bash_command_and_its_children(
    fake: FakeAnthropic, deployment: Deployment
) -> None:
    marker = f"orchestra-e2e-{os.getpid()}-{time.monotonic_ns()}"
    fake.script(
        tool_use("Bash", {"command": f"sh -c 'sleep 300; echo {marker}' & sleep 300"}),
        text("never"),
    )
    task_id = deployment.submit("hang", "--capability", "code")

    def sleeping() -> bool:
        found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
        return bool(found.stdout.strip())

    wait_until(sleeping, timeout=30, what="the command to run")
    cancelled = run_orchestra(["task", "cancel", task_id], deployment.env, deployment.cwd)
    assert cancelled.code == 0, cancelled
    wait_until(lambda: not sleeping(), timeout=5, interval=0.1, what="the command to be killed")
    assert deployment.task(task_id)["status"] == "cancelled"
    assert len(fake.requests) == 1  # nothing was asked after the cancel
    _ = signal  # (the process group is killed by the tool layer; nothing to send here)
    _ = json


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_loops_in_flight_are_coroutines_on_the_loop_not_a_thread_each(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    require_bwrap()
    n = 48
    fake.script(
        *[tool_use("Glob", {"pattern": "*"}) for _ in range(n)],
        *[text("looked", delay=4) for _ in range(n)],
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, concurrency=n)
        idle = _threads(deployment.agent.pid)
        ids = deployment.submit_many([f"look {i}" for i in range(n)], "--capability", "code")
        # every loop past its tool call and waiting on its second turn at once
        wait_until(lambda: len(fake.requests) == 2 * n, timeout=60, what="every second turn")
        busy = _threads(deployment.agent.pid)
        done = [deployment.finished(task_id) for task_id in ids]
    assert all(t["status"] == "succeeded" and t["result"] == "looked" for t in done)
    # a thread a loop would be 48 more; in flight they add the settlement threads (up to
    # 8), the step pool's core (4) and, on a loaded machine, a few for steps it finds stuck
    assert busy - idle < n // 2, (idle, busy)


def test_kill_9_with_a_dozen_loops_in_flight_resumes_each_without_a_turn_or_call_again(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    require_bwrap()
    n = 12
    resumed = threading.Event()

    def reply(body: dict[str, Any]) -> Reply:  # by the conversation, not by arrival
        if len(body["messages"]) == 1:
            return tool_use("Bash", {"command": "echo ran >> runs.txt && cat runs.txt"})
        if not resumed.is_set():
            return text("never seen: the agent dies during this call", delay=30)
        return text("resumed and finished")

    fake.default = reply
    env = {"ORCHESTRA_AGENTS__TTL_SECONDS": "2", "ORCHESTRA_BROKER__LEASE_SECONDS": "2"}

    def second_turns() -> int:
        return sum(1 for r in fake.requests if len(r["body"]["messages"]) == 3)

    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, env=env, concurrency=n)
        ids = deployment.submit_many([f"run it once {i}" for i in range(n)], "--capability", "code")
        wait_until(lambda: second_turns() == n, timeout=60, what="every loop's second turn")
        deployment.agent.kill9()  # a dozen loops mid-call, each with a tool call on record
        resumed.set()
        deployment.start_agent("2", concurrency=n)
        done = [deployment.finished(task_id, timeout=90) for task_id in ids]
        for task_id in ids:
            out = tmp_path / "out" / task_id
            export = ["task", "export", task_id, str(out)]
            got = run_orchestra(export, deployment.env, deployment.cwd)
            assert got.code == 0, got
            assert (out / "runs.txt").read_text() == "ran\n"  # each command ran once
    assert all(t["status"] == "succeeded" for t in done), done
    assert all(t["result"] == "resumed and finished" for t in done)
    first_turns = sum(1 for r in fake.requests if len(r["body"]["messages"]) == 1)
    assert first_turns == n  # no recorded turn was asked again
    assert second_turns() == 2 * n  # the turn each loop died in, asked once more


def test_tool_calls_that_wait_run_side_by_side_beyond_the_agents_few_threads(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    require_bwrap()
    n = 10  # more than the pool's core (blocking.CORE_THREADS): waiting calls free theirs
    fake.script(
        *[tool_use("Bash", {"command": "sleep 3; echo slept"}) for _ in range(n)],
        *[text("waited") for _ in range(n)],
    )
    with processes() as procs:
        deployment = Deployment(fake, tmp_path, procs, concurrency=n)
        started = time.monotonic()
        ids = deployment.submit_many([f"wait {i}" for i in range(n)], "--capability", "code")
        done = [deployment.finished(task_id) for task_id in ids]
        took = time.monotonic() - started
    assert all(t["status"] == "succeeded" for t in done), done
    assert took < 3 * 2.5, took  # side by side: not ten 3 s sleeps four at a time


LEAD_ROLE = """name: lead
description: Leads the work and hands parts of it to the team.
capabilities: [lead]
prompt: execute-coder
tools: [delegate, spawn, wait]
"""


def _lead(fake: FakeAnthropic, tmp_path: Path, procs: list[Any]) -> Deployment:
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "lead.yaml").write_text(LEAD_ROLE)
    env = {
        "ORCHESTRA_AGENTS__DEFINITIONS_DIR": str(roles),
        "ORCHESTRA_AGENTS__TTL_SECONDS": "2",
        "ORCHESTRA_BROKER__LEASE_SECONDS": "2",
    }
    deployment = Deployment(fake, tmp_path, procs, env=env, role="lead")
    deployment.start_agent("1", role="coder")
    return deployment


def test_a_delegation_creates_a_child_in_the_tree_and_the_parent_goes_on_with_its_result(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.script(
        tool_use("delegate", {"capability": "code", "task": "write add()", "title": "add"}),
        text("child: add() is written"),  # the coder's turn
        text("parent: the team wrote add()"),
    )
    with processes() as procs:
        deployment = _lead(fake, tmp_path, procs)
        task_id = deployment.submit("lead the work", "--capability", "lead")
        task = deployment.finished(task_id)
        tree = deployment.cli("task", "get", task_id)
    assert task["status"] == "succeeded", task
    assert task["result"] == "parent: the team wrote add()"
    offered = {t["name"] for t in fake.requests[0]["body"]["tools"]}
    assert offered == {"delegate", "spawn", "wait"}
    schema = next(t for t in fake.requests[0]["body"]["tools"] if t["name"] == "delegate")
    assert "code" in schema["input_schema"]["properties"]["capability"]["enum"]
    (child,) = tree["subtasks"]
    assert child["parent_id"] == task_id and child["capability"] == "code"
    assert child["status"] == "succeeded" and child["title"] == "add"
    (result,) = results_of(fake.requests[2])
    assert "child: add() is written" in result["content"] and not result.get("is_error")


def test_a_parent_resumed_after_kill_9_waits_for_the_same_child_instead_of_a_second(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.script(
        tool_use("delegate", {"capability": "code", "task": "slow work"}),
        text("child: done slowly", delay=8),
        text("parent: resumed and done"),
    )
    with processes() as procs:
        deployment = _lead(fake, tmp_path, procs)
        task_id = deployment.submit("lead the work", "--capability", "lead")
        wait_until(lambda: len(fake.requests) == 2, timeout=30, what="the child's call")
        deployment.agent.kill9()  # the parent dies while it waits for its child
        deployment.start_agent("2")
        task = deployment.finished(task_id, timeout=60)
        tree = deployment.cli("task", "get", task_id)
    assert task["status"] == "succeeded", task
    assert len(tree["subtasks"]) == 1  # the resumed delegate found its child
    assert len(fake.requests) == 3  # the parent's first turn was not asked again
