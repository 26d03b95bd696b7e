"""Snapshots and rollback on the embedded backend, through the CLI."""

from __future__ import annotations

import json

from tests.conftest import CliRunner


def test_rollback_restores_the_state_of_the_snapshot_and_keeps_a_safety_copy(
    cli: CliRunner,
) -> None:
    before = cli("task", "submit", "-q", "first").out.strip()
    snap = json.loads(cli("--json", "snapshot", "create", "--name", "before release").out)
    assert snap["name"] == "before-release" and snap["mode"] == "embedded" and snap["size"] > 0
    after = cli("task", "submit", "-q", "second").out.strip()
    assert "rolling back" in cli("rollback", "--to", snap["file"], expect=2).err  # no --yes
    result = json.loads(cli("--json", "rollback", "--to", "before-release", "--yes").out)
    assert result["restored"]["file"] == snap["file"]
    ids = {t["id"] for t in json.loads(cli("--json", "task", "list").out)}
    assert ids == {before}
    assert "not found" in cli("task", "get", after, expect=1).err
    # the safety snapshot taken first brings the second task back
    cli("rollback", "--to", result["safety_snapshot"], "--yes")
    assert {t["id"] for t in json.loads(cli("--json", "task", "list").out)} == {before, after}
    names = [s["name"] for s in json.loads(cli("--json", "snapshot", "list").out)]
    assert names == ["before-release", "pre-rollback", "pre-rollback"]


def test_a_reused_name_rolls_back_to_the_newest_snapshot_of_that_name(cli: CliRunner) -> None:
    first = cli("task", "submit", "-q", "first").out.strip()
    cli("snapshot", "create", "--name", "before")
    second = cli("task", "submit", "-q", "second").out.strip()
    newer = json.loads(cli("--json", "snapshot", "create", "--name", "before").out)
    cli("task", "submit", "-q", "third")
    listed = [s["file"] for s in json.loads(cli("--json", "snapshot", "list").out)]
    assert listed[-1] == newer["file"]  # oldest first, though `before-2` sorts before `before`
    result = json.loads(cli("--json", "rollback", "--to", "before", "--yes").out)
    assert result["restored"]["file"] == newer["file"]
    assert {t["id"] for t in json.loads(cli("--json", "task", "list").out)} == {first, second}


def test_rollback_to_an_unknown_snapshot_is_a_one_line_error(cli: CliRunner) -> None:
    assert "no snapshots yet" in cli("rollback", "--to", "latest", "--yes", expect=1).err
    cli("snapshot", "create")
    err = cli("rollback", "--to", "nope", "--yes", expect=1).err
    assert "snapshot 'nope' not found" in err and err.count("\n") == 1


def test_rollback_refuses_while_agents_run_unless_forced(cli: CliRunner) -> None:
    from orchestra_cli.backends import open_backends
    from orchestra_cli.models import AgentRecord
    from orchestra_cli.settings import load_settings

    cli("snapshot", "create", "--name", "s1")
    backends = open_backends(load_settings().settings)
    try:
        backends.state.save_agent(
            AgentRecord(name="coder-1", role="coder", capabilities=["code"], status="running")
        )
    finally:
        backends.close()
    assert "agent(s) are running" in cli("rollback", "--to", "s1", "--yes", expect=2).err
    cli("rollback", "--to", "s1", "--yes", "--force")


def test_a_rollback_brings_back_a_tasks_files_and_steps(cli: CliRunner, tmp_path: object) -> None:
    from pathlib import Path

    from orchestra_cli.backends import open_backends
    from orchestra_cli.settings import load_settings

    task_id = cli("task", "submit", "-q", "-c", "code", "write it").out.strip()
    backends = open_backends(load_settings(None).settings)
    try:
        state = backends.state
        state.save_artifacts(task_id, {"app.py": b"v1"})
        state.record_step(task_id, task_id, 0, {"kind": "prompt", "prompt": "p"}, {})
        cli("snapshot", "create", "--name", "with-files")
        state.save_artifacts(task_id, {"app.py": b"v2", "extra.py": b"x"})
        cli("rollback", "--to", "with-files", "--yes")
        files = json.loads(cli("--json", "task", "files", task_id).out)["files"]
        assert [f["path"] for f in files] == ["app.py"]
        out = Path(str(tmp_path)) / "out"
        cli("task", "export", task_id, str(out))
        assert (out / "app.py").read_bytes() == b"v1"
        steps = json.loads(cli("--json", "task", "transcript", task_id).out)["steps"]
        assert [s["kind"] for s in steps] == ["prompt"]
    finally:
        backends.close()
