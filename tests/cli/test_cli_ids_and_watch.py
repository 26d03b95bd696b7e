"""Short ids in tables and wherever an id is taken; the live view of `task watch`."""

from __future__ import annotations

import json

from tests.conftest import CliRunner


def test_tables_show_short_ids_and_every_id_argument_takes_one(cli: CliRunner) -> None:
    task_id = cli("task", "submit", "-q", "Write a parser").out.strip()
    short = task_id[-8:]
    listed = cli("task", "list").out
    assert short in listed and task_id not in listed
    assert json.loads(cli("--json", "task", "get", short).out)["id"] == task_id
    assert f"id: {task_id}" in cli("task", "get", short[:5]).out
    cli("task", "cancel", short)
    cli("task", "retry", short)
    assert json.loads(cli("--json", "task", "get", short).out)["status"] == "pending"


def test_an_ambiguous_prefix_lists_the_candidates_in_one_line(cli: CliRunner) -> None:
    ids = [cli("task", "submit", "-q", f"task {i}").out.strip() for i in range(2)]
    err = cli("task", "get", ids[0][:8], expect=2).err  # the same minute's time bits
    assert err.count("\n") == 1 and err.startswith("orchestra: error: task id ")
    assert f"{ids[0]} (task 0)" in err and f"{ids[1]} (task 1)" in err
