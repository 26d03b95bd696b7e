"""`orchestra task approve|reject|plan|pause|resume`: what a person answers (issue 17)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestra_cli.cli.commands.task import TaskId
from orchestra_cli.cli.context import AppContext

if TYPE_CHECKING:
    from orchestra_cli.models import Task

_COMMANDS: list[tuple[str, Callable[..., None]]] = []


def _command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def add(fn: Callable[..., None]) -> Callable[..., None]:
        _COMMANDS.append((name, fn))
        return fn

    return add


@_command("approve")
def approve(
    ctx: typer.Context,
    task_id: TaskId,
    step: Annotated[
        int | None, typer.Option(help="Only the call waiting at this step (see `inbox`).")
    ] = None,
    always: Annotated[
        bool, typer.Option("--always", help="Allow the tool for the rest of the tree.")
    ] = False,
) -> None:
    """Run the tool call(s) a blocked task waits on; the task goes on, on any agent."""
    _answered(ctx.obj, ctx.obj.service().answer(task_id, approve=True, step=step, always=always))


@_command("reject")
def reject(
    ctx: typer.Context,
    task_id: TaskId,
    reason: Annotated[str, typer.Option(help="Why; the model reads it as the call's result.")],
    step: Annotated[int | None, typer.Option(help="Only the call waiting at this step.")] = None,
) -> None:
    """Do not run the call(s) a blocked task waits on; the model is told why."""
    _answered(ctx.obj, ctx.obj.service().answer(task_id, approve=False, reason=reason, step=step))


def _answered(app: AppContext, task: Task) -> None:
    if app.json:
        from orchestra_cli.cli.render import task_json

        app.print_json(task_json(task))
    else:
        app.info(f"task {task.id} is {task.status} again; watch it: orchestra task watch {task.id}")


@_command("plan")
def plan(
    ctx: typer.Context,
    task_id: TaskId,
    set_file: Annotated[
        Path | None,
        typer.Option(
            "--set", help="Replace the plan under review with this JSON file.", dir_okay=False
        ),
    ] = None,
) -> None:
    """Show the plan a tree waits on review with (or replace it with --set FILE)."""
    import json

    app: AppContext = ctx.obj
    task, shown = app.service().plan(task_id, set_file)
    if app.json:
        app.print_json({"task_id": task.id, **shown})
        return
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    if shown.get("status") == "review":
        app.info(
            f"approve it: orchestra task approve {task.id}; or reject {task.id} --reason TEXT; "
            f"or edit it and: orchestra task plan {task.id} --set FILE"
        )


@_command("pause")
def pause(ctx: typer.Context, task_id: TaskId) -> None:
    """Stop the task's tree taking new steps (running turns finish first)."""
    app: AppContext = ctx.obj
    root = app.service().pause(task_id)
    if app.json:
        app.print_json({"root_id": root.id, "paused": True})
    else:
        app.info(f"task tree {root.id} is paused; go on with: orchestra task resume {root.id}")


@_command("resume")
def resume(ctx: typer.Context, task_id: TaskId) -> None:
    """Let a paused tree go on from where it stopped."""
    app: AppContext = ctx.obj
    moved = app.service().resume(task_id)
    if app.json:
        app.print_json({"resumed": [t.id for t in moved]})
    else:
        app.info(f"resumed; {len(moved)} parked task(s) are queued again")


def register_on(task_app: typer.Typer) -> None:
    """Add these commands to ``orchestra task``."""
    for name, fn in _COMMANDS:
        task_app.command(name)(fn)
