"""Task commands against the embedded state, without an orchestrator running."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliRunner


def test_submit_quiet_prints_only_the_id_and_get_shows_it(cli: CliRunner) -> None:
    task_id = cli("task", "submit", "-q", "Write a parser").out.strip()
    assert len(task_id) == 36 and "\n" not in task_id
    data = json.loads(cli("task", "get", task_id, "--json").out)
    assert data["id"] == task_id and data["status"] == "pending"
    assert data["title"] == "Write a parser" and data["subtasks"] == []
    assert "tree_usage" in data


def test_submit_options_are_stored(cli: CliRunner) -> None:
    out = cli(
        "--json",
        "task",
        "submit",
        "review this",
        "--capability",
        "review",
        "--priority",
        "8",
        "--timeout",
        "30",
        "--max-attempts",
        "2",
        "--label",
        "team=core",
        "-l",
        "env=ci",
        "--title",
        "A review",
    ).out
    task = json.loads(out)["task"]
    assert task["capability"] == "review" and task["priority"] == 8
    assert task["timeout"] == 30 and task["max_attempts"] == 2
    assert task["labels"] == {"team": "core", "env": "ci"} and task["title"] == "A review"


def test_idempotency_key_returns_the_same_task(cli: CliRunner) -> None:
    first = cli("task", "submit", "-q", "x", "--idempotency-key", "deploy-42").out.strip()
    second = cli("task", "submit", "-q", "y", "--idempotency-key", "deploy-42").out.strip()
    assert first == second


def test_submit_reads_stdin_and_files(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\nmore")))
    tid = cli("task", "submit", "-q", "-").out.strip()
    assert json.loads(cli("--json", "task", "get", tid).out)["input"] == "from stdin\nmore"
    Path("task.txt").write_text("from a file")
    tid = cli("task", "submit", "-q", "--file", "task.txt").out.strip()
    assert json.loads(cli("--json", "task", "get", tid).out)["title"] == "from a file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "task text is empty"),
        ([], "no task given"),
        (["x", "--capability", "astrology"], "unknown capability 'astrology'"),
        (["x", "--priority", "12"], "priority 12 is out of range"),
        (["x", "--label", "novalue"], "is not KEY=VALUE"),
        (["--file", "missing.txt"], "cannot read missing.txt"),
        (["x", "--timeout", "nan"], "timeout nan is not a positive number"),
        (["x", "--timeout", "inf"], "timeout inf is not a positive number"),
        (["x", "--timeout", "0"], "timeout 0 is not a positive number"),
        (["x", "--idempotency-key", " "], "the idempotency key is empty"),
        (["ok \udcff\udcfe"], "task text is not UTF-8"),  # argv bytes, surrogate-escaped
        (["x", "--title", "t\udcff"], "title is not UTF-8"),
        (["x", "--label", "k=\udcff"], "label 'k' is not UTF-8"),
    ],
)
def test_bad_submissions_get_a_one_line_error(
    cli: CliRunner, args: list[str], message: str
) -> None:
    result = cli("task", "submit", *args, expect=2)
    assert message in result.err
    assert result.err.startswith("orchestra: error: ") and result.err.count("\n") == 1


def test_non_utf8_and_oversized_input_are_rejected(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("bin.dat").write_bytes(b"ok \xff\xfe bad")
    assert "not UTF-8" in cli("task", "submit", "--file", "bin.dat", expect=2).err
    monkeypatch.setenv("ORCHESTRA_TASKS__MAX_INPUT_BYTES", "1024")
    result = cli("task", "submit", "x" * 2000, expect=2)
    assert "over the 1,024-byte limit" in result.err


def test_non_finite_or_empty_settings_are_config_errors(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRA_TASKS__DEFAULT_TIMEOUT", "inf")
    assert "finite number" in cli("task", "list", expect=2).err
    monkeypatch.delenv("ORCHESTRA_TASKS__DEFAULT_TIMEOUT")
    monkeypatch.setenv("ORCHESTRA_AGENTS__TTL_SECONDS", "1")
    assert "at least twice heartbeat_seconds" in cli("config", "validate", expect=2).err
    monkeypatch.delenv("ORCHESTRA_AGENTS__TTL_SECONDS")
    monkeypatch.setenv("ORCHESTRA_ENV", "prod")
    assert cli("task", "list", expect=2).err.startswith("orchestra: error: ORCHESTRA_ENV: ")
    monkeypatch.delenv("ORCHESTRA_ENV")
    monkeypatch.setenv("ORCHESTRA_HOME", "")
    assert "home: is empty" in cli("task", "list", expect=2).err


def test_unknown_task_id_is_a_one_line_error(cli: CliRunner) -> None:
    for command in ("get", "watch", "cancel", "retry"):
        result = cli("task", command, "0000dead-0000-7000-8000-000000000000", expect=1)
        assert "not found" in result.err and "orchestra task list" in result.err
        assert result.err.count("\n") == 1


def test_list_filters_and_rejects_unknown_status(cli: CliRunner) -> None:
    ids = [cli("task", "submit", "-q", f"task {i}").out.strip() for i in range(3)]
    listed = json.loads(cli("--json", "task", "list", "--limit", "2").out)
    assert [t["id"] for t in listed] == [ids[2], ids[1]]
    assert json.loads(cli("task", "list", "--status", "running", "--json").out) == []
    assert len(json.loads(cli("task", "list", "-s", "pending,queued", "--json").out)) == 3
    assert "unknown status 'runing'" in cli("task", "list", "-s", "runing", expect=2).err
    assert ids[0][-8:] in cli("task", "list").out  # the short id
    assert cli("-q", "task", "list").out.split() == ids[::-1]  # ids only, newest first
    for short in ("", "01a"):
        err = cli("task", "get", short, expect=2).err
        assert "prefix of at least 4 characters" in err and err.count("\n") == 1


def test_cancel_then_retry_a_pending_task(cli: CliRunner) -> None:
    tid = cli("task", "submit", "-q", "something").out.strip()
    cancelled = json.loads(cli("--json", "task", "cancel", tid).out)
    assert cancelled == {"cancelled": [tid]}
    assert "already cancelled" in cli("task", "cancel", tid, expect=1).err  # a conflict
    retried = json.loads(cli("--json", "task", "retry", tid).out)
    assert retried["status"] == "pending" and retried["attempts"] == 0
    assert "only failed or cancelled" in cli("task", "retry", tid, expect=1).err


def test_agent_commands_on_an_empty_registry(cli: CliRunner) -> None:
    assert json.loads(cli("--json", "agent", "list").out) == []
    assert "no agents registered" in cli("agent", "list").err
    assert "agent 'ghost' not found" in cli("agent", "status", "ghost", expect=1).err
    assert "not found" in cli("agent", "stop", "ghost", expect=1).err
    assert "unknown agent role 'wizard'" in cli("agent", "start", "wizard", expect=2).err


@pytest.mark.parametrize(
    ("budget", "labels"),
    [
        ("0.50", {"budget_usd": "0.50"}),
        ("$2", {"budget_usd": "2"}),
        ("20000tok", {"budget_tokens": "20000"}),
        ("20k tokens", {"budget_tokens": "20000"}),
    ],
)
def test_budget_option_sets_the_tree_budget_labels(
    cli: CliRunner, budget: str, labels: dict[str, str]
) -> None:
    task = json.loads(cli("--json", "task", "submit", "x", "--budget", budget).out)["task"]
    assert task["labels"] == labels


def test_unreadable_budget_is_a_usage_error(cli: CliRunner) -> None:
    assert (
        "cannot read budget 'lots'" in cli("task", "submit", "x", "--budget", "lots", expect=2).err
    )


def test_a_batch_submits_every_line_with_the_options_as_defaults(
    cli: CliRunner, tmp_path: Path
) -> None:
    batch = tmp_path / "tasks.jsonl"
    batch.write_text(
        "fix the flaky parser test\n"
        "\n"
        '{"text": "review the release notes", "capability": "review", "priority": 8,'
        ' "labels": {"team": "docs"}}\n'
        '{"text": "plan the migration", "idempotency_key": "mig-1"}\n'
    )
    ids = cli("task", "submit", "--batch", str(batch), "-c", "code", "-l", "env=prod").out.split()
    assert len(ids) == 3
    tasks = [json.loads(cli("--json", "task", "get", i).out) for i in ids]
    assert [t["capability"] for t in tasks] == ["code", "review", "code"]
    assert [t["status"] for t in tasks] == ["queued", "queued", "queued"]  # routed at submit
    assert tasks[1]["priority"] == 8 and tasks[1]["labels"] == {"env": "prod", "team": "docs"}
    assert tasks[0]["labels"] == {"env": "prod"}
    again = cli("--json", "task", "submit", "--batch", str(batch), "-c", "code").out.splitlines()
    assert [json.loads(line)["created"] for line in again] == [True, True, False]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": 5}\n', "tasks.jsonl:2: text has the wrong type"),
        ('{"txt": "x"}\n', "tasks.jsonl:1: unknown field 'txt'"),
        ("{not json\n", "tasks.jsonl:1: invalid JSON"),
        ('{"text": "x", "priority": 12}\n', "tasks.jsonl:2: priority 12 is out of range"),
        ("\n\n", "holds no tasks"),
    ],
)
def test_a_bad_batch_line_is_one_error_and_nothing_is_stored(
    cli: CliRunner, tmp_path: Path, content: str, message: str
) -> None:
    batch = tmp_path / "tasks.jsonl"
    batch.write_text("fine first line\n" + content if "range" in message else content)
    result = cli("task", "submit", "--batch", str(batch), expect=2)
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert json.loads(cli("--json", "task", "list").out) == []


def test_plain_list_and_tree_say_what_the_rich_ones_say() -> None:
    """Off a terminal `task list` and `task get` skip rich (~80 ms of a one-shot
    command): the text must stay the same, line for line."""
    import io

    from rich.console import Console

    from orchestra_cli.cli.render import task_tree, task_tree_text, tasks_table, tasks_text
    from orchestra_cli.models import Task

    root = Task(title="root [x]", input="i")
    root.root_id = root.id
    a = Task(title="child a", input="i", parent_id=root.id, root_id=root.id, agent="c-1")
    b = Task(title="child b", input="i", parent_id=root.id, root_id=root.id, capability="code")
    c = Task(title="grand\nchild", input="i", parent_id=a.id, root_id=root.id)
    tasks = [root, a, c, b]

    def rich_text(renderable: object) -> list[str]:
        buf = io.StringIO()
        Console(file=buf, width=200, no_color=True, highlight=False).print(renderable)
        return [line.rstrip() for line in buf.getvalue().splitlines()]

    flat = [t for t in tasks if "\n" not in t.title]  # rich folds a title's line breaks
    assert tasks_text(flat).splitlines() == rich_text(tasks_table(flat))
    assert tasks_text(tasks).splitlines()[3].endswith("grand child")  # one line per task
    lines = task_tree_text(flat).splitlines()
    assert lines == rich_text(task_tree(flat))
    assert lines[1].startswith("├── ") and lines[-1].startswith("└── ")
    for width, header in [
        (200, ["ID", "STATUS", "CAPABILITY", "AGENT", "TRIES", "AGE", "TITLE"]),
        (80, ["ID", "STATUS", "CAPABILITY", "AGENT", "TRIES", "AGE", "TITLE"]),  # short ids
        (55, ["ID", "STATUS", "TRIES", "AGE", "TITLE"]),  # the title stays on a narrow terminal
        (40, ["ID", "STATUS", "TITLE"]),
    ]:
        buf = io.StringIO()
        Console(file=buf, width=width, no_color=True).print(tasks_table(flat, width))
        shown = buf.getvalue().splitlines()
        assert shown[0].split() == header and "child a" in shown[2], width
        assert max(len(line.rstrip()) for line in shown) <= width


def test_a_task_stored_but_not_sent_is_named_in_the_same_shape_by_submit_and_batch(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.broker.sqlite import SQLiteBroker
    from orchestra_cli.errors import BrokerUnavailable

    original = SQLiteBroker.publish
    calls: list[str] = []

    def flaky(self: SQLiteBroker, queue: str, env: Any, **kw: Any) -> Any:
        calls.append(env.task_id)
        if len(calls) == 2:  # stored, then the broker went away before its message
            raise BrokerUnavailable("connection reset")
        return original(self, queue, env, **kw)

    monkeypatch.setattr(SQLiteBroker, "publish", flaky)
    batch = tmp_path / "tasks.jsonl"
    batch.write_text("one\ntwo\nthree\n")
    result = cli("--json", "task", "submit", "--batch", str(batch), "-c", "code", expect=3)
    lines = [json.loads(line) for line in result.out.splitlines()]
    # one chunk: all three stored; the second message failed, so the third was not sent
    ids = [line["task"]["id"] for line in lines]
    assert ids[:2] == calls and len(ids) == 3
    assert "delivered" not in lines[0] and lines[0]["created"] is True
    assert all(line["delivered"] is False for line in lines[1:])
    assert all(line["task"]["status"] == "queued" for line in lines)
    assert "3 of 3 tasks stored" in result.err and "2 of their messages were not" in result.err
    calls.clear()
    calls.append("first")  # the next submit is the second call: it fails
    single = cli("--json", "task", "submit", "four", "-c", "code", expect=3)
    doc = json.loads(single.out)
    assert doc["delivered"] is False and doc["created"] is True
    assert doc["task"]["id"] == calls[-1] and doc["task"]["title"] == "four"


def test_a_batch_the_state_store_fails_part_way_names_what_was_stored(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestra_cli.errors import PartlyStored, StateUnavailable
    from orchestra_cli.state.sqlite_tasks import SQLiteTasks

    original = SQLiteTasks.create_tasks

    def failing(self: SQLiteTasks, items: Any) -> Any:
        stored = original(self, items[:1])  # the first is stored, then the store goes
        raise PartlyStored(stored, len(items), StateUnavailable("cannot reach the store"))

    monkeypatch.setattr(SQLiteTasks, "create_tasks", failing)
    batch = tmp_path / "tasks.jsonl"
    batch.write_text("one\ntwo\nthree\n")
    result = cli("task", "submit", "--batch", str(batch), "-c", "code", expect=3)
    assert len(result.out.split()) == 1  # the stored one's id
    assert result.err.count("\n") == 1, result.err
    assert "1 of 3 tasks stored" in result.err and "failed on the next 2" in result.err
    assert "cannot reach the store" in result.err
