"""`orchestra dlq show|retry|rm` and the README's DLQ recipe, as real `orchestra`
processes on both backends (embedded SQLite; Redis + RabbitMQ)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra_cli.backends import Backends, open_backends
from orchestra_cli.settings import Settings
from tests.contract.conftest import cleanup_services, services_settings
from tests.support import REPO, Result, clean_env, run_orchestra

pytestmark = pytest.mark.integration


def _env_of(settings: Settings) -> dict[str, str]:
    env = {"ORCHESTRA_HOME": str(settings.home)}
    if settings.state_url and settings.state_url.startswith("redis"):
        env |= {
            "ORCHESTRA_STATE_URL": settings.state_url,
            "ORCHESTRA_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
            "ORCHESTRA_REDIS__KEY_PREFIX": settings.redis.key_prefix,
            "ORCHESTRA_RABBITMQ__QUEUE_PREFIX": settings.rabbitmq.queue_prefix,
        }
    return clean_env(env)


@pytest.fixture(params=["embedded", "services"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backends]:
    if request.param == "embedded":
        b = open_backends(Settings(home=tmp_path / "home"))
        yield b
        b.close()
    else:
        b = open_backends(services_settings(tmp_path / "home"))
        try:
            yield b
        finally:
            cleanup_services(b)


def _fail(b: Backends, task_id: str) -> None:
    """One attempt that fails for good, as an agent's retry policy ends it: failed in
    state, its run message dead-lettered."""
    from orchestra_cli.engine.retry import retry_or_fail
    from orchestra_cli.status import Status

    if b.state.get_task(task_id).status != Status.QUEUED:
        b.state.transition(task_id, Status.QUEUED)
    running, _ = b.state.claim(task_id, "coder-1")
    retry_or_fail(b, running, "boom")


def _task_with_two_letters(b: Backends) -> str:
    """A task that failed, was retried with `task retry`, and failed again."""
    from orchestra_cli.engine.roles import load_roles
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.models import Task

    task, _ = b.state.create_task(Task(title="t", input="x", capability="code", max_attempts=1))
    _fail(b, task.id)
    TaskService(b, load_roles()).retry(task.id)
    _fail(b, task.id)
    return task.id


def test_a_letter_is_shown_retried_once_and_removed_by_its_short_id(
    deployment: Backends, tmp_path: Path
) -> None:
    from orchestra_cli.ids import short_id
    from orchestra_cli.models import Q_DEAD

    b = deployment
    task_id = _task_with_two_letters(b)
    b.broker.publish_raw(Q_DEAD, b"\xff not an envelope")
    env = _env_of(b.settings)

    def cli(*args: str, expect: int = 0) -> Result:
        result = run_orchestra(list(args), env, tmp_path)
        assert result.code == expect, result
        return result

    short = short_id(task_id)
    assert cli("dlq", "list", "-q").out == f"{task_id}\n"  # two letters, one task: once
    rows = [ln.split() for ln in cli("dlq", "list").out.splitlines()[1:]]
    assert [r[4] for r in rows if task_id in r] == ["1/1", "1/1"]  # the task's own attempts
    shown = json.loads(cli("--json", "dlq", "show", short).out)
    assert shown["task_id"] == task_id and shown["task_status"] == "failed"
    assert shown["reason"].startswith("exhausted retries: boom")
    assert shown["error"] == "boom (after 1 attempts)" and shown["attempts"] == 1
    assert len(shown["other_letters"]) == 1 and shown["enqueued_at"]
    assert isinstance(shown["headers"], dict)
    plain = cli("dlq", "show", short).out
    assert re.search(r"^attempts +1/1$", plain, re.MULTILINE), plain

    first = json.loads(cli("--json", "dlq", "retry", short).out)
    assert first["retried"] == [{"task_id": task_id, "outcome": "retried", "removed": 2}]
    version = b.state.get_task(task_id).version
    again = cli("dlq", "retry", short)  # the same letter again: nothing runs, nothing new
    assert "no dead letter left: not run again (it is pending)" in again.err
    assert b.state.get_task(task_id).version == version
    assert cli("dlq", "list", "-q").out == ""
    assert cli("dlq", "show", short, expect=1).err.count("\n") == 1

    undecodable = json.loads(cli("--json", "dlq", "list").out)[0]
    assert "names no task" in cli("dlq", "retry", undecodable["id"], expect=2).err
    assert "pass --yes to confirm" in cli("dlq", "rm", undecodable["id"], expect=2).err
    assert json.loads(cli("--json", "dlq", "rm", undecodable["id"], "--yes").out)["removed"] == 1
    assert "the dead-letter queue is empty" in cli("dlq", "list").err
    assert "no dead letter or task" in cli("dlq", "rm", "deadbeef", "--yes", expect=1).err


def _recipe() -> list[str]:
    """The commands of the README's DLQ recipe (the block after its marker)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- dlq-recipe", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln]


def test_the_readmes_dlq_recipe_works_and_a_second_run_is_a_no_op(tmp_path: Path) -> None:
    b = open_backends(Settings(home=tmp_path / "home"))
    try:
        task_id = _task_with_two_letters(b)
    finally:
        b.close()
    commands = _recipe()
    assert any("dlq retry" in c for c in commands), commands
    env = _env_of(Settings(home=tmp_path / "home"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    runs = [
        subprocess.run(
            ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    assert f"task {task_id}: retried; 2 letter(s) removed" in runs[0].stderr
    assert "retried" not in runs[1].stderr and "nothing to retry" in runs[1].stderr
    got = json.loads(run_orchestra(["--json", "task", "get", task_id], env, tmp_path).out)
    assert got["status"] == "pending"
