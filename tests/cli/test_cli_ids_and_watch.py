"""Short ids in tables and wherever an id is taken; the live view of `task watch`."""

from __future__ import annotations

import io
import json

from rich.console import Console

from orchestra_cli.cli.watchview import live_view
from orchestra_cli.engine.blockers import no_agent
from orchestra_cli.engine.roles import load_roles
from orchestra_cli.models import Task, Usage
from orchestra_cli.status import Status
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


def _tree() -> list[Task]:
    root = Task(title="Design, implement and deploy a todo API, then review it", input="i")
    root.root_id = root.id
    root.status = Status.WAITING
    kids = [
        Task(title=f"{step}: {root.title}", input="i", parent_id=root.id, root_id=root.id)
        for step in ("Design", "Implement", "Review")
    ]
    kids[0].status, kids[0].agent, kids[0].attempts = Status.SUCCEEDED, "architect-1", 1
    kids[0].started_at, kids[0].finished_at = root.created_at + 1, root.created_at + 3
    kids[0].usage = Usage(calls=1, input_tokens=1500, output_tokens=734, cost_usd=0.0123)
    kids[1].status, kids[1].agent, kids[1].attempts = Status.RUNNING, "coder-host-12345-ab12", 2
    kids[1].started_at = root.created_at + 4
    kids[2].status, kids[2].capability = Status.QUEUED, "review"
    kids[2].queued_at = root.created_at + 2
    return [root, *kids]


def _screen(renderable: object, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(renderable)
    return buf.getvalue().splitlines()


def test_the_live_view_has_a_header_and_one_compact_row_a_task_within_80_columns() -> None:
    tree = _tree()
    stuck = {tree[3].id: no_agent("review", load_roles())}
    screen = _screen(live_view(tree, stuck, at=tree[0].created_at + 10), 80)
    assert screen[0] == (
        f"task {tree[0].id[-8:]} waiting · 1/3 subtasks done · elapsed 10.0s · 2.2k tok $0.0123"
    )
    assert screen[1].split() == ["ID", "STATUS", "AGENT", "TRY", "TIME", "TOKENS", "TITLE"]
    rows = screen[2:6]
    assert all(len(line) <= 80 for line in screen)
    design, implement, review = rows[1:]
    assert design.split()[:4] == [tree[1].id[-8:], "✔", "succeeded", "architect-1"]
    assert design.rstrip().endswith("2.2k    Design")  # 2 s ran, tokens, the title's own part
    assert implement.split()[3].startswith("coder-host") and "6.0s" in implement
    assert review.rstrip().endswith("Review") and "8.0s" in review  # time in the queue
    assert "Design, implement" not in "".join(rows[1:])  # no repeat of the parent's title
    assert screen[6:] == [
        f"! {tree[3].id[-8:]}: no live agent serves review",
        "  start one: orchestra agent start reviewer",
    ]


def test_work_that_cannot_move_says_why_and_the_command_that_fixes_it(cli: CliRunner) -> None:
    from orchestra_cli.backends import open_backends
    from orchestra_cli.engine.service import TaskService
    from orchestra_cli.settings import load_settings

    queued = cli("task", "submit", "-q", "-c", "code", "x").out.strip()
    planned = cli("task", "submit", "-q", "y").out.strip()
    backends = open_backends(load_settings(None).settings)
    try:
        service = TaskService(backends, load_roles())
        tasks = [service.get(queued), service.get(planned)]
        found = {k: str(v) for k, v in service.blockers(tasks).items()}
    finally:
        backends.close()
    assert found == {
        queued: "no live agent serves code — start one: orchestra agent start coder",
        planned: "no orchestrator running to plan it — start one: orchestra run",
    }


def test_submit_warns_when_no_live_agent_serves_the_capability(cli: CliRunner) -> None:
    routed = cli("task", "submit", "-c", "code", "x")
    assert "follow it with: orchestra task watch" in routed.err
    assert (
        "orchestra: warning: no live agent serves code — start one: orchestra agent start coder"
        in routed.err
    )
    quiet = cli("task", "submit", "-q", "-c", "code", "x")
    assert "no live agent serves code" in quiet.err and "\n" not in quiet.out.strip()
    planned = cli("task", "submit", "y").err
    assert "warning: no orchestrator running to plan it — start one: orchestra run" in planned


def test_list_filters_by_capability_and_labels(cli: CliRunner) -> None:
    code = cli("task", "submit", "-q", "-c", "code", "-l", "team=core", "-l", "env=ci", "a").out
    cli("task", "submit", "-q", "-c", "review", "-l", "team=core", "b")
    cli("task", "submit", "-q", "-c", "code", "-l", "team=web", "c")

    def listed(*args: str) -> list[str]:
        return cli("task", "list", "-q", *args).out.split()

    assert len(listed("--capability", "code")) == 2
    assert len(listed("--label", "team=core")) == 2
    assert listed("-c", "code", "-l", "team=core", "-l", "env=ci") == [code.strip()]
    assert listed("--label", "team=nobody") == []
    assert "is not KEY=VALUE" in cli("task", "list", "--label", "team", expect=2).err


def test_a_title_taken_from_markdown_drops_the_markup(cli: CliRunner) -> None:
    from orchestra_cli.engine.service import plain_title

    task_id = cli("task", "submit", "-q", "# Spec\n\nBuild it").out.strip()
    assert json.loads(cli("--json", "task", "get", task_id).out)["title"] == "Spec"
    assert plain_title("## **Fix** the `parser` ##") == "Fix the parser"
    assert plain_title("- [ ] see [the docs](http://x/y) > here") == "see the docs > here"
    assert plain_title("2 * 3 * 4 = 24") == "2 * 3 * 4 = 24"
    assert plain_title("###") == "###"


def test_a_running_task_shows_its_current_step_turn_tool_and_time() -> None:
    from orchestra_cli.models import Event

    tree = _tree()
    implement = tree[2]
    assert implement.status == Status.RUNNING
    at = tree[0].created_at + 10
    step = Event(
        seq=9,
        task_id=implement.id,
        root_id=tree[0].id,
        type="step",
        time=at - 3,
        data={"n": 4, "kind": "tool_start", "tool": "Bash", "input": "python3 test_app.py"},
    )
    screen = _screen(live_view(tree, {}, at=at, steps={implement.id: step}), 80)
    assert f"↳ {implement.id[-8:]}: Bash: python3 test_app.py · 3s" in screen
    turn = Event(
        seq=10,
        task_id=implement.id,
        root_id=tree[0].id,
        type="step",
        time=at,
        data={
            "kind": "model",
            "turn": 2,
            "max_turns": 40,
            "stop_reason": "tool_use",
            "tool_calls": [{"name": "Write"}, {"name": "Bash"}],
        },
    )
    assert turn.detail() == "turn 2/40 tool_use → Write, Bash"
