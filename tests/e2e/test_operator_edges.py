"""What an operator meets in the first hour, with real `orchestra` processes on one
embedded home: health naming the tasks a dead agent held, a role file's timeout applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestra_cli.ids import short_id
from tests.e2e.conftest import Deployment
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_health_names_the_running_tasks_whose_agent_died(deployment: Deployment) -> None:
    d = deployment
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "60000"  # they run until the agent dies
    agent = d.start("agent", "start", "coder", "--name", "coder-1", "--concurrency", "4")
    # routed at submit (no orchestrator: nothing takes the tasks over)
    ids = [d.submit("--capability", "code", f"slow work {n}") for n in range(4)]
    for task_id in ids:
        d.wait_status(task_id, "running")
    agent.kill9()
    ttl = 1.5  # the deployment's ORCHESTRA_AGENTS__TTL_SECONDS

    def warned() -> dict[str, object] | None:
        result = d.cli("--json", "health", "--check", "agents", expect=None)
        check: dict[str, object] = json.loads(result.out)["checks"][0]
        return check if check["details"]["running_on_dead_agents"] else None  # type: ignore[index]

    check = wait_until(warned, timeout=ttl + 20, interval=0.3, what="the dead agent's tasks")
    named = check["details"]["running_on_dead_agents"]
    assert sorted(named) == sorted(short_id(i) for i in ids)
    summary = str(check["summary"])
    assert check["level"] == "warn"
    assert "1 dead (coder-1)" in summary
    assert "4 running task(s) on dead agents (" in summary and "+1 more" in summary, summary
    assert sum(short_id(i) in summary for i in ids) == 3  # three named, the count says four
    plain = d.cli("health", "--check", "agents").out
    assert "4 running task(s) on dead agents" in plain


def test_a_role_files_timeout_is_applied_shown_and_beaten_by_a_tasks_own(
    deployment: Deployment, tmp_path: Path
) -> None:
    d = deployment
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "quick.yaml").write_text(
        "name: quick\ncapabilities: [quick]\nprompt: execute-coder\ntimeout: 1\n"
    )
    d.env["ORCHESTRA_AGENTS__DEFINITIONS_DIR"] = str(roles)
    d.env["ORCHESTRA_LLM__OFFLINE__LATENCY_MS"] = "3000"  # every attempt takes 3 s
    shown = json.loads(d.cli("--json", "config", "show").out)["agents"]["quick"]["task_timeout"]
    assert shown["value"] == 1 and shown["source"] == f"role file {roles / 'quick.yaml'}"
    d.start("agent", "start", "quick", "--name", "quick-1", "--concurrency", "2")
    slow = d.submit("--capability", "quick", "--max-attempts", "2", "takes too long")
    given = d.submit("--capability", "quick", "--timeout", "30", "may take its time")
    failed = d.wait_status(slow, "failed", timeout=60)
    assert failed.attempts == 2 and failed.error is not None
    assert failed.error.startswith("timed out after 1s"), failed.error  # retried, then failed
    assert d.wait_status(given, "succeeded", timeout=60).attempts == 1
    status = d.cli("agent", "status", "quick-1").out
    assert f"task_timeout     1 (role file {roles / 'quick.yaml'}" in status
